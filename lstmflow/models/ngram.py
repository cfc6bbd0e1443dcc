"""An interpolated Kneser-Ney n-gram over token ids: a language model's strong baseline, and its partner when served.

On a corpus of a few hundred thousand characters a character n-gram is hard to beat, and an LSTM and the n-gram
err on different tokens, so their interpolation is better than either. Written here with numpy because no
well-kept library estimates one fast enough to run inside every run: NLTK's ``KneserNeyInterpolated`` scores a
token at a time in Python (minutes on a corpus of a few MB), and KenLM's wheel queries models but cannot estimate
them (its ``lmplz`` is a separate C++ build). Counting packed n-gram keys with ``np.unique`` takes seconds.

The model is Chen & Goodman's interpolated Kneser-Ney: the highest order counts n-grams, each lower order counts
the distinct tokens seen before an n-gram (its continuations), one absolute discount per order estimated from the
counts of counts, D = n1 / (n1 + 2·n2), and a uniform distribution at the bottom, so no token is impossible. An
n-gram's key packs its tokens in base V, the oldest token the most significant digit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The file beside the network's weights (and in the served bundle) holding the n-gram and the network's weight.
NGRAM_PARTNER_FILE = "ngram_partner.npz"
#: The orders tried, the best on the validation part kept (fewer when a large vocabulary leaves no room to pack
#: longer n-grams into 62 bits).
ORDERS = range(2, 9)
#: The network's weights tried when it is interpolated with the n-gram, from 0 (the n-gram alone) to 1.
WEIGHTS = np.linspace(0.0, 1.0, 21)
#: Discount of an order whose counts of counts say nothing (no n-gram seen once).
FALLBACK_DISCOUNT = 0.5


@dataclass(frozen=True)
class _Level:
    """One order's counts: n-gram keys (context · V + token), sorted, their counts, and per context the sum of the
    counts and the number of distinct tokens that follow it."""

    keys: np.ndarray
    counts: np.ndarray
    contexts: np.ndarray
    totals: np.ndarray
    types: np.ndarray
    discount: float

    @classmethod
    def of(cls, keys: np.ndarray, counts: np.ndarray, vocab_size: int) -> _Level:
        """The level of sorted, unique ``keys`` and their counts."""
        contexts, first, types = np.unique(keys // vocab_size, return_index=True, return_counts=True)
        totals = np.add.reduceat(counts, first) if len(counts) else counts
        ones, twos = int(np.sum(counts == 1)), int(np.sum(counts == 2))
        discount = min(ones / (ones + 2 * twos), 0.95) if ones else FALLBACK_DISCOUNT
        return cls(keys, counts.astype(np.float64), contexts, totals.astype(np.float64), types, discount)

    def interpolate(self, contexts: np.ndarray, tokens: np.ndarray, lower: np.ndarray, vocab_size: int) -> np.ndarray:
        """P(token | context) at this order, interpolated with ``lower`` (the order below's); ``lower`` itself
        where the context was never seen."""
        if len(self.contexts) == 0:
            return lower
        at = np.minimum(np.searchsorted(self.contexts, contexts), len(self.contexts) - 1)
        seen = self.contexts[at] == contexts
        total = np.where(seen, self.totals[at], 1.0)
        keys = contexts * vocab_size + tokens
        where = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        count = np.where(self.keys[where] == keys, self.counts[where], 0.0)
        kept = np.maximum(count - self.discount, 0.0) / total
        return np.where(seen, kept + self.discount * self.types[at] / total * lower, lower)


def _contexts(streams: np.ndarray, longest: int, vocab_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per context length m = 0..``longest``: (packed keys of the m tokens before each position of ``streams``
    (rows, L), whether the row holds that many before it)."""
    keys = np.zeros(streams.shape, dtype=np.int64)
    positions = np.arange(streams.shape[1])
    out = [(keys.copy(), np.ones(streams.shape, dtype=bool))]
    for m in range(1, longest + 1):
        keys[:, m:] += streams[:, :-m].astype(np.int64) * vocab_size ** (m - 1)
        out.append((keys.copy(), np.broadcast_to(positions >= m, streams.shape)))
    return out


def _count(ids: np.ndarray, top: int, vocab_size: int) -> tuple[list[_Level], list[_Level]]:
    """Per order 1..``top``, the n-grams' counts in ``ids``; per order 1..``top`` − 1, their continuation counts
    (how many distinct tokens came before each n-gram)."""
    history = _contexts(ids[None, :], top - 1, vocab_size)
    counted = [
        np.unique((history[n - 1][0][0] * vocab_size + ids)[n - 1 :], return_counts=True) for n in range(1, top + 1)
    ]
    raw = [_Level.of(keys, counts, vocab_size) for keys, counts in counted]
    continuation = [
        _Level.of(*np.unique(counted[n][0] % vocab_size**n, return_counts=True), vocab_size) for n in range(1, top)
    ]
    return raw, continuation


def longest_order(vocab_size: int) -> int:
    """The longest n-gram whose key packs into 62 bits in base ``vocab_size``."""
    return max(1, int(62 // math.log2(max(vocab_size, 2))))


class KneserNey:
    """An interpolated Kneser-Ney model of ``len(levels)`` orders: continuation counts below, n-gram counts on top."""

    def __init__(self, levels: list[_Level], vocab_size: int) -> None:
        self.levels = levels
        self.vocab_size = vocab_size

    @property
    def order(self) -> int:
        return len(self.levels)

    @classmethod
    def fit(cls, train_ids: np.ndarray, vocab_size: int, val_streams: np.ndarray, orders: range = ORDERS) -> KneserNey:
        """The model of the training ids whose order (in ``orders``) scores best on ``val_streams`` (rows, L)."""
        ids = np.asarray(train_ids, dtype=np.int64)
        top = max(min(orders.stop - 1, longest_order(vocab_size), len(ids)), 2)
        lowest = min(max(orders.start, 2), top)
        raw, continuation = _count(ids, top, vocab_size)
        scores = {}
        lower = np.full(val_streams[:, 1:].shape, 1.0 / vocab_size)
        queries = _contexts(np.asarray(val_streams), top - 1, vocab_size)
        tokens = np.asarray(val_streams, dtype=np.int64)[:, 1:]
        for n in range(1, top + 1):
            contexts, valid = (array[:, 1:] for array in queries[n - 1])
            if n >= lowest:
                scored = raw[n - 1].interpolate(contexts, tokens, lower, vocab_size)
                scores[n] = -np.mean(np.log(np.where(valid, scored, lower)))
            if n < top:
                lower = np.where(valid, continuation[n - 1].interpolate(contexts, tokens, lower, vocab_size), lower)
        best = min(scores, key=lambda n: scores[n])
        return cls([*continuation[: best - 1], raw[best - 1]], vocab_size)

    def target_probabilities(self, streams: np.ndarray) -> np.ndarray:
        """(rows, L - 1): the probability of each token of ``streams`` (rows, L) but each row's first, given the
        tokens before it in its row (as a language model reads the rows)."""
        streams = np.asarray(streams, dtype=np.int64)
        queries = _contexts(streams, self.order - 1, self.vocab_size)
        tokens = streams[:, 1:]
        p = np.full(tokens.shape, 1.0 / self.vocab_size)
        for level, (contexts, valid) in zip(self.levels, queries):
            p = np.where(valid[:, 1:], level.interpolate(contexts[:, 1:], tokens, p, self.vocab_size), p)
        return p

    def next_probabilities(self, history: Sequence[int]) -> np.ndarray:
        """(V,): the distribution of the token after ``history`` (at least one token; its last ``order - 1``
        count): every token scored after them, one row each."""
        recent = list(history)[-(self.order - 1) :]
        if not recent:
            raise ValueError("the next token's distribution needs at least one token of history")
        rows = np.empty((self.vocab_size, len(recent) + 1), dtype=np.int64)
        rows[:, :-1] = recent
        rows[:, -1] = np.arange(self.vocab_size)
        return self.target_probabilities(rows)[:, -1]


@dataclass(frozen=True)
class NgramFit:
    """A language model's n-gram baseline: the fitted model and its probabilities of the validation and test tokens
    (as :meth:`KneserNey.target_probabilities` gives them), which choose and score its mixture with the network."""

    model: KneserNey
    val: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class NgramPartner:
    """What serving needs to interpolate: the n-gram and the network's weight."""

    model: KneserNey
    weight: float

    def next_probabilities(self, network: np.ndarray, history: Sequence[int]) -> np.ndarray:
        """(V,): the mixture of the network's next-token distribution with the n-gram's after ``history``."""
        return mixed(network, self.model.next_probabilities(history), self.weight)

    def target_probabilities(self, network: np.ndarray, streams: np.ndarray) -> np.ndarray:
        """(rows, L - 1): the mixture's probability of each token of ``streams`` but each row's first, given the
        network's (``network``, same shape)."""
        return mixed(network, self.model.target_probabilities(streams), self.weight)

    def save(self, folder: Path) -> Path:
        """Keys and counts of every level and the weight in one ``.npz``; the rest is derived again on load."""
        levels = self.model.levels
        arrays: dict[str, Any] = {"vocab_size": self.model.vocab_size, "weight": self.weight, "order": len(levels)}
        arrays |= {f"keys{n}": level.keys for n, level in enumerate(levels)}
        arrays |= {f"counts{n}": level.counts.astype(np.int64) for n, level in enumerate(levels)}
        path = Path(folder) / NGRAM_PARTNER_FILE
        np.savez_compressed(path, **arrays)
        return path


def load_ngram_partner(folder: Path) -> NgramPartner | None:
    """The partner saved in ``folder``, or None when the language model is served alone."""
    path = Path(folder) / NGRAM_PARTNER_FILE
    if not path.is_file():
        return None
    with np.load(path) as saved:
        vocab_size = int(saved["vocab_size"])
        levels = [_Level.of(saved[f"keys{n}"], saved[f"counts{n}"], vocab_size) for n in range(int(saved["order"]))]
        return NgramPartner(KneserNey(levels, vocab_size), float(saved["weight"]))


def mixed(network: np.ndarray, ngram: np.ndarray, weight: float) -> np.ndarray:
    """``weight`` · the network's probabilities + (1 − ``weight``) · the n-gram's: linear interpolation, the usual
    way to combine language models (each token keeps the larger of the two chances, scaled)."""
    return weight * network + (1.0 - weight) * ngram


def choose_weight(network: np.ndarray, ngram: np.ndarray) -> float:
    """The network's weight in :data:`WEIGHTS` whose mixture gives the validation tokens (their probabilities
    under each model) the lowest cross-entropy."""
    return float(min(WEIGHTS, key=lambda weight: -np.mean(np.log(mixed(network, ngram, weight)))))
