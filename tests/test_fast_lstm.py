"""FastLSTM against nn.LSTM: same outputs and gradients (inputs, weights, initial state), compiled and PyTorch paths;
then whole networks built with ``lstm_kernel="lstmflow"`` against the same weights in ``nn.LSTM`` (stacked,
bidirectional, padded variable lengths, carried state).

The compiled path builds ``lstmflow/models/csrc/lstm_cpu.cpp`` on first use (about 30-40 s once per machine and
torch version, then loaded from the cache); it is skipped only where no C++ compiler exists.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from lstmflow.config import ModelSpec
from lstmflow.models.fast_lstm import FastLSTM, PythonKernels
from lstmflow.models.lstm import LSTMBlock, LSTMNet, LSTMState, build_model

torch.set_num_threads(1)

HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None
PATHS = [
    pytest.param(True, id="compiled", marks=pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")),
    pytest.param(False, id="pytorch-loop"),
]


def run(layer: nn.Module, x: Tensor, state: tuple[Tensor, Tensor] | None) -> list[Tensor]:
    """Outputs, final state and every gradient of a loss that uses all three outputs (each with its own weight)."""
    inputs = [x, *(state or ())]
    for tensor in inputs:
        tensor.grad = None
    layer.zero_grad(set_to_none=True)
    outputs, (h_n, c_n) = layer(x, state)
    weights = torch.linspace(-1, 1, outputs.shape[-1], dtype=x.dtype)  # (H,): no symmetry hides a swapped gate
    loss = (outputs.square() * weights).sum() + (h_n * weights).sum() - 0.5 * (c_n * weights).sum()
    loss.backward()
    parameter_grads = [param.grad for _, param in sorted(layer.named_parameters())]
    return [outputs, h_n, c_n, *(tensor.grad for tensor in inputs), *parameter_grads]


def pair(features: int, hidden: int, dtype: torch.dtype, compiled: bool) -> tuple[nn.LSTM, FastLSTM]:
    """An nn.LSTM and a FastLSTM holding the same weights (loaded through the state dict)."""
    torch.manual_seed(0)
    reference = nn.LSTM(features, hidden, batch_first=True).to(dtype)
    fast = FastLSTM(features, hidden, compiled=compiled).to(dtype)
    fast.load_state_dict(reference.state_dict())
    return reference, fast


def inputs(
    batch: int, steps: int, features: int, hidden: int, dtype: torch.dtype, carried: bool
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """x (B, T, I), and a random initial (h0, c0) when ``carried`` (a stateful layer's or a resumed stream's)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, steps, features, dtype=dtype, generator=generator).requires_grad_()  # (B, T, I)
    if not carried:
        return x, None
    h0 = torch.randn(1, batch, hidden, dtype=dtype, generator=generator).requires_grad_()  # (1, B, H)
    c0 = torch.randn(1, batch, hidden, dtype=dtype, generator=generator).requires_grad_()
    return x, (h0, c0)


SHAPES = [(1, 1), (5, 7), (16, 3)]  # (batch, steps): one sample, one step, and a batch that threads could split


@pytest.mark.parametrize("compiled", PATHS)
@pytest.mark.parametrize(("batch", "steps"), SHAPES)
@pytest.mark.parametrize("carried", [False, True], ids=["zero-state", "carried-state"])
def test_float64_matches_nn_lstm_within_1e9_of_largest_magnitude(compiled: bool, batch: int, steps: int, carried: bool):
    features, hidden = 3, 20  # 20 units: the vectorised loops' remainders run too
    reference, fast = pair(features, hidden, torch.float64, compiled)
    x, state = inputs(batch, steps, features, hidden, torch.float64, carried)
    expected, got = run(reference, x, state), run(fast, x, state)
    assert len(got) == (10 if carried else 8)
    for want, have in zip(expected, got, strict=True):
        assert have.shape == want.shape
        assert (have - want).abs().max() <= 1e-9 * want.abs().max()


@pytest.mark.parametrize("compiled", PATHS)
@pytest.mark.parametrize(("batch", "steps", "hidden"), [(1, 1, 20), (5, 7, 20), (32, 30, 64)])
@pytest.mark.parametrize("carried", [False, True], ids=["zero-state", "carried-state"])
def test_float32_matches_nn_lstm_within_1e5_relative_norm(
    compiled: bool, batch: int, steps: int, hidden: int, carried: bool
):
    features = 4
    reference, fast = pair(features, hidden, torch.float32, compiled)
    x, state = inputs(batch, steps, features, hidden, torch.float32, carried)
    for want, have in zip(run(reference, x, state), run(fast, x, state), strict=True):
        assert (have - want).norm() <= 1e-5 * want.norm()


@pytest.mark.parametrize("compiled", PATHS)
def test_same_inputs_give_the_same_bits(compiled: bool):
    _, fast = pair(4, 24, torch.float32, compiled)
    x, state = inputs(8, 10, 4, 24, torch.float32, carried=True)
    first, second = run(fast, x, state), run(fast, x, state)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_forcing_the_fallback_uses_the_pytorch_loop():
    assert FastLSTM(2, 3, compiled=False).kernels(torch.device("cpu")) is PythonKernels
    if HAS_COMPILER:
        assert FastLSTM(2, 3, compiled=True).kernels(torch.device("cpu")) is not PythonKernels


def test_state_dict_is_nn_lstms_and_loads_into_it():
    fast = FastLSTM(3, 5)
    reference = nn.LSTM(3, 5, batch_first=True)
    assert list(fast.state_dict()) == list(reference.state_dict())
    assert [t.shape for t in fast.state_dict().values()] == [t.shape for t in reference.state_dict().values()]
    reference.load_state_dict(fast.state_dict())  # and the other way, in pair()


def test_packed_input_is_refused_with_the_way_out():
    x = torch.randn(2, 4, 3)  # (B, T, I)
    packed = pack_padded_sequence(x, torch.tensor([4, 2]), batch_first=True)
    with pytest.raises(TypeError, match="nn.LSTM"):
        FastLSTM(3, 5)(packed)


@pytest.mark.parametrize("compiled", PATHS)
def test_right_padded_batch_gives_packed_nn_lstms_final_state_at_each_length(compiled: bool):
    """Variable lengths without packing: one direction never looks past a sample's last valid step, so the output
    at step lengths[b] - 1 is what packed nn.LSTM returns as h_n (the padding only costs the steps' compute)."""
    reference, fast = pair(3, 8, torch.float64, compiled)
    x, _ = inputs(4, 6, 3, 8, torch.float64, carried=False)
    lengths = torch.tensor([6, 1, 4, 2])
    _, (h_n, _) = reference(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    outputs, _ = fast(x)  # (B, T, H)
    at_length = outputs[torch.arange(4), lengths - 1]  # (B, H)
    assert (at_length - h_n[0]).abs().max() <= 1e-9 * h_n.abs().max()


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
def test_batch_split_across_two_threads_matches_nn_lstm():
    """With 2 threads the compiled loop runs each half of the batch on its own thread (5 rows: 3 + 2)."""
    reference, fast = pair(3, 20, torch.float64, compiled=True)
    x, state = inputs(5, 6, 3, 20, torch.float64, carried=True)
    expected = run(reference, x, state)
    torch.set_num_threads(2)
    try:
        got = run(fast, x, state)
    finally:
        torch.set_num_threads(1)
    for want, have in zip(expected, got, strict=True):
        assert (have - want).abs().max() <= 1e-9 * want.abs().max()


# ------------------------------------------------------------- in the model: train.lstm_kernel lstmflow vs torch

#: Networks whose lstm layers run in lstmflow's kernel when built with lstm_kernel="lstmflow" (3 features in).
NETWORKS = {
    "stacked": [
        {"lstm": {"units": 6, "return_sequences": True}}, {"lstm": {"units": 5}}, {"dense": {"units": 3}},
    ],
    "bidirectional": [
        {"lstm": {"units": 6, "return_sequences": True, "bidirectional": True}},
        {"lstm": {"units": 4, "bidirectional": True}}, {"dense": {"units": 3}},
    ],
    "sequence-out": [  # one output per step: the padded steps' outputs are read too
        {"lstm": {"units": 6, "return_sequences": True}},
        {"lstm": {"units": 5, "return_sequences": True, "bidirectional": True}}, {"dense": {"units": 2}},
    ],
}  # fmt: skip
NET_SHAPES = [(1, 1), (5, 7), (16, 12)]  # (batch, steps)


def networks(layers: list[dict], dtype: torch.dtype, compiled: bool) -> tuple[LSTMNet, LSTMNet]:
    """The same network (same weights) built with lstm_kernel "torch" and "lstmflow"."""
    torch.manual_seed(0)
    model_spec = ModelSpec.model_validate({"layers": layers})
    reference = build_model(model_spec, 3, None, lstm_kernel="torch").to(dtype)
    fast = build_model(model_spec, 3, None, lstm_kernel="lstmflow").to(dtype)
    fast.load_state_dict(reference.state_dict())
    for block in fast.layers:
        if isinstance(block, LSTMBlock):
            block.compiled = compiled
    return reference, fast


def net_run(model: LSTMNet, x: Tensor, lengths: Tensor | None, state: LSTMState | None) -> list[Tensor]:
    """The output (and with ``state`` every lstm's final (h, c)), and the gradients of a loss reading all of them
    with respect to x, the initial state and every parameter."""
    leaves = [x, *(tensor for pair_ in (state or {}).values() for tensor in pair_)]
    for tensor in leaves:
        tensor.grad = None
    model.zero_grad(set_to_none=True)
    if state is None:
        out, finals = model(x, lengths), []
    else:
        out, final = model.logits_carrying(x, state)
        finals = [tensor for pair_ in final.values() for tensor in pair_]
    results = [out, *finals]
    loss = sum((tensor * torch.linspace(-1, 1, tensor.shape[-1], dtype=x.dtype)).square().sum() for tensor in results)
    loss.backward()
    return [*results, *(tensor.grad for tensor in leaves), *(p.grad for _, p in sorted(model.named_parameters()))]


def net_inputs(batch: int, steps: int, padded: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """x (B, T, 3), and with ``padded`` lengths in 1..T (the longest shorter than T where T > 2, so the kernel
    runs only up to the longest sample and pads the rest back)."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(batch, steps, 3, dtype=dtype, generator=generator).requires_grad_()  # (B, T, 3)
    if not padded:
        return x, None
    longest = steps - 1 if steps > 2 else steps
    return x, torch.randint(1, longest + 1, (batch,), generator=generator)


def assert_float64_close(expected: list[Tensor], got: list[Tensor]) -> None:
    """Every tensor within 1e-9 × the reference tensor's largest magnitude."""
    assert len(got) == len(expected)
    for index, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert have.shape == want.shape, index
        assert (have - want).abs().max() <= 1e-9 * want.abs().max(), index


def assert_float32_close(expected: list[Tensor], got: list[Tensor]) -> None:
    """Every tensor's relative norm error at most 1e-5."""
    assert len(got) == len(expected)
    for index, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert (have - want).norm() <= 1e-5 * want.norm(), index


@pytest.mark.parametrize("compiled", PATHS)
@pytest.mark.parametrize("layers", NETWORKS.values(), ids=NETWORKS.keys())
@pytest.mark.parametrize(("batch", "steps"), NET_SHAPES)
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_network_float64_matches_nn_lstm_within_1e9(compiled: bool, layers: list[dict], batch: int, steps: int,
                                                    padded: bool):  # fmt: skip
    reference, fast = networks(layers, torch.float64, compiled)
    x, lengths = net_inputs(batch, steps, padded, torch.float64)
    expected, got = net_run(reference, x, lengths, None), net_run(fast, x, lengths, None)
    assert_float64_close(expected, got)
    assert reference.lstm_kernels_trained() == ["torch"]
    assert fast.lstm_kernels_trained() == ["lstmflow" if compiled else "lstmflow-loop"]


@pytest.mark.parametrize("compiled", PATHS)
@pytest.mark.parametrize("layers", NETWORKS.values(), ids=NETWORKS.keys())
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_network_float32_matches_nn_lstm_within_1e5_relative_norm(compiled: bool, layers: list[dict], padded: bool):
    reference, fast = networks(layers, torch.float32, compiled)
    x, lengths = net_inputs(16, 12, padded, torch.float32)
    assert_float32_close(net_run(reference, x, lengths, None), net_run(fast, x, lengths, None))


@pytest.mark.parametrize("compiled", PATHS)
@pytest.mark.parametrize("layers", [NETWORKS["stacked"], NETWORKS["sequence-out"]], ids=["stacked", "sequence-out"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_network_carrying_state_matches_nn_lstm(compiled: bool, layers: list[dict], dtype: torch.dtype):
    """A stateful model's pass: every lstm starts from a given (h, c), the final ones are outputs too."""
    reference, fast = networks(layers, dtype, compiled)
    x, _ = net_inputs(5, 7, False, dtype)
    generator = torch.Generator().manual_seed(3)
    state: LSTMState = {}
    for index, block in enumerate(reference.layers):
        if isinstance(block, LSTMBlock):
            shape = (2 if block.lstm.bidirectional else 1, 5, block.lstm.hidden_size)  # (D, B, H)
            state[index] = tuple(torch.randn(shape, dtype=dtype, generator=generator).requires_grad_() for _ in "hc")
    expected, got = net_run(reference, x, None, state), net_run(fast, x, None, state)
    (assert_float64_close if dtype == torch.float64 else assert_float32_close)(expected, got)


@pytest.mark.parametrize("compiled", PATHS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-direction", "bidirectional"])
def test_a_layer_alone_gives_packed_nn_lstms_zeros_at_padded_steps(compiled: bool, bidirectional: bool):
    """An lstm layer outside LSTMNet (which masks between layers): its own sequence output is zero past each
    sample's length, as pad_packed_sequence leaves it, and T stays the input's even past the longest sample."""
    torch.manual_seed(0)
    reference = LSTMBlock(3, 5, return_sequences=True, bidirectional=bidirectional, dropout=0.0, kernel="torch")
    fast = LSTMBlock(3, 5, return_sequences=True, bidirectional=bidirectional, dropout=0.0, kernel="lstmflow")
    fast.load_state_dict(reference.state_dict())
    fast.compiled = compiled
    reference, fast = reference.double(), fast.double()
    x, _ = net_inputs(4, 7, False, torch.float64)
    lengths = torch.tensor([6, 1, 4, 2])
    expected, got = [], []
    for layer, results in ((reference, expected), (fast, got)):
        x.grad = None
        out = layer(x, lengths)  # (B, T, D·H)
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=x.dtype)).square().sum().backward()
        results += [out, x.grad, *(p.grad for _, p in sorted(layer.named_parameters()))]
    assert got[0].shape == (4, 7, 10 if bidirectional else 5) and (got[0][1, 1:] == 0).all()
    assert_float64_close(expected, got)


def test_every_kernel_has_nn_lstms_state_dict_keys():
    model_spec = ModelSpec.model_validate({"layers": NETWORKS["bidirectional"]})
    models = {kernel: build_model(model_spec, 3, None, lstm_kernel=kernel) for kernel in ("auto", "lstmflow", "torch")}
    keys = [list(model.state_dict()) for model in models.values()]
    assert keys[0] == keys[1] == keys[2]
    assert "layers.0.lstm.weight_hh_l0_reverse" in keys[0]
    models["lstmflow"].load_state_dict(models["torch"].state_dict())  # checkpoints load across kernels
    models["torch"].load_state_dict(models["auto"].state_dict())


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
def test_auto_trains_padded_batches_in_the_compiled_kernel_and_leaves_the_rest_to_nn_lstm():
    model_spec = ModelSpec.model_validate({"layers": NETWORKS["bidirectional"]})
    model = build_model(model_spec, 3, None)  # lstm_kernel auto
    block = model.layers[0]
    x = torch.randn(4, 10, 3)  # (B, T, 3)
    lengths = torch.tensor([10, 9, 10, 8])  # 7.5% padding
    model(x).sum().backward()
    assert model.lstm_kernels_trained() == ["torch"]  # full length: nn.LSTM
    model(x, lengths).sum().backward()
    assert model.lstm_kernels_trained() == ["lstmflow", "torch"]
    assert block.recurrence(x, lengths) is not None and block.recurrence(x.double(), lengths) is None  # float32 weights
    with torch.no_grad():
        assert block.recurrence(x, lengths) is None  # inference: nn.LSTM
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block.recurrence(x, lengths) is None
    mostly_padding = torch.tensor([10, 1, 1, 1])  # 67.5% of the steps
    assert block.recurrence(x, mostly_padding) is None
    block.kernel = "lstmflow"  # chosen explicitly, it runs whatever the batch
    assert block.recurrence(x) is not None and block.recurrence(x, mostly_padding) is not None
    block.kernel = "torch"
    assert block.recurrence(x, lengths) is None


@pytest.mark.parametrize("compiled", PATHS)
def test_network_in_deterministic_mode_repeats_bit_for_bit(compiled: bool):
    """train.deterministic turns on torch.use_deterministic_algorithms: nothing in the kernel's path refuses it,
    and a repeated training pass gives the same bits (what a bit-identical resume rests on)."""
    _, fast = networks(NETWORKS["sequence-out"], torch.float32, compiled)
    x, lengths = net_inputs(16, 12, True, torch.float32)
    torch.use_deterministic_algorithms(True)
    try:
        first, second = net_run(fast, x, lengths, None), net_run(fast, x, lengths, None)
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_every_kernel_setting_runs_nn_lstm():
    reference, fast = networks(NETWORKS["bidirectional"], torch.float32, compiled=True)
    x, lengths = net_inputs(16, 12, True, torch.float32)
    expected = reference(x, lengths)
    fast = fast.cuda()
    got = fast(x.cuda(), lengths)
    assert fast.lstm_kernels_trained() == ["torch"]
    assert (got.cpu() - expected).norm() <= 1e-5 * expected.norm()
