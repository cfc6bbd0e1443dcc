"""Fit time and encode throughput of the three text tokenizers (word, char, bpe) on a generated corpus.

Builds a deterministic corpus (seed 0, no downloads) of documents of 1-8 sentences made of pseudo-words drawn
with a Zipf-like frequency (rank^-1.1), mixed case (capitalised sentence starts, some Capitalised and UPPER words,
a few accented letters), numbers and punctuation. For each tokenizer kind it measures, best of 3, fitting on the
whole corpus with :func:`fit_tokenizer` and encoding every document with ``Tokenizer.encode`` one text at a time,
as the data stage does. MB is 10^6 bytes of UTF-8.

    python benchmarks/tokenization.py [--mb 10] [--words 20000] [--repeats 3]

``--words`` defaults to 20,000 distinct pseudo-words (not a few hundred) so that bpe has enough distinct words to
fill its 8,000-token vocabulary rather than stopping once every word is one token. The ``tokenizers`` library
trains and encodes with Rayon threads (``RAYON_NUM_THREADS``), which ``OMP_NUM_THREADS`` does not limit.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from typing import TypeVar

import numpy as np

from lstmflow.config import TokenizerSpec
from lstmflow.data.text import fit_tokenizer

#: The kinds measured and the spec each is fitted with (bpe's vocabulary as the task asks; others the defaults).
SPECS = {
    "word": TokenizerSpec(kind="word"),
    "char": TokenizerSpec(kind="char"),
    "bpe": TokenizerSpec(kind="bpe", vocab_size=8000),
}
ONSETS = [
    "",
    "b",
    "c",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "w",
    "z",
    "br",
    "ch",
    "st",
    "tr",
    "pl",
    "gr",
    "sh",
    "th",
]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ee", "é", "ä"]
CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "ck", "nd", "st"]
Result = TypeVar("Result")


def pseudo_words(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct pronounceable words of 1-4 syllables; the list order is the frequency rank."""
    words: dict[str, None] = {}
    while len(words) < count:
        syllables = rng.choices([1, 2, 3, 4], weights=[3, 4, 2, 1])[0]
        word = "".join(
            rng.choice(ONSETS) + rng.choices(VOWELS, weights=[8, 8, 6, 6, 4, 2, 2, 2, 1, 1])[0] + rng.choice(CODAS)
            for _ in range(syllables)
        )
        words.setdefault(word)
    return sorted(words, key=len)  # short words are the frequent ones, as in natural languages


def zipf_ranks(vocabulary: int, nprng: np.random.Generator) -> Iterator[int]:
    """An endless stream of word ranks with P(rank r) ∝ r^-1.1, drawn in bulk: one numpy call per word is slow."""
    weights = 1.0 / np.arange(1, vocabulary + 1) ** 1.1
    cumulative = np.cumsum(weights / weights.sum())
    while True:
        yield from np.searchsorted(cumulative, nprng.random(1 << 16), side="right").clip(max=vocabulary - 1).tolist()


def build_corpus(megabytes: float, vocabulary: int, seed: int = 0) -> list[str]:
    """Documents totalling at least ``megabytes`` MB of UTF-8; the same arguments always give the same corpus."""
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    words = pseudo_words(vocabulary, rng)
    ranks = zipf_ranks(vocabulary, nprng)
    target = int(megabytes * 1e6)
    documents: list[str] = []
    size = 0
    while size < target:
        sentences = []
        for _ in range(rng.randint(1, 8)):
            tokens = [words[next(ranks)] for _ in range(rng.randint(4, 24))]
            for i in range(1, len(tokens)):
                roll = rng.random()
                if roll < 0.05:
                    tokens[i] = tokens[i].capitalize()
                elif roll < 0.06:
                    tokens[i] = tokens[i].upper()
                elif roll < 0.08:
                    tokens[i] = str(rng.randint(0, 2030))
                if rng.random() < 0.08:
                    tokens[i - 1] += rng.choice([",", ",", ";", ":"])
            tokens[0] = tokens[0].capitalize()
            if rng.random() < 0.05:
                quoted = rng.randrange(len(tokens))
                tokens[quoted] = f'"{tokens[quoted]}"'
            sentences.append(" ".join(tokens) + rng.choice([".", ".", ".", ".", "!", "?", "..."]))
        document = " ".join(sentences)
        documents.append(document)
        size += len(document.encode("utf-8"))
    return documents


def best_seconds(work: Callable[[], Result], repeats: int) -> tuple[float, Result]:
    """The fastest of ``repeats`` runs (at least one) and the last result (the work is deterministic)."""
    seconds = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        result = work()
        seconds.append(time.perf_counter() - start)
    return min(seconds), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=10.0, help="corpus size in MB of UTF-8 (default 10)")
    parser.add_argument("--words", type=int, default=20000, help="distinct pseudo-words (default 20000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measure; the best is kept (default 3)")
    args = parser.parse_args()

    start = time.perf_counter()
    documents = build_corpus(args.mb, args.words)
    built = time.perf_counter() - start
    megabytes = sum(len(document.encode("utf-8")) for document in documents) / 1e6

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}; "
        f"tokenizers {version('tokenizers')}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}"
    )
    print(
        f"corpus: {megabytes:.2f} MB, {len(documents):,} documents, {args.words:,} distinct pseudo-words "
        f"(built in {built:.1f} s); best of {args.repeats}"
    )
    print(f"\n{'kind':<6}{'vocab':>8}{'fit s':>9}{'encode s':>10}{'encode MB/s':>13}{'tokens':>13}{'tokens/s':>13}")
    for kind, spec in SPECS.items():
        fit_s, tokenizer = best_seconds(lambda spec=spec: fit_tokenizer(spec, documents), args.repeats)
        encode_s, encoded = best_seconds(
            lambda tokenizer=tokenizer: [tokenizer.encode(document) for document in documents], args.repeats
        )
        tokens = sum(len(ids) for ids in encoded)
        print(
            f"{kind:<6}{tokenizer.vocab_size:>8,}{fit_s:>9.2f}{encode_s:>10.2f}{megabytes / encode_s:>13.2f}"
            f"{tokens:>13,}{tokens / encode_s:>13,.0f}"
        )


if __name__ == "__main__":
    main()
