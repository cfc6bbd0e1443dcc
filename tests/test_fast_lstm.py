"""FastLSTM against nn.LSTM: same outputs and gradients (inputs, weights, initial state), compiled and PyTorch paths.

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

from lstmflow.models.fast_lstm import FastLSTM, PythonKernels

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
