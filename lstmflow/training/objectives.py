"""What training needs to know about a task, so that :func:`lstmflow.training.fit.fit` never branches on it.

An :class:`Objective` reads a prepared feature folder and says how many inputs and outputs the network has,
how batches look, what the loss is and what else is worth logging per epoch:

- :class:`ForecastObjective`: windows of a series, the output reshaped to (B, horizon, targets), ``train.loss``.
- :class:`ClassifyObjective`: padded, length-bucketed sequences, cross-entropy on the model's logits (its output
  softmax folded into the loss; classes weighted by ``train.class_weight``), validation accuracy and macro F1, and
  the padding fraction of the training batches.
- :class:`LanguageModelObjective`: spans of a token stream, cross-entropy of the next token at every step,
  validation perplexity; a ``stateful`` lstm's state carried from one span to the next (truncated BPTT).
- translation and speech recognition, whose answer is a sequence, in :mod:`lstmflow.training.sequence_objectives`.

Each objective also builds its network (:meth:`Objective.network`): a layer list for the first three, an
encoder–decoder for translation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lstmflow.config import CorpusSpec, PipelineSpec
from lstmflow.data.parts import Parts as Part
from lstmflow.errors import ConfigError, DataError
from lstmflow.models.lstm import LSTMNet, LSTMState, output_layer
from lstmflow.training.scores import accuracy_and_macro_f1

if TYPE_CHECKING:
    from lstmflow.data.corpus import CorpusFeatures
    from lstmflow.data.sequences import SequenceFeatures
    from lstmflow.data.timeseries import Features, WindowSet
    from lstmflow.models.lstm_block import LSTMKernel
    from lstmflow.models.seq2seq import Seq2Seq
    from lstmflow.training.distributed import DataParallelNet

#: (the model's inputs, the target): ``model(*inputs)`` is what the loss compares with the target.
Batch = tuple[tuple[Tensor, ...], Tensor]

#: On scaled values; huber's delta is 1, about one standard deviation under `scale: standard`.
FORECAST_LOSSES: dict[str, Callable[..., Tensor]] = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}

#: Activations a classifier's output dense may have: both leave the scores as logits once the softmax is removed.
CLASSIFIER_ACTIVATIONS = ("softmax", "linear")

#: ``train.batch_size: auto``: the largest power of two up to the training samples over AUTO_BATCH_DIVISOR, within
#: these bounds. 16 or more steps per epoch whatever the set's size; 8 keeps gradients (and batch norm's statistics)
#: from being a handful of samples' noise; 64 is what large sets trained with before.
AUTO_BATCH_DIVISOR = 16
AUTO_BATCH_BOUNDS = (8, 64)
#: ``train.class_weight: auto`` weighs the classes only from this ratio of the largest to the smallest training class.
IMBALANCE_RATIO = 3.0


class Objective(Protocol):
    """A task as the training loop sees it."""

    n_features: int  # per time step, the network's input width (for token ids: the vocabulary size)
    n_outputs: int  # per sample, the network's output width
    needs: str  # where n_outputs comes from, for build_model's messages (e.g. "3 classes in the training labels")
    per_step: bool  # n_outputs at every time step (next-token scores), not once per sample
    starts_from_zero: bool  # the output layer starts at zero (see LSTMNet.zero_output): a naive first answer

    def samples(self, part: Part) -> int:
        """Independent samples in ``part``: windows, sequences, or spans of ``data.sequence_length`` tokens; what
        ``train.batch_size: auto`` and the small-validation rule count."""
        ...

    def batch_count(self, part: Part, batch_size: int) -> int:
        """Batches per pass over ``part`` (the progress bar's total, and onecycle's steps per epoch)."""
        ...

    def batches(
        self, part: Part, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0
    ) -> Iterator[Batch]:
        """Every sample of ``part`` once; a shuffled order is a pure function of (seed, epoch), so resume replays it."""
        ...

    # The model arguments are typed Any here: each objective takes the kind of network its own ``network`` built.
    def loss(self, model: Any, inputs: tuple[Tensor, ...], target: Tensor) -> Tensor:
        """The batch's mean loss, differentiable (``model``: the network, or the network under DDP)."""
        ...

    def evaluate(self, model: Any, part: Part, batch_size: int, device: torch.device | str) -> dict[str, float]:
        """``loss`` (the mean over the whole part) and the task's metrics, in eval mode and without gradients."""
        ...

    def batch_stats(self, part: Part, batch_size: int, shuffle: bool, seed: int, epoch: int) -> dict[str, float]:
        """Facts about one epoch's batches worth logging (e.g. ``padding_fraction``); empty when there are none."""
        ...

    def carried_state(self) -> dict[str, Tensor]:
        """What the objective carries from one training batch to the next (a stateful LSTM's detached (h, c)), for a
        mid-epoch checkpoint; empty for stateless tasks. ``batches`` starts every pass afresh."""
        ...

    def restore_carried_state(self, state: dict[str, Tensor]) -> None:
        """Put back what ``carried_state`` returned, before the training batches after a mid-epoch resume."""
        ...

    def network(self, spec: PipelineSpec, lstm_kernel: LSTMKernel = "auto") -> LSTMNet | Seq2Seq:
        """The untrained network of ``spec.model`` for this task's inputs and outputs."""
        ...


class LayerListNetwork:
    """:meth:`Objective.network` for the tasks whose model is one layer list (:func:`build_model`)."""

    n_features: int
    n_outputs: int
    needs: str
    per_step: bool
    generates = True  # with per_step: the model writes one token at a time (see build_model)

    def network(self, spec: PipelineSpec, lstm_kernel: LSTMKernel = "auto") -> LSTMNet:
        from lstmflow.models.lstm import build_model

        where = f"pipelines.{spec.name}.model"
        return build_model(
            spec.model, self.n_features, self.n_outputs, where, self.needs, self.per_step, lstm_kernel=lstm_kernel,
            generates=self.generates,
        )  # fmt: skip


class Stateless:
    """The carried-state half of :class:`Objective` for tasks whose batches are independent."""

    def carried_state(self) -> dict[str, Tensor]:
        return {}

    def restore_carried_state(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"a stateless objective was given carried state {sorted(state)}")


def make_objective(spec: PipelineSpec, features_dir: Path) -> Objective:
    """The objective of ``spec.task`` on the features prepared in ``features_dir``; checks the spec against it."""
    features_dir = Path(features_dir)
    if spec.task == "forecast":
        from lstmflow.data.timeseries import load_features

        return ForecastObjective(spec, load_features(features_dir), features_dir)
    if spec.task == "classify":
        problems = scoring_problems(spec)
        if problems:
            raise ConfigError(problems)
        from lstmflow.data.sequences import load_sequences

        return ClassifyObjective(spec, load_sequences(features_dir), features_dir)
    if spec.task == "language_model":
        if problems := scoring_problems(spec):
            raise ConfigError(problems)
        from lstmflow.data.corpus import load_corpus

        return LanguageModelObjective(spec, load_corpus(features_dir))
    if spec.task == "translate":
        from lstmflow.data.pairs import load_pairs
        from lstmflow.training.sequence_objectives import TranslateObjective

        return TranslateObjective(load_pairs(features_dir), features_dir)
    if spec.task == "transcribe":
        from lstmflow.data.speech import load_speech
        from lstmflow.training.sequence_objectives import TranscribeObjective

        return TranscribeObjective(load_speech(features_dir), features_dir)
    raise ValueError(f"pipelines.{spec.name}.task: no objective for task {spec.task!r}")


def resolve_batch_size(spec: PipelineSpec, objective: Objective, world_size: int = 1) -> int:
    """``train.batch_size`` as a number: a given one as it is, ``auto`` from the training samples (see
    ``AUTO_BATCH_BOUNDS``), and never below the number of training processes, which share every batch."""
    given = spec.train.batch_size
    if given != "auto":
        return given
    low, high = AUTO_BATCH_BOUNDS
    share = objective.samples("train") // AUTO_BATCH_DIVISOR
    power = 1 << (share.bit_length() - 1) if share > 0 else 1  # the largest power of two <= share
    return max(min(max(power, low), high), world_size)


def to_device(inputs: tuple[Tensor, ...], device: torch.device | str) -> tuple[Tensor, ...]:
    """A batch's model inputs on ``device`` (the model moves ``lengths`` back to the CPU for packing itself)."""
    return tuple(tensor.to(device) for tensor in inputs)


# ------------------------------------------------------------------------------------------------ forecast


class ForecastObjective(Stateless, LayerListNetwork):
    """Forecast ``horizon`` steps of every target from a window of the series."""

    def __init__(self, spec: PipelineSpec, features: Features, features_dir: Path) -> None:
        if len(features.windows("val")) == 0:
            # No fallback to the training loss: early stopping, the plateau schedule and the choice of model.pt
            # would all reward overfitting, silently.
            raise DataError(
                f"pipelines.{spec.name}.data.split.val: the validation part of {features_dir} holds no windows "
                f"(split.val = {spec.data.split.val}); training needs them for early stopping and to choose "
                "model.pt, so set split.val > 0"
            )
        self.features = features
        self.loss_name = spec.loss
        self.n_features = features.n_features
        self.n_outputs = features.horizon * features.n_targets
        self.needs = f"horizon {features.horizon} × {features.n_targets} target(s)"
        self.per_step = False
        self.starts_from_zero = features.preprocessing.targets_are_changes

    def samples(self, part: Part) -> int:
        return len(self.features.windows(part))

    def batch_count(self, part: Part, batch_size: int) -> int:
        return math.ceil(len(self.features.windows(part)) / batch_size)

    def batches(
        self, part: Part, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0
    ) -> Iterator[Batch]:
        for x, y in self.features.windows(part).batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch):
            yield (x,), y

    def loss(self, model: LSTMNet | DataParallelNet, inputs: tuple[Tensor, ...], target: Tensor) -> Tensor:
        (x,) = inputs
        prediction = model(x).view(target.shape)  # (B, H*K) -> (B, H, K)
        return FORECAST_LOSSES[self.loss_name](prediction, target)

    def evaluate(self, model: LSTMNet, part: Part, batch_size: int, device: torch.device | str) -> dict[str, float]:
        return {"loss": evaluate_loss(model, self.features.windows(part), self.loss_name, batch_size, device)}

    def batch_stats(self, part: Part, batch_size: int, shuffle: bool, seed: int, epoch: int) -> dict[str, float]:
        return {}  # every window has the same length: nothing to report


@torch.no_grad()
def evaluate_loss(
    model: LSTMNet, windows: WindowSet, loss: str, batch_size: int, device: torch.device | str = "cpu"
) -> float:
    """Mean loss per forecast value over every window, in eval mode (no dropout, running norm statistics)."""
    model.eval()
    total, count = 0.0, 0
    for x, y in windows.batches(batch_size):
        x, y = x.to(device), y.to(device)
        prediction = model(x).view(y.shape)  # (B, H*K) -> (B, H, K)
        total += FORECAST_LOSSES[loss](prediction, y, reduction="sum").item()
        count += y.numel()
    return total / count


# ------------------------------------------------------------------------------------------ classification


def scoring_problems(spec: PipelineSpec) -> list[str]:
    """What in ``spec`` cannot give class (or next-token) scores from its inputs: token ids without an embedding
    first, an embedding on values, or an output activation that is not a softmax or linear.

    (A loss other than cross-entropy is refused when the spec is validated.)"""
    problems = []
    first = spec.model.layers[0]
    reads_ids = spec.data.kind in {"text", "corpus"}
    if reads_ids and first.embedding is None:
        problems.append(
            f"pipelines.{spec.name}.model.layers[0]: text arrives as token ids, so the first layer must be an "
            f"embedding that turns them into vectors (e.g. `- embedding: {{dim: 64}}`), got {first.kind}"
        )
    if not reads_ids and first.embedding is not None:
        problems.append(
            f"pipelines.{spec.name}.model.layers[0].embedding: reads token ids, which only data.kind text and corpus "
            f"give; data.kind {spec.data.kind} gives values (remove the embedding)"
        )
    head = output_layer(spec.model)
    dense = spec.model.layers[head].dense
    if dense is not None and dense.activation not in CLASSIFIER_ACTIVATIONS:
        problems.append(
            f"pipelines.{spec.name}.model.layers[{head}].dense.activation: a classifier's output layer gives the "
            f"class scores, so its activation must be softmax (folded into the cross-entropy loss) or linear, "
            f"got {dense.activation!r}"
        )
    return problems


def classifier_input_size(features: SequenceFeatures) -> int:
    """build_model's ``n_features`` for a prepared sequence folder: the values per step, or for text (one token id
    per step) the vocabulary size, which sizes the embedding. Training, evaluation and serving all call this."""
    return features.meta["extra_meta"].get("vocab_size", features.n_features)


class ClassifyObjective(Stateless, LayerListNetwork):
    """Give each variable-length sequence one of ``n_classes`` labels."""

    def __init__(self, spec: PipelineSpec, features: SequenceFeatures, features_dir: Path) -> None:
        if len(features.part("val")) == 0:
            raise DataError(
                f"pipelines.{spec.name}.data.split: the validation part of {features_dir} holds no samples; "
                "training needs them for early stopping and to choose model.pt, so give split.val > 0 "
                "(or val rows in split.column)"
            )
        self.features = features
        self.n_features = classifier_input_size(features)
        self.n_outputs = features.n_classes
        self.needs = f"{features.n_classes} classes in the training labels"
        self.per_step = False
        self.starts_from_zero = False
        weights = class_weights(features.part("train").labels, features.n_classes, spec.train.class_weight)
        self.class_weights = None if weights is None else torch.from_numpy(weights)

    def samples(self, part: Part) -> int:
        return len(self.features.part(part))

    def batch_count(self, part: Part, batch_size: int) -> int:
        return len(self.features.part(part).batch_indices(batch_size))

    def batches(
        self, part: Part, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0
    ) -> Iterator[Batch]:
        for batch in self.features.part(part).batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch):
            yield (batch.x, batch.lengths), batch.y

    def loss(self, model: LSTMNet | DataParallelNet, inputs: tuple[Tensor, ...], target: Tensor) -> Tensor:
        x, lengths = inputs
        logits = model.logits(x, lengths)  # (B, n_classes)
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(logits, target, weight=weight)  # target (B,)

    @torch.no_grad()
    def evaluate(self, model: LSTMNet, part: Part, batch_size: int, device: torch.device | str) -> dict[str, float]:
        """Mean cross-entropy per sample (unweighted: the true log loss), accuracy and macro-averaged F1."""
        model.eval()
        total, truth, predicted = 0.0, [], []
        for inputs, target in self.batches(part, batch_size):
            (x, lengths), target = to_device(inputs, device), target.to(device)
            logits = model.logits(x, lengths)  # (B, n_classes)
            total += F.cross_entropy(logits, target, reduction="sum").item()
            truth.append(target.cpu().numpy())
            predicted.append(logits.argmax(dim=1).cpu().numpy())
        y_true, y_pred = np.concatenate(truth), np.concatenate(predicted)
        return {"loss": total / len(y_true), **accuracy_and_macro_f1(y_true, y_pred)}

    def batch_stats(self, part: Part, batch_size: int, shuffle: bool, seed: int, epoch: int) -> dict[str, float]:
        sequences = self.features.part(part)
        return {"padding_fraction": sequences.padding_fraction(batch_size, shuffle=shuffle, seed=seed, epoch=epoch)}


def class_weights(labels: np.ndarray, n_classes: int, rule: str) -> np.ndarray | None:
    """``train.class_weight``'s weights of the classes in the training loss (float32, one per class), or None.

    ``balanced`` is scikit-learn's (n_samples / (n_classes * count)); ``auto`` softens it to its square root (full
    inverse frequency over-corrects a rare class seen a few times) and applies only from ``IMBALANCE_RATIO``. A class
    the training labels lack gets weight 0: no training target has it.
    """
    counts = np.bincount(labels, minlength=n_classes)
    present = np.flatnonzero(counts)
    imbalanced = counts[present].max() >= IMBALANCE_RATIO * counts[present].min()
    if rule == "none" or (rule == "auto" and not imbalanced):
        return None
    from sklearn.utils.class_weight import compute_class_weight  # only here: a second of the child's start-up

    weights = np.zeros(n_classes, dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return np.sqrt(weights) if rule == "auto" else weights


# ------------------------------------------------------------------------------------------ language model


def stateful_layers(spec: PipelineSpec) -> set[int]:
    """Indices of the lstm layers that carry their state from one span of the text to the next."""
    return {index for index, layer in enumerate(spec.model.layers) if layer.lstm is not None and layer.lstm.stateful}


class LanguageModelObjective(LayerListNetwork):
    """Predict every next token of a text, read in spans of ``data.sequence_length`` tokens.

    Batches are the spans of ``batch_size`` parallel streams (:class:`~lstmflow.data.corpus.TokenStream`). With a
    ``stateful`` lstm they come in stream order and that layer's final (h, c), detached, starts the next span:
    truncated back-propagation through time over the whole text. Without one, every span starts from zeros and
    the spans are shuffled. Evaluation reads a part in order and carries the same state, so validation sees the
    model as training used it. The loss is the mean cross-entropy per predicted token (nats).
    """

    def __init__(self, spec: PipelineSpec, features: CorpusFeatures) -> None:
        assert isinstance(spec.data, CorpusSpec)  # the config gives task language_model corpus data only
        self.features = features
        self.steps = spec.data.sequence_length
        self.stateful = stateful_layers(spec)
        self.n_features = features.vocab_size
        self.n_outputs = features.vocab_size
        self.needs = f"a vocabulary of {features.vocab_size} tokens"
        self.per_step = True
        self.starts_from_zero = False
        self._carry: LSTMState = {}

    def samples(self, part: Part) -> int:
        return (len(self.features.stream(part)) - 1) // (self.steps + 1)

    def rows(self, part: Part, batch_size: int) -> int:
        return self.features.stream(part).rows_for(batch_size, self.steps)

    def batch_count(self, part: Part, batch_size: int) -> int:
        return self.features.stream(part).batch_count(self.rows(part, batch_size), self.steps)

    def batches(
        self, part: Part, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0
    ) -> Iterator[Batch]:
        """Every span of ``part`` once; each pass starts the carried state afresh."""
        self._carry = {}
        order = None
        if shuffle and not self.stateful:  # a carried state needs the spans in order
            order = np.random.default_rng([seed, epoch]).permutation(self.batch_count(part, batch_size))
        for x, y in self.spans(part, batch_size, order):
            yield (x,), y

    def spans(self, part: Part, batch_size: int, order: np.ndarray | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """(x (B, T, 1) ids, y (B, T) next ids) of ``part``, in stream order unless ``order`` is given."""
        return self.features.stream(part).batches(self.rows(part, batch_size), self.steps, order)

    def loss(self, model: LSTMNet | DataParallelNet, inputs: tuple[Tensor, ...], target: Tensor) -> Tensor:
        (x,) = inputs
        logits, final = model.logits_carrying(x, self._carry)  # (B, T, V)
        self._carry = {index: (h.detach(), c.detach()) for index, (h, c) in final.items() if index in self.stateful}
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())  # (B·T, V), (B·T,)

    def carried_state(self) -> dict[str, Tensor]:
        return {f"{index}.{name}": tensor for index, pair in self._carry.items() for name, tensor in zip("hc", pair)}

    def restore_carried_state(self, state: dict[str, Tensor]) -> None:
        layers = {int(key.split(".")[0]) for key in state}
        self._carry = {index: (state[f"{index}.h"], state[f"{index}.c"]) for index in sorted(layers)}

    @torch.no_grad()
    def evaluate(self, model: LSTMNet, part: Part, batch_size: int, device: torch.device | str) -> dict[str, float]:
        """Mean cross-entropy per token and perplexity, reading the part in order."""
        total, count = token_cross_entropy(model, self, part, batch_size, device)
        loss = total / count
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}

    def batch_stats(self, part: Part, batch_size: int, shuffle: bool, seed: int, epoch: int) -> dict[str, float]:
        return {}  # every span is full: nothing padded


def token_cross_entropy(
    model: LSTMNet, objective: LanguageModelObjective, part: Part, batch_size: int, device: torch.device | str
) -> tuple[float, int]:
    """(summed cross-entropy in nats, tokens scored) over ``part`` in stream order, in eval mode, carrying the
    stateful layers' state from span to span as training does."""
    log_probabilities = target_log_probabilities(model, objective, part, batch_size, device)
    return -float(log_probabilities.double().sum()), log_probabilities.numel()


@torch.no_grad()
def target_log_probabilities(
    model: LSTMNet, objective: LanguageModelObjective, part: Part, batch_size: int, device: torch.device | str
) -> Tensor:
    """(rows, L - 1) on CPU: the log-probability of every token of ``part``'s streams but each row's first, read
    as :func:`token_cross_entropy` reads them (what an interpolation with another model needs, token by token)."""
    model.eval()
    carry: LSTMState = {}
    spans = []
    for x, y in objective.spans(part, batch_size):
        logits, final = model.logits_carrying(x.to(device), carry)  # (B, T, V)
        carry = {index: state for index, state in final.items() if index in objective.stateful}
        log_probabilities = torch.log_softmax(logits.float(), dim=-1)
        spans.append(log_probabilities.gather(-1, y.to(device).unsqueeze(-1)).squeeze(-1).cpu())  # (B, T)
    return torch.cat(spans, dim=1)
