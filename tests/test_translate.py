"""Task translate end to end on tiny real data: the spec's rules, training through the ordinary loop, evaluation
beside the copy and dictionary baselines, the served translator, and the gate's paired comparison."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_project

from lstmflow.config import validate_pipeline
from lstmflow.data.pairs import prepare_pairs_features
from lstmflow.errors import ConfigError
from lstmflow.evaluation.comparison import compare
from lstmflow.evaluation.significance import sign_test
from lstmflow.evaluation.translation import evaluate_translator, word_dictionary
from lstmflow.serving.predictors import BadRequest, Translator, write_bundle
from lstmflow.training.fit import fit
from lstmflow.training.loggers import ListLogger

SMALL_TRANSLATOR = {
    "layers": [{"embedding": {"dim": 16}}, {"lstm": {"units": 48, "return_sequences": True}}],
    "decoder": [
        {"embedding": {"dim": 16}},
        {"lstm": {"units": 48, "return_sequences": True}},
        {"attention": {"score": "luong"}},
        {"dense": {"activation": "softmax"}},
    ],
}


def write_reversals(path: Path, pairs: int = 500, seed: int = 0) -> Path:
    """Source: a 'word' of 3-7 letters from a-f; target: the same letters reversed. Order matters, words recur
    rarely, so neither copying nor a word dictionary can do it."""
    rng = random.Random(seed)
    rows = ["source,target"]
    for _ in range(pairs):
        word = "".join(rng.choice("abcdef") for _ in range(rng.randint(3, 7)))
        rows.append(f"{word},{word[::-1]}")
    path.write_text("\n".join(rows) + "\n")
    return path


def translate_spec(root: Path, **sections: object):
    raw = {
        "task": "translate",
        "data": {"kind": "pairs", "path": "reversals.csv", "max_length": 10},
        "model": SMALL_TRANSLATOR,
        "train": {"epochs": 30, "batch_size": 32, "optimizer": {"lr": 0.01}, "seed": 0, "budget": {"seconds": None}},
    }
    raw |= sections
    return validate_pipeline("rev", raw, root)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, Path]:
    root = tmp_path_factory.mktemp("translate")
    write_reversals(root / "reversals.csv")
    spec = translate_spec(root)
    prepare_pairs_features(spec.data, root / "features", "pipelines.rev.data")
    result = fit(spec, root / "features", root / "run", ListLogger())
    return spec, root, Path(result.model_path)


# ------------------------------------------------------------------------------------------------ the spec


def test_a_translator_gets_an_encoder_and_an_attending_decoder_by_default(tmp_path: Path) -> None:
    spec = validate_pipeline("t", {"task": "translate", "data": {"kind": "pairs", "path": "p.csv"}}, tmp_path)
    assert [layer.kind for layer in spec.model.layers] == ["embedding", "lstm"]
    assert [layer.kind for layer in spec.model.decoder or []] == ["embedding", "lstm", "attention", "dense"]
    assert spec.promote.resolved_metric("translate") == "chrf"
    assert spec.promote.resolved_test("translate") == "sign"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"task": "translate", "model": {"layers": [{"embedding": {"dim": 4}}, {"lstm": {"units": 4}}]}},
         "model.decoder: task translate needs a decoder"),
        ({"task": "translate", "train": {"ensemble": 3}}, "train.ensemble: a translate model is one network, got 3"),
        ({"task": "translate", "promote": {"test": "mcnemar"}}, "test 'mcnemar' does not fit task 'translate'"),
        ({"task": "classify", "data": {"kind": "text", "path": "t.csv"},
          "model": {"layers": [{"lstm": {"units": 4}}, {"dense": {}}], "decoder": [{"dense": {}}]}},
         "model.decoder: only task 'translate' has a decoder; task 'classify' has none"),
        ({"task": "classify", "data": {"kind": "text", "path": "t.csv"},
          "model": {"layers": [{"embedding": {"dim": 4}}, {"attention": {}}, {"dense": {}}]}},
         "model.layers[1].attention: encoder–decoder attention belongs in model.decoder"),
    ],
)  # fmt: skip
def test_decoders_belong_to_translators(tmp_path: Path, raw: dict, message: str) -> None:
    raw = {"data": {"kind": "pairs", "path": "p.csv"}, **raw}
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_pipeline("t", raw, tmp_path)


def test_the_summary_counts_both_sides_as_keras_does() -> None:
    from lstmflow.config import ModelSpec
    from lstmflow.models.lstm import summary
    from lstmflow.models.seq2seq import Seq2Seq

    table = summary(Seq2Seq(ModelSpec.model_validate(SMALL_TRANSLATOR), 10, 14), 10)
    rows = {line.split()[0]: line.split()[2:] for line in table.splitlines() if line.startswith(" ")}
    keras_lstm = 4 * (48 * (16 + 48) + 48)  # Keras: 4 gates × (kernel + recurrent kernel + one bias)
    for side in ("encoder", "decoder"):
        assert rows[f"{side}_lstm"] == ["(None,", "None,", "48)", f"{keras_lstm + 4 * 48:,}", f"{keras_lstm:,}"]
    assert rows["decoder_dense"][:3] == ["(None,", "None,", "14)"]  # the 14 target tokens' scores
    assert "decoder_attention" in rows


# ------------------------------------------------------------------------------------- training, evaluation


def test_the_translator_learns_what_neither_baseline_can(trained: tuple[object, Path, Path]) -> None:
    spec, root, model_path = trained
    metrics, files = evaluate_translator(spec, root / "features", model_path, root / "plots")
    assert metrics["exact_match"] > 0.8, metrics
    assert metrics["chrf"] > metrics["copy_chrf"] + 20 and metrics["chrf"] > metrics["baseline_chrf"] + 20, metrics
    assert metrics["chrf"] >= metrics["greedy_chrf"] - 1.0  # beam search keeps greedy's translation as a candidate
    assert {f.name for f in files} == {"translations.txt", "attention.png", "loss_curves.png"}
    first = (root / "plots" / "translations.txt").read_text().split("\n\n")[0]
    assert first.startswith("source:") and "reference:" in first and "model:" in first


def test_the_dictionary_baseline_maps_words_by_co_occurrence() -> None:
    pairs = [(["the", "cat"], ["le", "chat"]), (["the", "dog"], ["le", "chien"]), (["a", "cat"], ["un", "chat"])]
    assert word_dictionary(pairs) == {"the": "le", "cat": "chat", "dog": "chien", "a": "un"}


def test_the_sign_test_counts_wins_and_leaves_ties_out() -> None:
    better = sign_test(np.array([60.0, 70, 80, 90, 50, 50, 55, 65, 75, 85]), np.full(10, 50.0))
    assert better.statistic == 8 and better.p_value == pytest.approx(0.5**8)
    assert "tied on 2" in better.detail
    assert sign_test(np.full(5, 50.0), np.full(5, 50.0)).p_value == 1.0


# ------------------------------------------------------------------------------------------ serving, the gate


def test_the_served_translator_translates_raw_text_and_refuses_bad_rows(
    trained: tuple[object, Path, Path], tmp_path: Path
) -> None:
    spec, root, model_path = trained
    predictor, example = write_bundle(spec.model_dump(mode="json"), root / "features", model_path, tmp_path / "b")
    assert isinstance(predictor, Translator) and list(example.columns) == ["text"]
    answer = predictor.predict(pd.DataFrame({"text": ["abcde", "fedca"]}))
    assert answer["translation"].tolist() == ["edcba", "acdef"]
    with pytest.raises(BadRequest, match=r"row 1: 11 source tokens, above the model's limit of 10"):
        predictor.predict(pd.DataFrame({"text": ["abc", "a" * 11]}))
    with pytest.raises(BadRequest, match="holds no token"):
        predictor.predict(pd.DataFrame({"text": [""]}))
    with pytest.raises(BadRequest, match="is not text"):
        predictor.predict(pd.DataFrame({"text": [3.5]}))


def test_the_gate_compares_two_translators_sentence_by_sentence(
    trained: tuple[object, Path, Path], tmp_path: Path
) -> None:
    spec, root, model_path = trained
    good, _ = write_bundle(spec.model_dump(mode="json"), root / "features", model_path, tmp_path / "good")
    one_epoch = translate_spec(root, train={"epochs": 1, "seed": 1, "budget": {"seconds": None}})
    weak = fit(one_epoch, root / "features", tmp_path / "one_epoch", ListLogger())
    worse, _ = write_bundle(spec.model_dump(mode="json"), root / "features", Path(weak.model_path), tmp_path / "weak")
    comparison = compare(spec, root / "features", good, worse)
    assert comparison.metric == "chrf" and comparison.challenger > comparison.champion + 20
    assert comparison.test is not None and comparison.test.name == "sign" and comparison.test.p_value < 0.001
    backwards = compare(spec, root / "features", worse, good)
    assert backwards.test is not None and backwards.test.p_value > 0.99


@pytest.mark.slow
def test_run_then_predict_from_the_command_line(tmp_path: Path) -> None:
    pipelines = """\
pipelines:
  rev:
    task: translate
    data: {kind: pairs, path: data/reversals.csv, max_length: 10}
    model:
      layers:
        - embedding: {dim: 16}
        - lstm: {units: 48, return_sequences: true}
      decoder:
        - embedding: {dim: 16}
        - lstm: {units: 48, return_sequences: true}
        - attention: {}
        - dense: {activation: softmax}
    train: {epochs: 30, batch_size: 32, optimizer: {lr: 0.01}}
"""
    root = make_project(tmp_path / "project", pipelines)
    write_reversals(root / "data" / "reversals.csv")
    lstmflow = str(Path(sys.executable).parent / "lstmflow")
    run = subprocess.run([lstmflow, "run", "rev"], cwd=root, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "chrf" in run.stdout and "copy" in run.stdout
    metrics = json.loads(next((root / "runs").rglob("metrics.json")).read_text())
    assert metrics["chrf"] > metrics["copy_chrf"]
    done = subprocess.run(
        [lstmflow, "predict", "rev", "abcde"], cwd=root, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "edcba" in done.stdout


def test_two_workers_train_the_translator_as_one_process_does(tmp_path: Path) -> None:
    from lstmflow.training.launch import train_in_child

    write_reversals(tmp_path / "reversals.csv", pairs=200)
    train = {"epochs": 2, "batch_size": 16, "optimizer": {"lr": 0.01}, "seed": 0, "deterministic": True}
    spec = translate_spec(tmp_path, train=train)
    prepare_pairs_features(spec.data, tmp_path / "features", "pipelines.rev.data")
    try:
        one = fit(spec, tmp_path / "features", tmp_path / "one", ListLogger(), progress=False)
    finally:
        torch.use_deterministic_algorithms(False)
    two_workers = spec.model_copy(update={"train": spec.train.model_copy(update={"workers": 2})})
    two = train_in_child(two_workers, tmp_path / "features", tmp_path / "two", ListLogger(), progress=False)
    assert two.workers == 2
    assert [r["val_loss"] for r in two.history] == pytest.approx([r["val_loss"] for r in one.history], rel=1e-4)


def test_a_translator_cut_mid_epoch_resumes_to_the_uninterrupted_model(tmp_path: Path) -> None:
    from conftest import FailingAt, load_state, without_timing

    write_reversals(tmp_path / "reversals.csv", pairs=150)
    train = {"epochs": 3, "batch_size": 16, "optimizer": {"lr": 0.01}, "seed": 0, "checkpoint_every": 3}
    # dropout draws from the RNG: the resumed run must continue its stream too
    encoder = [
        {"embedding": {"dim": 16, "dropout": 0.1}},
        {"lstm": {"units": 48, "return_sequences": True, "dropout": 0.2}},
    ]
    spec = translate_spec(tmp_path, train=train, model={**SMALL_TRANSLATOR, "layers": encoder})
    features = tmp_path / "features"
    prepare_pairs_features(spec.data, features, "pipelines.rev.data")
    complete = fit(spec, features, tmp_path / "complete", ListLogger(), progress=False)
    with pytest.raises(RuntimeError, match="failed at epoch 2"):
        fit(spec, features, tmp_path / "run", FailingAt(2), progress=False)
    resumed = fit(spec, features, tmp_path / "run", ListLogger(), progress=False)
    assert resumed.resumed_from_epoch == 1 and resumed.resumed_from_batch
    assert without_timing(resumed.history) == without_timing(complete.history)
    ours, theirs = load_state(resumed.model_path), load_state(complete.model_path)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_a_search_space_that_breaks_the_translator_is_refused_before_any_trial(tmp_path: Path) -> None:
    raw = {
        "task": "translate",
        "data": {"kind": "pairs", "path": "p.csv"},
        "search": {"trials": 2, "space": {"model.layers[1].lstm.units": {"int": [32, 64]}}},
    }
    with pytest.raises(ConfigError, match=r"model.decoder\[1\].lstm.units: starts from the state of model.layers\[1\]"):
        validate_pipeline("t", raw, tmp_path)  # the decoder's lstm keeps the default 256 units
