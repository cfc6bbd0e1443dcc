"""Decoding a CTC output (Graves et al. 2006): per-frame scores over the blank (index 0) and the labels → label ids.

- :func:`greedy_ctc`: the best label of every frame, repeats merged, blanks dropped;
- :func:`prefix_beam_search`: the ``width`` most likely label sequences kept at every frame, each summed over the
  alignments that spell it (blank-ending and label-ending probabilities kept apart, Hannun et al. 2014); its final
  prefixes and the greedy decoding are rescored exactly (PyTorch's CTC loss) and the best wins, so it never scores
  below greedy decoding.

Written here because the library for it that installs from the registries, pyctcdecode 0.5, requires numpy < 2,
which lstmflow's other dependencies cannot take; without a language model its search is this one.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
from torch import Tensor

BLANK = 0


def output_ids(log_probs: Tensor, lengths: Tensor) -> list[list[int]]:
    """Each sample's greedy decoding: log_probs (B, T, V) (or raw scores), lengths (B,) valid frames."""
    best = log_probs.argmax(dim=-1).cpu()  # (B, T)
    return [greedy_ctc(best[i, : int(length)].tolist()) for i, length in enumerate(lengths.tolist())]


def greedy_ctc(frame_labels: list[int]) -> list[int]:
    """Merge runs of the same label, then drop blanks: [0, 3, 3, 0, 3, 5, 5] → [3, 3, 5]."""
    ids, previous = [], BLANK
    for label in frame_labels:
        if label != previous and label != BLANK:
            ids.append(label)
        previous = label
    return ids


def prefix_beam_search(log_probs: np.ndarray, width: int) -> tuple[list[int], float]:
    """The most likely label sequence found for one utterance's (T, V) log-probabilities, and its exact
    log-probability (over all its alignments); ``width`` prefixes survive each frame."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    # each prefix: (log P(prefix, alignment ends in blank), log P(prefix, alignment ends in its last label))
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
    for frame in log_probs.astype(np.float64):
        candidates = np.argsort(frame)[::-1][: max(width, 2)]  # the labels worth extending with at this frame
        grown: defaultdict[tuple[int, ...], list[float]] = defaultdict(lambda: [-math.inf, -math.inf])
        for prefix, (blank_end, label_end) in beams.items():
            total = float(np.logaddexp(blank_end, label_end))
            for label in candidates:
                p = float(frame[label])
                if label == BLANK:
                    grown[prefix][0] = np.logaddexp(grown[prefix][0], total + p)
                    continue
                extended = (*prefix, int(label))
                if prefix and prefix[-1] == label:  # a repeat needs a blank between; else it merges into the last
                    grown[extended][1] = np.logaddexp(grown[extended][1], blank_end + p)
                    grown[prefix][1] = np.logaddexp(grown[prefix][1], label_end + p)
                else:
                    grown[extended][1] = np.logaddexp(grown[extended][1], total + p)
        ranked = sorted(grown.items(), key=lambda item: -float(np.logaddexp(item[1][0], item[1][1])))[:width]
        beams = {prefix: (ends[0], ends[1]) for prefix, ends in ranked}
    finalists = [list(prefix) for prefix in beams] + [greedy_ctc(log_probs.argmax(axis=1).tolist())]
    scored = [(sequence_log_prob(log_probs, ids), ids) for ids in finalists]
    score, best = max(scored, key=lambda pair: pair[0])
    return best, score


def sequence_log_prob(log_probs: np.ndarray, ids: list[int]) -> float:
    """log P(ids | one utterance's (T, V) log-probabilities) over all alignments: PyTorch's CTC loss, negated."""
    frames = torch.from_numpy(log_probs.astype(np.float64))[:, None]  # (T, 1, V)
    loss = torch.nn.functional.ctc_loss(
        frames, torch.tensor([ids], dtype=torch.long), torch.tensor([len(frames)]), torch.tensor([len(ids)]),
        blank=BLANK, reduction="sum", zero_infinity=False,
    )  # fmt: skip
    return -float(loss)
