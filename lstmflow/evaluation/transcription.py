"""Scoring a transcriber: character and word error rates (jiwer) of its test transcripts beside a naive baseline.

The naive baseline (``frequent_*``) answers every clip with the training part's most frequent transcript: what a
model that ignores the audio can reach. Transcripts come from CTC prefix beam search (``evaluate.beam_width``) and
from greedy decoding (``greedy_*``); per-utterance character error rates are what the gate's sign test pairs.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lstmflow.config import PipelineSpec
from lstmflow.errors import DataError
from lstmflow.evaluation.plots import plot_error_by_length, plot_loss_curves

if TYPE_CHECKING:
    from lstmflow.data.speech import SpeechFeatures, SpeechSet

#: Test transcripts written to ``transcripts.txt`` beside the plots.
SHOWN_TRANSCRIPTS = 30


def error_rates(written: list[str], truth: list[str]) -> dict[str, float]:
    """Character and word error rates over the whole part (jiwer: edits over reference length) and exact matches."""
    import jiwer

    return {
        "cer": float(jiwer.cer(truth, written)),
        "wer": float(jiwer.wer(truth, written)),
        "exact_match": sum(a == b for a, b in zip(written, truth)) / len(truth),
    }


def utterance_cer(written: list[str], truth: list[str]) -> np.ndarray:
    """Each clip's own character error rate, the per-sample score a paired test compares."""
    import jiwer

    return np.array([jiwer.cer(reference, hypothesis) for hypothesis, reference in zip(written, truth)])


def evaluate_transcriber(
    spec: PipelineSpec, features_dir: Path, model_path: Path, plot_dir: Path
) -> tuple[dict[str, float], list[Path]]:
    """CER, WER and exact matches of the test clips by beam search, by greedy decoding (``greedy_*``) and by the
    most frequent training transcript (``frequent_*``); the loss curves, CER by transcript length and
    ``transcripts.txt``."""
    from lstmflow.data.speech import load_speech
    from lstmflow.models.lstm import build_model
    from lstmflow.serving.transcriber import transcribe_frames

    features = load_speech(features_dir)
    test = features.part("test")
    if len(test) == 0:
        raise DataError(f"pipelines.{spec.name}.data.split.test: the test part of {features_dir} holds no clips")
    where = f"pipelines.{spec.name}.model"
    model = build_model(spec.model, features.n_features, features.n_outputs, where, per_step=True, generates=False)
    model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    clips = _test_frames(test)
    greedy = transcribe_frames(model, features.alphabet, clips, 1)
    width = spec.evaluate.beam_width
    beam = transcribe_frames(model, features.alphabet, clips, width) if width > 1 else greedy
    metrics = error_rates(beam, test.texts)
    metrics |= {f"greedy_{key}": value for key, value in error_rates(greedy, test.texts).items()}
    frequent = [most_frequent_transcript(features)] * len(test)
    metrics |= {f"frequent_{key}": value for key, value in error_rates(frequent, test.texts).items()}
    plot_dir.mkdir(parents=True, exist_ok=True)
    shown = plot_dir / "transcripts.txt"
    rows = list(zip(test.names, test.texts, beam))[:SHOWN_TRANSCRIPTS]
    shown.write_text("\n".join(f"clip:  {n}\ntruth: {t}\nmodel: {w}\n" for n, t, w in rows), encoding="utf-8")
    lengths = np.array([len(text) for text in test.texts])
    plots = [shown, plot_error_by_length(plot_dir / "cer_by_length.png", lengths, utterance_cer(beam, test.texts),
                                         f"{spec.name}: character error rate by transcript length")]  # fmt: skip
    history = model_path.parent / "fit_result.json"
    if history.exists():
        curves = json.loads(history.read_text())["history"]
        plots.append(plot_loss_curves(plot_dir / "loss_curves.png", curves, "CTC loss per character"))
    return metrics, plots


def _test_frames(test: SpeechSet) -> list[torch.Tensor]:
    """The part's clips as scaled (T, F) frames, in the part's order."""
    clips: list[torch.Tensor] = [torch.empty(0)] * len(test)
    for batch in test.batches(64):
        for slot, position in enumerate(batch.positions.tolist()):
            clips[position] = batch.features[slot, : int(batch.lengths[slot])]
    return clips


def most_frequent_transcript(features: SpeechFeatures) -> str:
    """The training part's most frequent transcript (the first in order among ties)."""
    return Counter(features.part("train").texts).most_common(1)[0][0]
