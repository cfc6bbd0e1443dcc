"""A single-layer, unidirectional, batch-first LSTM for training on CPUs: a drop-in for ``nn.LSTM(I, H,
batch_first=True)`` with the same parameters, state-dict keys and results (up to float rounding).

Where the time goes in ``nn.LSTM`` training on a CPU, and what this layer does instead:

- the input projection ``x·W_ihᵀ + b`` of every step is one (B·T, I) × (I, 4H) matrix multiply, not T small ones;
- the recurrence (one (B, H) × (H, 4H) multiply and the gate arithmetic per step) runs in a compiled loop
  (``csrc/lstm_cpu.cpp``, built on first use with the machine's C++ compiler by :mod:`~lstmflow.models.kernel_build`;
  the gate arithmetic fused into one vectorised loop, float32's tanh a rational approximation within a few ulp)
  with the batch split across threads, each running the whole sequence on its rows: threads meet once per sequence
  instead of once per operation, which is what collapses on a busy machine;
- the backward recurrence keeps only the gradient of the gates; the weight gradients are then two matrix
  multiplies over all steps (``dW_ih = dGᵀ·x``, ``dW_hh = dGᵀ·h_prev``) instead of one accumulation per step.

Without a compiler (or when the build fails, with a warning) the same algorithm runs as a Python loop over
PyTorch operations, on any device. Packed sequences are not read (a :class:`~torch.nn.utils.rnn.PackedSequence`
raises ``TypeError``): with right-padded batches, the output at step ``lengths[b] - 1`` is packed ``nn.LSTM``'s
final h of sample b, since one direction never looks ahead. :class:`lstmflow.models.lstm_block.LSTMBlock` runs
:class:`LSTMFunction` on its ``nn.LSTM``'s own parameters that way, both directions and padded batches included.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from lstmflow.models.kernel_build import SOURCE, compiled_kernels


def recurrence_kernels(device: torch.device, compiled: bool | None = None) -> Any:
    """The recurrence implementation for tensors on ``device``: ``compiled`` None takes the compiled one when it
    builds, else the PyTorch loop; False always the PyTorch loop; True requires the compiled one (RuntimeError if
    it does not build). Tensors off the CPU always take the PyTorch loop."""
    if compiled is False or device.type != "cpu":
        return PythonKernels
    kernels = compiled_kernels()
    if kernels is None and compiled:
        raise RuntimeError(f"FastLSTM(compiled=True): {SOURCE} could not be built (see the warning above)")
    return kernels or PythonKernels


class PythonKernels:
    """The recurrence of ``csrc/lstm_cpu.cpp`` as PyTorch operations over the whole batch (same signatures): the
    fallback without a compiler, and the path for tensors that are not on the CPU."""

    @staticmethod
    def forward(
        gates: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, outputs: Tensor, cells: Tensor, tanh_cells: Tensor
    ) -> None:
        """gates (T, B, 4H): pre-activations in, activations i, f, g, o out; fills outputs, cells, tanh_cells."""
        hidden = h0.shape[1]
        h, c = h0, c0  # (B, H)
        for t in range(gates.shape[0]):
            step = gates[t]  # (B, 4H)
            step.addmm_(h, w_hh.t())
            step[:, : 2 * hidden].sigmoid_()  # i, f
            step[:, 2 * hidden : 3 * hidden].tanh_()  # g
            step[:, 3 * hidden :].sigmoid_()  # o
            i, f, g, o = step.chunk(4, dim=1)  # each (B, H)
            c = torch.addcmul(f * c, i, g, out=cells[t])
            torch.tanh(c, out=tanh_cells[t])
            h = torch.mul(o, tanh_cells[t], out=outputs[t])

    @staticmethod
    def backward(
        gates: Tensor, w_hh: Tensor, c0: Tensor, cells: Tensor, tanh_cells: Tensor, grad_outputs: Tensor,
        grad_h_n: Tensor, grad_c_n: Tensor, grad_gates: Tensor,
    ) -> list[Tensor]:  # fmt: skip
        """Fills grad_gates (T, B, 4H) with dL/d(pre-activations); returns [dL/dh0, dL/dc0], each (B, H)."""
        grad_h, grad_c = grad_h_n.clone(), grad_c_n.clone()  # (B, H)
        for t in reversed(range(gates.shape[0])):
            grad_h = grad_h + grad_outputs[t]
            c_prev = cells[t - 1] if t > 0 else c0
            i, f, g, o = gates[t].chunk(4, dim=1)  # each (B, H)
            tanh_c = tanh_cells[t]
            grad_c = grad_c + grad_h * o * (1 - tanh_c * tanh_c)
            d_i, d_f, d_g, d_o = grad_gates[t].chunk(4, dim=1)  # views to fill, each (B, H)
            torch.mul(grad_h * tanh_c, o * (1 - o), out=d_o)
            torch.mul(grad_c * g, i * (1 - i), out=d_i)
            torch.mul(grad_c * c_prev, f * (1 - f), out=d_f)
            torch.mul(grad_c * i, 1 - g * g, out=d_g)
            grad_c = grad_c * f
            grad_h = grad_gates[t] @ w_hh  # (B, 4H) × (4H, H)
        return [grad_h, grad_c]


class LSTMFunction(torch.autograd.Function):
    """One LSTM layer's forward and backward over a whole sequence (the weight gradients as whole-sequence
    matrix multiplies). Inputs: x (B, T, I), h0 and c0 (B, H), the four ``nn.LSTM`` parameters, the kernels.

    Inside, everything is time-major, (T, B, ·), so that each step's rows are one contiguous block of memory.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
        kernels: Any,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        batch, steps, features = x.shape
        hidden = w_hh.shape[1]
        x_steps = x.transpose(0, 1).reshape(steps * batch, features)  # (B, T, I) → (T, B, I) → (T·B, I), a copy
        gates = torch.addmm(b_ih + b_hh, x_steps, w_ih.t()).view(steps, batch, 4 * hidden)  # (T·B, 4H) → (T, B, 4H)
        outputs = x.new_empty(steps, batch, hidden)  # (T, B, H)
        cells = torch.empty_like(outputs)
        tanh_cells = torch.empty_like(outputs)
        h0, c0 = h0.contiguous(), c0.contiguous()
        kernels.forward(gates, w_hh.contiguous(), h0, c0, outputs, cells, tanh_cells)
        ctx.save_for_backward(x_steps, h0, c0, w_ih, w_hh, gates, outputs, cells, tanh_cells)
        ctx.kernels = kernels
        # batch-first and contiguous, as nn.LSTM returns them: (T, B, H) → (B, T, H); h_n and c_n (B, H)
        return outputs.transpose(0, 1).contiguous(), outputs[-1].clone(), cells[-1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_outputs: Tensor, grad_h_n: Tensor, grad_c_n: Tensor) -> tuple[Tensor | None, ...]:
        x_steps, h0, c0, w_ih, w_hh, gates, outputs, cells, tanh_cells = ctx.saved_tensors
        steps, batch, hidden = outputs.shape
        grad_gates = torch.empty_like(gates)  # (T, B, 4H)
        grad_h0, grad_c0 = ctx.kernels.backward(
            gates, w_hh.contiguous(), c0, cells, tanh_cells, grad_outputs.transpose(0, 1).contiguous(),
            grad_h_n.contiguous(), grad_c_n.contiguous(), grad_gates,
        )  # fmt: skip  # grad_outputs (B, T, H) → (T, B, H)
        grad_flat = grad_gates.view(steps * batch, 4 * hidden)  # (T, B, 4H) → (T·B, 4H)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_flat @ w_ih).view(steps, batch, -1).transpose(0, 1)  # (T·B, I) → (T, B, I) → (B, T, I)
        grad_w_ih = grad_flat.t() @ x_steps  # (4H, T·B) × (T·B, I)
        # Σ_t dG_tᵀ·h_{t-1}: step 0 reads h0, steps 1.. read outputs[:-1], a contiguous ((T-1)·B, H) view (no copy)
        grad_w_hh = torch.addmm(grad_gates[0].t() @ h0, grad_flat[batch:].t(), outputs[:-1].view(-1, hidden))
        grad_bias = grad_flat.sum(0)  # (4H,)
        return grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, grad_bias.clone(), None


class FastLSTM(nn.Module):
    """``nn.LSTM(input_size, hidden_size, batch_first=True)`` (one layer, one direction) that trains faster on
    CPUs; parameters ``weight_ih_l0`` (4H, I), ``weight_hh_l0`` (4H, H), ``bias_ih_l0``, ``bias_hh_l0`` (4H,),
    gates in PyTorch's order i, f, g, o, initialised like ``nn.LSTM``: checkpoints load either way.

    ``compiled``: None uses the compiled recurrence when it builds, False always the PyTorch loop, True requires the
    compiled one (RuntimeError if it does not build). Tensors off the CPU always take the PyTorch loop.
    """

    def __init__(self, input_size: int, hidden_size: int, compiled: bool | None = None) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = 1  # what code written for nn.LSTM reads
        self.bidirectional = False
        self.batch_first = True
        self.compiled = compiled
        self.weight_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.LSTM``'s initialisation: every parameter uniform in ±1/√H."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    def kernels(self, device: torch.device) -> Any:
        """The recurrence implementation this call uses (see ``compiled``)."""
        return recurrence_kernels(device, self.compiled)

    def forward(
        self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:  # x (B, T, I); h0, c0 (1, B, H)
        """Every step's h (B, T, H) and the final (h_n, c_n), each (1, B, H), as ``nn.LSTM`` returns them."""
        if isinstance(x, PackedSequence):
            raise TypeError("FastLSTM does not read packed sequences: use nn.LSTM for variable-length batches")
        if x.dim() != 3:
            raise ValueError(f"FastLSTM expects a batch-first (B, T, I) input, got shape {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("FastLSTM got a sequence of 0 steps")
        batch = x.shape[0]
        if hx is None:
            zeros = x.new_zeros(batch, self.hidden_size)  # (B, H)
            h0, c0 = zeros, zeros
        else:
            h0, c0 = hx[0].squeeze(0), hx[1].squeeze(0)  # (1, B, H) → (B, H)
        outputs, h_n, c_n = LSTMFunction.apply(
            x, h0, c0, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0, self.kernels(x.device)
        )
        return outputs, (h_n.unsqueeze(0), c_n.unsqueeze(0))  # (B, H) → (1, B, H)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, batch_first=True"
