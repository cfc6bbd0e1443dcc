"""Scoring a translator: BLEU and chrF (sacrebleu) of its test translations beside two baselines.

- ``copy_*``: the source text as its own translation, the naive baseline (it scores where the languages share
  names, numbers and punctuation);
- ``baseline_*``: word by word with a dictionary learned from the training pairs, the classical baseline (each
  source word becomes the target word that co-occurs with it most strongly, by the Dice coefficient; unknown words
  are copied).

BLEU and chrF are sacrebleu's corpus scores (0-100) on the detokenized texts, so the figures compare with published
ones; per-sentence chrF is what the gate's sign test pairs.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from lstmflow.config import PipelineSpec
from lstmflow.errors import DataError
from lstmflow.evaluation.baselines import Baseline, run_baseline
from lstmflow.evaluation.plots import plot_attention, plot_loss_curves

if TYPE_CHECKING:
    from lstmflow.config import PairsSpec
    from lstmflow.data.pairs import PairFeatures, PairSet
    from lstmflow.models.seq2seq import Seq2Seq

#: Test translations written to ``translations.txt`` beside the plots, and sentences in the attention heat-map.
SHOWN_TRANSLATIONS = 30
ATTENTION_SENTENCES = 4


def translation_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, 0-100) and the share of exact translations."""
    import sacrebleu

    exact = sum(ours == theirs for ours, theirs in zip(hypotheses, references)) / len(references)
    return {
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        "exact_match": exact,
    }


def sentence_chrf(hypotheses: list[str], references: list[str]) -> np.ndarray:
    """Each translation's own chrF (sacrebleu), the per-sample scores a paired test compares."""
    import sacrebleu

    return np.array([sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(hypotheses, references)])


def evaluate_translator(
    spec: PipelineSpec, features_dir: Path, model_path: Path, plot_dir: Path
) -> tuple[dict[str, float], list[Path]]:
    """BLEU, chrF and exact matches of the beam-search translations of the test part, greedy decoding's
    (``greedy_*``), the copy baseline's (``copy_*``) and the dictionary baseline's (``baseline_*``); the loss
    curves, an attention heat-map and ``translations.txt``."""
    from lstmflow.data.pairs import load_pairs, target_text
    from lstmflow.models.seq2seq import Seq2Seq
    from lstmflow.serving.translator import translate_ids

    features = load_pairs(features_dir)
    test = features.part("test")
    if len(test) == 0:
        raise DataError(f"pipelines.{spec.name}.data.split.test: the test part of {features_dir} holds no pairs")
    model = Seq2Seq(spec.model, features.source_vocab, features.target_vocab, f"pipelines.{spec.name}.model")
    model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    model.eval()
    sources, max_steps = [ids.tolist() for ids in test.sources], cast("PairsSpec", spec.data).max_length + 1
    bos, eos, references = features.bos_id, features.eos_id, test.target_texts

    def written(width: int) -> list[str]:
        outputs = translate_ids(model, sources, bos, eos, max_steps, width)
        return [target_text(features.target_tokenizer, ids) for ids in outputs]

    greedy = written(1)
    beam = written(spec.evaluate.beam_width) if spec.evaluate.beam_width > 1 else greedy
    metrics = translation_scores(beam, references)
    metrics |= {f"greedy_{k}": v for k, v in translation_scores(greedy, references).items()}
    metrics |= {f"copy_{k}": v for k, v in translation_scores(test.source_texts, references).items()}
    plot_dir.mkdir(parents=True, exist_ok=True)
    dictionary = run_baseline(
        "word-by-word dictionary", lambda: dictionary_baseline(features, test, references), plot_dir
    )
    metrics |= {} if dictionary is None else dictionary.prefixed()
    shown = plot_dir / "translations.txt"
    shown.write_text(_translations_text(test, beam), encoding="utf-8")
    plots = [shown, *_attention_map(model, features, test, plot_dir, spec.name)]
    history = model_path.parent / "fit_result.json"
    if history.exists():
        curves = json.loads(history.read_text())["history"]
        plots.append(plot_loss_curves(plot_dir / "loss_curves.png", curves, "cross-entropy per token (nats)"))
    return metrics, plots


def _translations_text(test: PairSet, written: list[str]) -> str:
    rows = zip(test.source_texts, test.target_texts, written)
    blocks = [f"source:    {s}\nreference: {r}\nmodel:     {w}\n" for s, r, w in list(rows)[:SHOWN_TRANSLATIONS]]
    return "\n".join(blocks)


def _attention_map(model: Seq2Seq, features: PairFeatures, test: PairSet, plot_dir: Path, name: str) -> list[Path]:
    """The decoder's attention over the source for the first few test sentences (greedy decoding), when it has
    attention."""
    if model.attention is None:
        return []
    sentences = []
    for ids in test.sources[:ATTENTION_SENTENCES]:
        source = torch.as_tensor(ids, dtype=torch.long)[None]  # (1, S)
        outputs, _, maps = model.greedy(source, torch.tensor([len(ids)]), features.bos_id, features.eos_id, 200)
        source_pieces = [features.source_tokenizer.decode([int(i)]) for i in ids]
        target_pieces = [features.target_tokenizer.decode([i]) for i in outputs[0]] + ["</s>"]
        sentences.append((source_pieces, target_pieces, maps[0].numpy()))
    return [plot_attention(plot_dir / "attention.png", sentences, f"{name}: attention on test sentences")]


def dictionary_baseline(features: PairFeatures, test: PairSet, references: list[str]) -> Baseline:
    """Translate each test source word by word with :func:`word_dictionary` fitted on the training pairs."""
    from lstmflow.data.text import Tokenizer, join_words

    train = features.part("train")
    words = Tokenizer("word", lowercase=False, tokens=[])  # cuts texts into words and punctuation, case kept
    dictionary = word_dictionary(
        (words.pieces(s), words.pieces(t)) for s, t in zip(train.source_texts, train.target_texts)
    )
    written = [join_words([dictionary.get(word, word) for word in words.pieces(text)]) for text in test.source_texts]
    return Baseline("word-by-word dictionary (Dice)", translation_scores(written, references), details={
        "entries": len(dictionary)})  # fmt: skip


def word_dictionary(pairs: Iterable[tuple[list[str], list[str]]]) -> dict[str, str]:
    """Each source word's most associated target word by the Dice coefficient of the sentences they occur in,
    2·c(s, t) / (c(s) + c(t)) (ties: the more frequent target word, then the first in order).

    Written out because no installed library offers word alignment; Dice is the classic association score for it
    (Smadja et al. 1996) and needs one pass over the pairs.
    """
    source_count: Counter[str] = Counter()
    target_count: Counter[str] = Counter()
    together: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for source, target in pairs:
        source_set, target_set = set(source), set(target)
        source_count.update(source_set)
        target_count.update(target_set)
        for word in source_set:
            together[word].update(target_set)
    return {
        word: max(
            counts,
            key=lambda t: (2 * counts[t] / (source_count[word] + target_count[t]), target_count[t], t),
        )
        for word, counts in together.items()
    }
