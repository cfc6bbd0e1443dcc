"""The objectives of the tasks whose answer is a sequence (see :mod:`lstmflow.training.objectives`):

- :class:`TranslateObjective`: source and target texts, the target's cross-entropy token by token under teacher
  forcing (the true previous token fed to the decoder), validation token accuracy;
- :class:`TranscribeObjective`: audio frames and their transcripts, the CTC loss of the characters over the
  per-frame scores, validation character error rate of greedy decoding.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from lstmflow.config import PipelineSpec
from lstmflow.data.parts import Parts as Part
from lstmflow.errors import DataError
from lstmflow.models.lstm import LSTMNet
from lstmflow.training.objectives import Batch, LayerListNetwork, Stateless, to_device

if TYPE_CHECKING:
    from lstmflow.data.pairs import PairFeatures
    from lstmflow.data.speech import SpeechFeatures
    from lstmflow.models.lstm_block import LSTMKernel
    from lstmflow.models.seq2seq import Seq2Seq
    from lstmflow.training.distributed import DataParallelNet


class SequenceAnswers(Stateless):
    """What both objectives share: prepared parts (pairs or clips) that batch themselves, a sequence out of every
    sample, and a validation part to decide on."""

    features: PairFeatures | SpeechFeatures

    def __init__(self, features: PairFeatures | SpeechFeatures, features_dir: Path, samples: str) -> None:
        if len(features.part("val")) == 0:
            raise DataError(
                f"{features_dir}: the validation part holds no {samples}; training needs them for early stopping and "
                "to choose model.pt, so give split.val > 0"
            )
        self.per_step = True
        self.starts_from_zero = False

    def samples(self, part: Part) -> int:
        return len(self.features.part(part))

    def batch_count(self, part: Part, batch_size: int) -> int:
        return self.features.part(part).batch_count(batch_size)

    def batch_stats(self, part: Part, batch_size: int, shuffle: bool, seed: int, epoch: int) -> dict[str, float]:
        return {}  # padding is bucketed away by the stores; nothing more to report


# --------------------------------------------------------------------------------------------- translation


class TranslateObjective(SequenceAnswers):
    """Write each source text's target text, token by token: the mean cross-entropy per target token (its end
    included, padding left out), the decoder fed the true target so far (teacher forcing)."""

    def __init__(self, features: PairFeatures, features_dir: Path) -> None:
        super().__init__(features, features_dir, "pairs")
        self.features: PairFeatures = features
        self.n_features = features.source_vocab
        self.n_outputs = features.target_vocab
        self.needs = f"a target vocabulary of {features.target_vocab} tokens (begin and end marks included)"

    def network(self, spec: PipelineSpec, lstm_kernel: LSTMKernel = "auto") -> Seq2Seq:
        from lstmflow.models.seq2seq import Seq2Seq

        return Seq2Seq(spec.model, self.n_features, self.n_outputs, f"pipelines.{spec.name}.model")

    def batches(
        self, part: Part, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0
    ) -> Iterator[Batch]:
        for batch in self.features.part(part).batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch):
            yield (batch.source, batch.source_lengths, batch.decoder_input), batch.decoder_target

    def loss(self, model: Seq2Seq | DataParallelNet, inputs: tuple[Tensor, ...], target: Tensor) -> Tensor:
        logits = model(*inputs)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=0)  # padding is id 0

    @torch.no_grad()
    def evaluate(self, model: Seq2Seq, part: Part, batch_size: int, device: torch.device | str) -> dict[str, float]:
        """Mean cross-entropy per target token and the share of target tokens predicted right, both with the true
        target so far as input."""
        model.eval()
        total, right, count = 0.0, 0, 0
        for inputs, target in self.batches(part, batch_size):
            inputs, target = to_device(inputs, device), target.to(device)
            logits = model(*inputs)  # (B, T, V)
            real = target != 0
            total += F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=0, reduction="sum").item()
            right += int((logits.argmax(dim=-1) == target)[real].sum())
            count += int(real.sum())
        return {"loss": total / count, "token_accuracy": right / count}


# ---------------------------------------------------------------------------------------- speech recognition


class TranscribeObjective(SequenceAnswers, LayerListNetwork):
    """Spell each clip's transcript, one character at a time, from its frames: per-frame scores of the characters
    and the CTC blank (index 0), trained with the CTC loss (the mean over the batch of each clip's negative
    log-likelihood over all alignments, divided by its transcript's length, as PyTorch's ``reduction="mean"``)."""

    def __init__(self, features: SpeechFeatures, features_dir: Path) -> None:
        super().__init__(features, features_dir, "clips")
        self.features: SpeechFeatures = features
        self.n_features = features.n_features
        self.n_outputs = features.n_outputs
        self.needs = f"{len(features.alphabet)} characters in the training transcripts and the CTC blank"
        self.generates = False

    def batches(
        self, part: Part, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0
    ) -> Iterator[Batch]:
        for batch in self.features.part(part).batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch):
            yield (batch.features, batch.lengths, batch.target_lengths), batch.targets

    def loss(self, model: LSTMNet | DataParallelNet, inputs: tuple[Tensor, ...], target: Tensor) -> Tensor:
        return self._ctc(model, inputs, target)[0]

    def _ctc(
        self, model: LSTMNet | DataParallelNet, inputs: tuple[Tensor, ...], target: Tensor, reduction: str = "mean"
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(the CTC loss, the per-frame log-probabilities (B, T, V), each clip's output frames (B,)); ``reduction``
        ``none`` gives each clip's loss divided by its transcript's length."""
        from lstmflow.training.distributed import DataParallelNet

        x, lengths, target_lengths = inputs
        log_probs = F.log_softmax(model.logits(x, lengths).float(), dim=-1)  # (B, T, V)
        net = cast(LSTMNet, model.net) if isinstance(model, DataParallelNet) else model  # this objective's network
        frames = net.output_lengths(lengths.cpu())
        loss = F.ctc_loss(
            log_probs.transpose(0, 1), target, frames, target_lengths.cpu(), blank=0, reduction=reduction,
            zero_infinity=True,  # a clip too short for its text (refused by the data stage) adds 0, not inf
        )  # fmt: skip
        if reduction == "none":
            loss = loss / target_lengths.to(loss.device).clamp(min=1)
        return loss, log_probs, frames

    @torch.no_grad()
    def evaluate(self, model: LSTMNet, part: Part, batch_size: int, device: torch.device | str) -> dict[str, float]:
        """The CTC loss per clip (each divided by its transcript's length, as in training) and the character error
        rate of greedy decoding (jiwer)."""
        import jiwer

        from lstmflow.data.speech import decode_ids
        from lstmflow.models.ctc import output_ids

        model.eval()
        total, truth, written = 0.0, [], []
        speech = self.features.part(part)
        for batch in speech.batches(batch_size):
            inputs = to_device((batch.features, batch.lengths, batch.target_lengths), device)
            losses, log_probs, frames = self._ctc(model, inputs, batch.targets.to(device), reduction="none")
            total += float(losses.sum())
            written += [decode_ids(self.features.alphabet, ids) for ids in output_ids(log_probs, frames)]
            truth += [speech.texts[int(i)] for i in batch.positions]
        return {"loss": total / len(truth), "cer": float(jiwer.cer(truth, written))}
