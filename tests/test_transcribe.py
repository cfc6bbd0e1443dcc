"""Task transcribe end to end on a few real synthesised words: the spec's rules, CTC training through the ordinary
loop, evaluation beside the most-frequent-transcript baseline, the served transcriber (paths and bytes), and the
gate's paired comparison."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lstmflow.config import validate_pipeline
from lstmflow.data.speech import prepare_speech_features
from lstmflow.errors import ConfigError
from lstmflow.evaluation.comparison import compare
from lstmflow.evaluation.transcription import evaluate_transcriber, utterance_cer
from lstmflow.serving.predictors import BadRequest, Transcriber, write_bundle
from lstmflow.training.fit import fit
from lstmflow.training.loggers import ListLogger

WORDS = ("yes", "no", "up", "down", "left", "right", "stop", "go")
VOICES = ("en-us+m1", "en-us+f1", "en-gb+m2", "en-gb+f2")
#: espeak-ng words per minute, and the part each speed goes to: test and validation at speeds training never heard.
SPEEDS = {130: "train", 160: "train", 190: "train", 145: "test", 175: "val"}
SMALL_TRANSCRIBER = {
    "layers": [
        {"conv1d": {"filters": 32, "kernel_size": 3, "strides": 2, "activation": "relu"}},
        {"lstm": {"units": 48, "return_sequences": True, "bidirectional": True}},
        {"dense": {"activation": "softmax"}},
    ]
}


def speak(root: Path) -> Path:
    """Each word in each voice at each speed, 16 kHz WAV via espeak-ng, and a manifest with the parts."""
    rows = []
    for voice in VOICES:
        for speed, part in SPEEDS.items():
            for word in WORDS:
                path = root / f"{voice}-{speed}-{word}.wav"
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), word], check=True)
                rows.append((path.name, word, part))
    pd.DataFrame(rows, columns=["path", "text", "part"]).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def transcribe_spec(root: Path, **sections: object):
    raw = {
        "task": "transcribe",
        "data": {"kind": "speech", "path": "words/manifest.csv", "split": {"column": "part"}, "workers": 1},
        "model": SMALL_TRANSCRIBER,
        "train": {"epochs": 60, "batch_size": 16, "optimizer": {"lr": 0.005}, "seed": 0},
    }
    raw |= sections
    return validate_pipeline("words", raw, root)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, Path]:
    root = tmp_path_factory.mktemp("transcribe")
    (root / "words").mkdir()
    speak(root / "words")
    spec = transcribe_spec(root)
    prepare_speech_features(spec.data, root / "features", "pipelines.words.data", root / "cache")
    result = fit(spec, root / "features", root / "run", ListLogger(), progress=False)
    return spec, root, Path(result.model_path)


def test_a_transcriber_gets_bidirectional_lstm_layers_and_ctc_by_default(tmp_path: Path) -> None:
    spec = validate_pipeline("s", {"task": "transcribe", "data": {"kind": "speech", "path": "m.csv"}}, tmp_path)
    assert [layer.kind for layer in spec.model.layers] == ["lstm", "lstm", "dense"]
    assert all(layer.lstm.bidirectional for layer in spec.model.layers[:2] if layer.lstm)
    assert spec.loss == "ctc"
    assert (spec.promote.resolved_metric("transcribe"), spec.promote.resolved_test("transcribe")) == ("cer", "sign")
    with pytest.raises(ConfigError, match=re.escape("train.loss for task 'transcribe' must be one of 'ctc'")):
        validate_pipeline(
            "s", {"task": "transcribe", "data": {"kind": "speech", "path": "m.csv"}, "train": {"loss": "mse"}},
            tmp_path,
        )  # fmt: skip


def test_ctc_learns_to_spell_words_said_at_unheard_speeds(trained: tuple[object, Path, Path]) -> None:
    spec, root, model_path = trained
    metrics, files = evaluate_transcriber(spec, root / "features", model_path, root / "plots")
    assert metrics["cer"] < 0.25 and metrics["cer"] < metrics["frequent_cer"] / 3, metrics
    assert metrics["cer"] <= metrics["greedy_cer"] + 0.05  # beam search sums alignments; it rarely loses
    assert {f.name for f in files} == {"transcripts.txt", "cer_by_length.png", "loss_curves.png"}
    assert "truth: " in (root / "plots" / "transcripts.txt").read_text()


def test_the_served_transcriber_reads_paths_and_bytes_and_refuses_bad_rows(
    trained: tuple[object, Path, Path], tmp_path: Path
) -> None:
    spec, root, model_path = trained
    predictor, example = write_bundle(spec.model_dump(mode="json"), root / "features", model_path, tmp_path / "b")
    assert isinstance(predictor, Transcriber) and list(example.columns) == ["path", "audio_base64"]
    assert len(predictor.predict(example)) == 2  # one clip by path, one by bytes
    clip = root / "words" / "en-us+m1-145-left.wav"
    by_path = predictor.predict(pd.DataFrame({"path": [str(clip)]}))
    by_bytes = predictor.predict(pd.DataFrame({"audio_base64": [base64.b64encode(clip.read_bytes()).decode()]}))
    assert by_path["text"].tolist() == by_bytes["text"].tolist()
    assert utterance_cer(by_path["text"].tolist(), ["left"])[0] <= 0.5
    with pytest.raises(BadRequest, match="is not a file this model may read"):
        predictor.predict(pd.DataFrame({"path": ["/etc/hostname"]}))
    with pytest.raises(BadRequest, match="not base64"):
        predictor.predict(pd.DataFrame({"audio_base64": ["%%%"]}))
    with pytest.raises(BadRequest, match="not readable as audio"):
        predictor.predict(pd.DataFrame({"audio_base64": [base64.b64encode(b"not a wav file").decode()]}))
    with pytest.raises(BadRequest, match="needs a 'path' column or a 'audio_base64' one"):
        predictor.predict(pd.DataFrame({"text": ["hello"]}))


def test_the_gate_compares_two_transcribers_clip_by_clip(trained: tuple[object, Path, Path], tmp_path: Path) -> None:
    spec, root, model_path = trained
    good, _ = write_bundle(spec.model_dump(mode="json"), root / "features", model_path, tmp_path / "good")
    two_epochs = transcribe_spec(root, train={"epochs": 2, "batch_size": 16, "seed": 1})
    weak = fit(two_epochs, root / "features", tmp_path / "weak", ListLogger(), progress=False)
    worse, _ = write_bundle(spec.model_dump(mode="json"), root / "features", Path(weak.model_path), tmp_path / "w")
    comparison = compare(spec, root / "features", good, worse)
    assert comparison.metric == "cer" and comparison.direction == "minimize"
    assert comparison.challenger < comparison.champion
    assert comparison.test is not None and comparison.test.name == "sign" and comparison.test.p_value < 0.01
    assert np.isfinite(comparison.test.statistic)


@pytest.mark.slow
def test_run_then_predict_a_clip_from_the_command_line(tmp_path: Path) -> None:
    import sys

    from conftest import make_project

    pipelines = """\
pipelines:
  words:
    task: transcribe
    data: {kind: speech, path: data/words/manifest.csv, split: {column: part}}
    model:
      layers:
        - conv1d: {filters: 32, kernel_size: 3, strides: 2, activation: relu}
        - lstm: {units: 48, return_sequences: true, bidirectional: true}
        - dense: {activation: softmax}
    train: {epochs: 8, batch_size: 16, optimizer: {lr: 0.005}}
"""
    root = make_project(tmp_path / "project", pipelines)
    (root / "data" / "words").mkdir(parents=True)
    speak(root / "data" / "words")
    lstmflow = str(Path(sys.executable).parent / "lstmflow")
    run = subprocess.run([lstmflow, "run", "words"], cwd=root, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cer" in run.stdout and "most frequent" in run.stdout
    clip = root / "data" / "words" / "en-gb+f2-145-down.wav"
    done = subprocess.run(
        [lstmflow, "predict", "words", str(clip)], cwd=root, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert clip.name in done.stdout and "text" in done.stdout  # the clip and its transcript (8 epochs: any text)


def test_two_workers_train_the_transcriber_as_one_process_does(
    trained: tuple[object, Path, Path], tmp_path: Path
) -> None:
    """CTC's frame counts come from the network itself, not through DDP's forward (a second forward per backward
    would break DDP's gradient sync): two gloo workers match one process."""
    import torch

    from lstmflow.training.launch import train_in_child

    _, root, _ = trained
    train = {"epochs": 2, "batch_size": 16, "optimizer": {"lr": 0.005}, "seed": 0, "deterministic": True}
    one_process = transcribe_spec(root, train=train)
    try:
        one = fit(one_process, root / "features", tmp_path / "one", ListLogger(), progress=False)
    finally:
        torch.use_deterministic_algorithms(False)
    two_workers = one_process.model_copy(update={"train": one_process.train.model_copy(update={"workers": 2})})
    two = train_in_child(two_workers, root / "features", tmp_path / "two", ListLogger(), progress=False)
    assert two.workers == 2
    assert [r["val_loss"] for r in two.history] == pytest.approx([r["val_loss"] for r in one.history], rel=1e-4)
