"""CTC decoding: greedy merges repeats and drops blanks; prefix beam search sums alignments, so it finds the likelier
label sequence where greedy's single best path misleads, and never scores below greedy decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lstmflow.models.ctc import greedy_ctc, output_ids, prefix_beam_search, sequence_log_prob


def test_greedy_merges_repeats_and_drops_blanks() -> None:
    assert greedy_ctc([0, 3, 3, 0, 3, 5, 5, 0]) == [3, 3, 5]
    assert greedy_ctc([0, 0]) == []
    scores = torch.tensor([[[0.0, 5, 0], [0, 5, 0], [0, 0, 5], [9, 0, 0]]])  # (1, 4, 3): a, a, b, blank
    assert output_ids(scores, torch.tensor([3])) == [[1, 2]]
    assert output_ids(scores, torch.tensor([2])) == [[1]]  # only the valid frames count


def test_beam_search_sums_the_alignments_greedy_cannot_see() -> None:
    frames = np.log(np.array([[0.6, 0.4], [0.6, 0.4]]))  # blank 0.6, "a" 0.4 at both frames
    assert greedy_ctc(frames.argmax(axis=1).tolist()) == []  # the best path: blank, blank (0.36)
    ids, score = prefix_beam_search(frames, width=4)
    assert ids == [1]  # "a" by aa, a_, _a: 0.16 + 0.24 + 0.24 = 0.64
    assert score == pytest.approx(math.log(0.64))
    assert sequence_log_prob(frames, []) == pytest.approx(math.log(0.36))


@pytest.mark.parametrize("seed", range(5))
def test_beam_search_never_scores_below_greedy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    log_probs = torch.log_softmax(torch.from_numpy(rng.normal(size=(40, 6)) * 2), dim=-1).numpy()
    greedy = greedy_ctc(log_probs.argmax(axis=1).tolist())
    ids, score = prefix_beam_search(log_probs, width=4)
    assert score == pytest.approx(sequence_log_prob(log_probs, ids))
    assert score >= sequence_log_prob(log_probs, greedy) - 1e-9
    with pytest.raises(ValueError, match="width must be >= 1"):
        prefix_beam_search(log_probs, width=0)
