"""Data-parallel training over ``torch.distributed``: who trains, where the processes meet, and what they share.

The launcher (:mod:`lstmflow.training.launch`) makes the :class:`Plan` in its own process, so that bad settings fail
before any worker starts; each worker then meets the others through :func:`join` and hands its :class:`World` to
:func:`lstmflow.training.fit.fit`. The training loop stays task-agnostic: every rank builds the same *global* batch from
the objective, keeps the rows ``rank::size`` of it (:meth:`World.shard`) and weights its mean loss by
``rows * size / global rows``, so that DDP's average of the ranks' gradients is the gradient of the global batch's
mean loss. One process and N processes with the same ``batch_size`` thus take the same steps up to float rounding
(dropout aside: each rank draws its own masks). For a stateful language model the rows are streams, so every rank
carries the state of whole streams.

Where things listen:

- one machine: the processes meet through a file in the run folder, and gloo's (or NCCL's) sockets are bound to the
  loopback interface, so nothing listens beyond 127.0.0.1 (``torchrun``'s store would listen on every interface);
- several machines (``train.nodes``): global rank 0 hosts a TCP store bound to the ``endpoint`` address only. Set
  ``GLOO_SOCKET_IFNAME`` (or ``NCCL_SOCKET_IFNAME``) when the machines' host names do not resolve to the interface
  they share.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from lstmflow.config import PipelineSpec
from lstmflow.errors import ConfigError, TrainingError
from lstmflow.models.lstm import FeatureBatchNorm, Network

#: One machine's workers meet through this file in the run folder (a fresh name per launch).
RENDEZVOUS_FILE = ".rendezvous-{token}"
#: Seconds one machine's workers wait for each other; the launcher stops them all as soon as one dies anyway.
LOCAL_JOIN_TIMEOUT = 300.0


class RendezvousError(TrainingError):
    """The training processes did not all meet within ``train.nodes.timeout``; a retry may find them."""


# ----------------------------------------------------------------------------------------- the plan, in the parent


@dataclass(frozen=True)
class Plan:
    """How many processes train, on what, and where they meet: decided before any of them starts."""

    workers: int  # processes on this machine
    nodes: int
    node_rank: int
    device: str  # "cpu" or "cuda"
    backend: str  # "gloo" or "nccl"
    rendezvous: str  # "file://<path>" on one machine, "tcp://host:port" across machines
    timeout: float  # seconds to wait for every process to join
    where: str  # the spec's YAML path, for messages

    @property
    def world_size(self) -> int:
        return self.workers * self.nodes

    def rank(self, local_rank: int) -> int:
        return self.node_rank * self.workers + local_rank


def plan(spec: PipelineSpec, rendezvous_file: Path) -> Plan:
    """Resolve ``train.workers`` (``auto``), the device and the backend; every bad combination in one ConfigError.

    ``rendezvous_file`` is where one machine's workers meet (it must not exist yet); unused across machines.
    """
    train, where = spec.train, f"pipelines.{spec.name}.train"
    problems = device_problems(spec)
    device = "cuda" if device_type(spec) == "cuda" and torch.cuda.is_available() else "cpu"
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    workers = train.workers if train.workers != "auto" else max(gpus, 1)
    if device == "cuda" and workers > gpus:
        problems.append(
            f"{where}.workers: {workers} workers on cuda need {workers} GPUs, but this machine has {gpus}; "
            f"use workers: auto or at most {gpus}"
        )
    world_size = workers * (train.nodes.count if train.nodes else 1)
    if train.batch_size != "auto" and train.batch_size < world_size:  # auto is never below the world size
        problems.append(
            f"{where}.batch_size: the global batch of {train.batch_size} is shared by {world_size} workers; "
            f"give at least {world_size} so that each has rows of its own"
        )
    backend = train.backend if train.backend != "auto" else ("nccl" if device == "cuda" else "gloo")
    if backend == "nccl" and (device != "cuda" or not dist.is_nccl_available()):
        problems.append(
            f"{where}.backend: nccl needs CUDA devices and a PyTorch built with NCCL, but training runs on {device} "
            f"(torch {torch.__version__}); use backend: gloo or auto"
        )
    if problems:
        raise ConfigError(problems)
    nodes = train.nodes
    if nodes is None:
        return Plan(workers, 1, 0, device, backend, f"file://{rendezvous_file}", LOCAL_JOIN_TIMEOUT, where)
    return Plan(workers, nodes.count, nodes.rank, device, backend, f"tcp://{nodes.endpoint}", nodes.timeout, where)


def device_type(spec: PipelineSpec) -> str:
    """``cpu`` or ``cuda``: ``train.device`` with ``auto`` resolved on this machine."""
    wanted = spec.train.device
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def device_problems(spec: PipelineSpec) -> list[str]:
    """What in ``train.device`` and ``train.precision`` this machine cannot do."""
    where = f"pipelines.{spec.name}.train"
    if spec.train.device == "cuda" and not torch.cuda.is_available():
        return [
            f"{where}.device: cuda requested but no CUDA device is usable (torch {torch.__version__}); use auto or cpu"
        ]
    if spec.train.precision == "fp16" and device_type(spec) == "cpu":
        return [f"{where}.precision: fp16 needs CUDA (PyTorch's CPU LSTM has no fp16 kernels); use bf16 or fp32 on cpu"]
    if spec.train.precision == "bf16" and device_type(spec) == "cpu" and not cpu_runs_bf16_lstm():
        why = "PyTorch's oneDNN LSTM needs AVX-512 for bf16"
        return [f"{where}.precision: bf16 is not supported by this CPU ({why}); use fp32 on this machine"]
    return []


@functools.cache
def cpu_runs_bf16_lstm() -> bool:
    """Whether PyTorch's CPU LSTM runs under bf16 autocast here: oneDNN has the kernel only on CPUs with AVX-512."""
    probe = torch.nn.LSTM(1, 1, batch_first=True)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            probe(torch.zeros(1, 1, 1))
    except RuntimeError:
        return False
    return True


def socket_environment(spec: PipelineSpec, environ: dict[str, str]) -> dict[str, str]:
    """Bind gloo's and NCCL's sockets to loopback when every process runs on this machine (unless the user chose)."""
    nodes = spec.train.nodes
    if nodes is not None and not _is_loopback(_host(nodes.endpoint)):
        return {}
    interface = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), "lo")
    return {name: interface for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME") if name not in environ}


def _host(endpoint: str) -> str:
    return endpoint.rpartition(":")[0].strip("[]")  # "[::1]:29500" -> "::1"


def _is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


# ------------------------------------------------------------------------------------------- the group, in a worker


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; with ``size`` 1 every collective returns its input."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs metrics and writes checkpoints."""
        return self.rank == 0

    def sum(self, values: Tensor) -> Tensor:
        """``values`` summed over every rank (a copy; ``values`` must be on :attr:`device`)."""
        total = values.clone()
        if self.size > 1:
            dist.all_reduce(total)
        return total

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object), on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (all-gather: NCCL has no gather of objects)."""
        if self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def shard(self, inputs: tuple[Tensor, ...], target: Tensor) -> Shard:
        """This rank's rows ``rank::size`` of a global batch, and the weight of their mean loss.

        A rank left without rows (a last batch smaller than the world) trains on row 0 with weight 0: it must still
        take part in the gradient all-reduce. Its batch norms then leave that row out of the batch statistics.
        """
        if self.size == 1:
            return Shard(inputs, target, len(target), 1.0)
        total = len(target)
        own = len(range(self.rank, total, self.size))
        rows = slice(self.rank, None, self.size) if own else slice(0, 1)
        inputs = tuple(tensor[rows].contiguous() for tensor in inputs)
        return Shard(inputs, target[rows].contiguous(), own, own * self.size / total)

    def parallel(self, net: Network) -> Network | DataParallelNet:
        """What the objective's loss should call: ``net`` itself, or with several ranks ``net`` under DDP.

        Replaces the batch norms by ones with global statistics first, so build the optimizer after this.
        """
        if self.size == 1:
            return net
        for name, module in list(net.named_modules()):
            if isinstance(module, FeatureBatchNorm):
                _replace(net, name, GlobalFeatureBatchNorm.like(module, self.device))
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(_MethodCall(net), device_ids=device_ids)
        return DataParallelNet(ddp, net)


@dataclass(frozen=True)
class Shard:
    """One rank's part of a global batch."""

    inputs: tuple[Tensor, ...]
    target: Tensor
    rows: int  # this rank's own rows; 0 when it borrowed row 0
    weight: float  # the factor on the shard's mean loss


@contextmanager
def join(spec: PipelineSpec, plan: Plan, local_rank: int) -> Iterator[World]:
    """Meet the other processes (rendezvous), yield this one's :class:`World`, and leave the group at the end."""
    rank = plan.rank(local_rank)
    device = torch.device("cuda", local_rank) if plan.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        store = _store(plan, rank)
        dist.init_process_group(plan.backend, store=store, rank=rank, world_size=plan.world_size)
    except RuntimeError as exc:  # torch's DistError and gloo's own errors while connecting
        raise RendezvousError(
            f"{plan.where}: the {plan.world_size} training processes did not all meet at {plan.rendezvous} within "
            f"{plan.timeout:g} s (this is rank {rank}; machine 0 must be running and reachable): "
            f"{_first_line(exc)}"
        ) from exc
    try:
        world = World(device, rank, local_rank, plan.world_size)
        if plan.nodes > 1:
            _check_same_spec(spec, world, plan.where)
        yield world
    finally:
        dist.destroy_process_group()


def _store(plan: Plan, rank: int) -> dist.Store:
    timeout = timedelta(seconds=plan.timeout)
    scheme, _, address = plan.rendezvous.partition("://")
    if scheme == "file":
        store = dist.FileStore(address, plan.world_size)
        store.set_timeout(timeout)
        return store
    host, port = _host(address), int(address.rpartition(":")[2])
    if rank != 0:
        return dist.TCPStore(host, port, plan.world_size, is_master=False, timeout=timeout)
    # Listen on the endpoint's address only: TCPStore on its own binds every interface.
    family, kind, proto, _, bind_to = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(bind_to)
    except OSError as exc:
        listener.close()
        raise ConfigError(
            f"{plan.where}.nodes.endpoint: machine 0 hosts the rendezvous but cannot listen on {address} "
            f"({exc.strerror}); give an address of machine 0 and a free port"
        ) from exc
    listener.listen()
    return dist.TCPStore(
        host, port, plan.world_size, is_master=True, timeout=timeout, master_listen_fd=listener.detach()
    )


def _check_same_spec(spec: PipelineSpec, world: World, where: str) -> None:
    """Machines that train one model must run one spec, apart from their own ``nodes.rank`` and where their copy of
    the data lives (each checkout may sit in another folder; the data's name and every other key must agree)."""
    nodes = spec.train.nodes
    machine_zero = None if nodes is None else nodes.model_copy(update={"rank": 0})
    train = spec.train.model_copy(update={"nodes": machine_zero})
    data = spec.data.model_copy(update={"path": Path(spec.data.path.name)})
    common = spec.model_copy(update={"train": train, "data": data}).spec_hash()
    hashes = world.gather(common)
    if len(set(hashes)) > 1:
        raise ConfigError(
            f"{where}.nodes: the machines run different specs (spec hash by rank: {hashes}); give every machine "
            "the same pipelines.yaml and overrides, apart from train.nodes.rank"
        )


def _first_line(exc: BaseException) -> str:
    return next(iter(str(exc).strip().splitlines()), type(exc).__name__)


# ---------------------------------------------------------------------------------------------------- DDP plumbing


class _MethodCall(nn.Module):
    """Runs any method of the network as this module's forward.

    DDP syncs the gradients of what went through its forward only; the objective calls ``model(x)`` or
    ``model.logits(x, lengths)``, so both must enter there.
    """

    def __init__(self, net: Network) -> None:
        super().__init__()
        self.net = net

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.net, method)(*args, **kwargs)


class DataParallelNet:
    """The network as the objective's ``loss`` sees it under DDP: calls and methods run through DDP's forward,
    other attributes read from the network. One call per batch, as DDP expects one forward per backward."""

    def __init__(self, ddp: DistributedDataParallel, net: Network) -> None:
        self._ddp, self._net = ddp, net
        self.net = net  # for what must not run through DDP's forward (a second forward per backward breaks DDP)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ddp("forward", *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._net, name)
        return functools.partial(self._ddp, name) if inspect.ismethod(attribute) else attribute


class _GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch, over every rank.

    PyTorch's SyncBatchNorm does this on GPUs only; here it is two all-reduces that gradients flow through (the
    sums, then the squared deviations), over gloo and NCCL alike. Evaluation uses the running statistics.
    """

    contributes: bool = True  # False while this rank trains on a borrowed row that is not its own

    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return super().forward(input)
        x = input.float()  # statistics in fp32, also under autocast
        dims = [0, 2] if x.dim() == 3 else [0]
        shape = [1, -1] + [1] * (x.dim() - 2)  # (C,) → (1, C) or (1, C, 1)
        weight = 1.0 if self.contributes else 0.0
        count = x.new_tensor([x.numel() / x.shape[1]])
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), count]) * weight)
        mean, count = sums[:-1] / sums[-1], sums[-1]
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims) * weight) / count  # biased, as for normalising
        tracked, running_mean, running_var = self.num_batches_tracked, self.running_mean, self.running_var
        if tracked is not None and running_mean is not None and running_var is not None:  # track_running_stats
            with torch.no_grad():
                tracked.add_(1)
                factor = 1.0 / tracked.item() if self.momentum is None else self.momentum
                running_mean.lerp_(mean, factor)
                running_var.lerp_(var * count / (count - 1), factor)  # unbiased, as BatchNorm1d keeps it
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


class _AllReduceSum(torch.autograd.Function):
    """A sum over ranks that gradients flow through: the gradient of each rank's input is the sum of every rank's
    gradient of the output (each rank's loss depends on every rank's input through the global statistics)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class GlobalFeatureBatchNorm(FeatureBatchNorm, _GlobalBatchNorm1d):
    """The network's :class:`FeatureBatchNorm` (feature axis last, padding masked out) with global statistics:
    its ``super().forward`` resolves to :class:`_GlobalBatchNorm1d`'s."""

    @classmethod
    def like(cls, norm: FeatureBatchNorm, device: torch.device) -> GlobalFeatureBatchNorm:
        twin = cls(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats, device=device)
        twin.load_state_dict(norm.state_dict())
        return twin


@contextmanager
def excluded_from_batch_statistics(net: nn.Module) -> Iterator[None]:
    """Leave this rank's rows out of the global batch statistics (its borrowed row is not part of the batch)."""
    norms = [module for module in net.modules() if isinstance(module, _GlobalBatchNorm1d)]
    for norm in norms:
        norm.contributes = False
    try:
        yield
    finally:
        for norm in norms:
            norm.contributes = True


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name), child, module)
