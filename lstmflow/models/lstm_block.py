"""The ``lstm`` layer's module, :class:`LSTMBlock`: Keras' LSTM on ``nn.LSTM``'s parameters, with the choice of
what runs its recurrence on a CPU (``train.lstm_kernel``): ``nn.LSTM`` itself or lstmflow's compiled LSTM
(:mod:`lstmflow.models.fast_lstm`), so checkpoints and served models are the same whichever ran.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmflow.models.fast_lstm import LSTMFunction, PythonKernels, recurrence_kernels
from lstmflow.models.kernel_build import compiled_kernels
from lstmflow.models.layers import InputDropout

#: ``train.lstm_kernel``: which implementation runs an lstm layer's recurrence on a CPU (see :class:`LSTMBlock`).
LSTMKernel: TypeAlias = Literal["auto", "lstmflow", "torch"]
#: ``auto`` runs a padded batch in nn.LSTM's packed path (which skips the padding) instead of lstmflow's kernel
#: (which computes it) when more than this fraction of the batch's steps, up to its longest sample, is padding.
#: Packed nn.LSTM costs several times its unpadded self per valid step, so lstmflow's kernel stays the faster well
#: past half padding (benchmarks/RESULTS.md, "the compiled LSTM's kernel choice"): one half keeps a margin, and
#: bucketed batches (lstmflow's sequence batches) hold far less padding than that.
AUTO_MAX_PADDING = 0.5


class LSTMBlock(nn.Module):
    """Keras ``LSTM`` (or ``Bidirectional(LSTM(...))``): dropout on the inputs, then one fused LSTM layer.

    Initialised like Keras' defaults: glorot_uniform input kernels, orthogonal recurrent kernels, zero biases with
    the forget gate's set to 1 (``unit_forget_bias``). PyTorch keeps two bias vectors whose sum plays Keras' one
    bias: ``b_ih`` carries the 1s, ``b_hh`` starts at zero. Both frameworks order the gates i, f, g (c), o.

    The parameters always live in ``self.lstm``, an ``nn.LSTM`` (its state-dict keys, whichever kernel runs).
    ``kernel`` picks what runs the recurrence on a CPU, in fp32 or fp64 without autocast:

    - ``lstmflow``: :class:`~lstmflow.models.fast_lstm.LSTMFunction` on those parameters, one direction at a time;
    - ``torch``: ``nn.LSTM`` itself, as on a GPU (cuDNN), under autocast (bf16) and for other dtypes, always;
    - ``auto``: ``lstmflow`` with its compiled recurrence for a variable-length batch (``lengths`` given, at
      most ``AUTO_MAX_PADDING`` of it padding) in a pass that records gradients (training); ``torch`` for the
      rest. Why: on such batches packed ``nn.LSTM`` is several times slower per valid step, while on full-length
      batches ``nn.LSTM`` is as fast or faster once training children run with the malloc settings of
      :func:`lstmflow.training.launch.child_environment` (measurements: benchmarks/RESULTS.md, "the compiled
      LSTM's kernel choice"). Inference stays with ``nn.LSTM``: it was not measured, and its first use would build
      the C++ recurrence (once per machine) inside an evaluation or a model server. So does everything without a
      C++ compiler, where lstmflow's fallback is a Python loop.

    ``compiled`` is for tests and debugging, as in :class:`~lstmflow.models.fast_lstm.FastLSTM`: False makes
    ``lstmflow`` run the PyTorch loop (and ``auto`` keep ``nn.LSTM``). ``trained_with`` collects the
    implementations that ran gradient-recording passes: ``"lstmflow"`` (compiled), ``"lstmflow-loop"``, ``"torch"``.
    """

    def __init__(
        self, in_features: int, units: int, return_sequences: bool, bidirectional: bool, dropout: float,
        kernel: LSTMKernel = "auto",
    ) -> None:  # fmt: skip
        super().__init__()
        self.input_dropout = InputDropout(dropout) if dropout > 0 else nn.Identity()
        self.lstm = nn.LSTM(in_features, units, num_layers=1, batch_first=True, bidirectional=bidirectional)
        self.return_sequences = return_sequences
        self.out_features = units * (2 if bidirectional else 1)
        self.kernel = kernel
        self.compiled: bool | None = None
        self.trained_with: set[str] = set()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        units = self.lstm.hidden_size
        for name, param in self.lstm.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(param)  # (4H, F): same fan-in/fan-out as Keras' (F, 4H) kernel
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(param)  # (4H, H): orthonormal columns, Keras' (H, 4H) transposed
            else:
                nn.init.zeros_(param)
            if name.startswith("bias_ih"):
                with torch.no_grad():
                    param[units : 2 * units].fill_(1.0)  # the forget gate's slice

    def carrying(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Every step's output (B, T, D·H) from the initial ``state`` (zeros when None), and the final (h, c)."""
        x = self.input_dropout(x)
        kernels = self._recorded(self.recurrence(x, None))
        if kernels is None:
            return self.lstm(x, state)  # (B, T, D·H); h, c (D, B, H)
        return self._fast(x, state, kernels)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:  # x (B, T, F), lengths (B,)
        """Every step's output (B, T, D·H) or each sample's final state (B, D·H).

        With ``lengths`` the LSTM reads only each sample's first ``lengths[i]`` steps (a packed sequence): the
        final state is the forward direction's after the sample's own last step and the backward direction's after
        reading back to its first step (Keras' masking), and the outputs at padded steps are zero.
        """
        batch, steps = x.shape[0], x.shape[1]
        x = self.input_dropout(x)
        kernels = self._recorded(self.recurrence(x, lengths))
        if kernels is not None:
            return self._fast_forward(x, lengths, kernels)
        if lengths is None:
            outputs, (h_n, _) = self.lstm(x)  # outputs (B, T, D·H), h_n (D, B, H)
        else:
            # pack_padded_sequence wants the lengths on the CPU; enforce_sorted=False sorts and unsorts for us
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_outputs, (h_n, _) = self.lstm(packed)  # h_n (D, B, H), back in the batch's order
            if self.return_sequences:
                outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=steps)  # (B, T, D·H)
        if self.return_sequences:
            return outputs
        # each direction's final state: forward after the last step, backward after step 0 (Keras' Bidirectional)
        return h_n.transpose(0, 1).reshape(batch, self.out_features)  # (D, B, H) → (B, D, H) → (B, D·H)

    def recurrence(self, x: Tensor, lengths: Tensor | None = None) -> Any:
        """lstmflow's recurrence kernels for a pass over ``x`` (the lstm's input) in the current autograd and
        autocast mode (see the class's docstring), or None for ``nn.LSTM``."""
        kernels = None
        applies = (
            self.kernel != "torch" and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
            and x.dtype in (torch.float32, torch.float64) and self.lstm.weight_hh_l0.dtype == x.dtype
            and x.shape[0] > 0 and x.shape[1] > 0
        )  # fmt: skip
        if applies and lengths is not None:
            shortest, longest = int(lengths.min()), int(lengths.max())
            # out-of-range lengths go to pack_padded_sequence, which reports them
            applies = 1 <= shortest and longest <= x.shape[1]
            if applies and self.kernel == "auto":
                applies = 1 - int(lengths.sum()) / (len(lengths) * longest) <= AUTO_MAX_PADDING
        elif self.kernel == "auto":
            applies = False  # full-length batches: nn.LSTM (see the class's docstring)
        if applies and self.kernel == "lstmflow":
            kernels = recurrence_kernels(x.device, self.compiled)
        elif applies and torch.is_grad_enabled() and self.compiled is not False:  # auto
            kernels = compiled_kernels()
        return kernels

    def _recorded(self, kernels: Any) -> Any:
        """``kernels``, noted in :attr:`trained_with` when this pass records gradients."""
        if torch.is_grad_enabled():
            self.trained_with.add(
                "torch" if kernels is None else "lstmflow-loop" if kernels is PythonKernels else "lstmflow"
            )
        return kernels

    def _fast_forward(self, x: Tensor, lengths: Tensor | None, kernels: Any) -> Tensor:
        """:meth:`forward` with lstmflow's recurrence on the padded batch: one direction never looks ahead, so a
        sample's outputs up to its last step are exact; the steps after it are set to zero, as packing leaves them."""
        steps, hidden = x.shape[1], self.lstm.hidden_size
        if lengths is None:
            outputs, _ = self._fast(x, None, kernels)  # (B, T, D·H)
            final = outputs[:, -1, :hidden]  # (B, H)
        else:
            lengths = lengths.to(device=x.device, dtype=torch.long)
            longest = int(lengths.max())
            outputs, _ = self._fast(x[:, :longest], None, kernels, lengths)  # only up to the longest sample
            valid = torch.arange(longest, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T')
            outputs = outputs.masked_fill(~valid.unsqueeze(-1), 0.0)  # (B, T', D·H)
            final = outputs[torch.arange(len(lengths), device=x.device), lengths - 1, :hidden]  # (B, H)
        if self.return_sequences:
            return F.pad(outputs, (0, 0, 0, steps - outputs.shape[1]))  # (B, T', D·H) → (B, T, D·H), zeros after
        # forward after each sample's last step, backward after reading back to step 0 (Keras' Bidirectional)
        return torch.cat([final, outputs[:, 0, hidden:]], dim=1) if self.lstm.bidirectional else final  # (B, D·H)

    def _fast(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None, kernels: Any, lengths: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``self.lstm(x, state)`` by :class:`LSTMFunction` on the same parameters, one direction at a time.

        The backward direction reads the time-reversed input: with ``lengths``, each sample's own steps reversed in
        place (the padding stays after them), so it starts at the sample's last step; its outputs are put back the
        same way. With ``lengths`` the outputs at padded steps and the final (h, c) are not nn.LSTM's: the caller
        masks the former and takes the final h from the outputs.
        """
        batch, steps = x.shape[0], x.shape[1]
        zeros = x.new_zeros(batch, self.lstm.hidden_size)  # (B, H)
        outputs, finals_h, finals_c = [], [], []
        kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        for direction, suffix in enumerate(["", "_reverse"][: 2 if self.lstm.bidirectional else 1]):
            if direction == 0:
                reader = x
            elif lengths is None:
                reader = x.flip(1)  # (B, T, F), time reversed
            else:
                order = self._reversal(lengths, steps)  # (B, T)
                reader = x.gather(1, order.unsqueeze(-1).expand_as(x))
            h0, c0 = (zeros, zeros) if state is None else (state[0][direction], state[1][direction])  # (B, H)
            # this direction's nn.LSTM parameters: weight_ih (4H, F), weight_hh (4H, H), bias_ih, bias_hh (4H,)
            weights = [getattr(self.lstm, f"{kind}_l0{suffix}") for kind in kinds]
            out, h_n, c_n = LSTMFunction.apply(reader, h0, c0, *weights, kernels)  # out (B, T, H); h_n, c_n (B, H)
            if direction == 1:
                out = out.flip(1) if lengths is None else out.gather(1, order.unsqueeze(-1).expand_as(out))
            outputs.append(out)
            finals_h.append(h_n)
            finals_c.append(c_n)
        # (B, T, D·H); h, c (D, B, H)
        return torch.cat(outputs, dim=2), (torch.stack(finals_h), torch.stack(finals_c))

    @staticmethod
    def _reversal(lengths: Tensor, steps: int) -> Tensor:
        """(B, T) step indices that reverse each sample's first ``lengths[b]`` steps and keep the rest in place."""
        positions = torch.arange(steps, device=lengths.device).unsqueeze(0)  # (1, T)
        reversed_positions = lengths.unsqueeze(1) - 1 - positions  # (B, T)
        return torch.where(reversed_positions >= 0, reversed_positions, positions)
