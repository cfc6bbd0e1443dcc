"""Language modelling: corpus reading and splitting, token streams, stateful TBPTT, evaluation, generation."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CORPUS_LINE, make_project

from lstmflow.config import validate_pipeline
from lstmflow.data.corpus import TokenStream, load_corpus, prepare_corpus_features, read_text, split_corpus
from lstmflow.errors import ConfigError, DataError
from lstmflow.evaluation.evaluate import evaluate_language_model
from lstmflow.models.lstm import build_model
from lstmflow.serving.generate import decode, generate
from lstmflow.training.fit import fit
from lstmflow.training.loggers import ListLogger
from lstmflow.training.objectives import make_objective


def lm_spec(path: Path, **sections: object):
    raw = {
        "task": "language_model",
        "data": {"kind": "corpus", "path": str(path), "sequence_length": 12},
        "model": {
            "layers": [
                {"embedding": {"dim": 8}},
                {"lstm": {"units": 32, "return_sequences": True, "stateful": True}},
                {"dense": {"activation": "softmax"}},
            ]
        },
        "train": {"epochs": 3, "batch_size": 4, "optimizer": {"lr": 0.02}, "seed": 0},
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) else value
    return validate_pipeline("lm", raw, path.parent)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS_LINE * 60, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ reading, splitting


def test_fractions_are_contiguous_and_cut_at_line_breaks(corpus: Path) -> None:
    parts = split_corpus(lm_spec(corpus).data, "lm.data")
    assert parts["train"] + parts["val"] + parts["test"] == corpus.read_text()
    assert all(part.endswith("\n") for part in (parts["train"], parts["val"]))
    share = {name: len(text) / len(corpus.read_text()) for name, text in parts.items()}
    assert share["val"] == pytest.approx(0.1, abs=0.02) and share["test"] == pytest.approx(0.1, abs=0.02)


def test_a_folder_reads_its_txt_files_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "b.txt").write_text("second\n")
    (folder / "a.txt").write_text("first\n")
    (folder / "notes.md").write_text("ignored\n")
    assert read_text(folder, "lm.data.path") == "first\nsecond\n"


def test_given_files_are_the_parts(tmp_path: Path, corpus: Path) -> None:
    (tmp_path / "val.txt").write_text("the dog sat.\n")
    (tmp_path / "test.txt").write_text("a cat ran.\n")
    spec = lm_spec(corpus, data={"split": {"files": {"val": "val.txt", "test": "test.txt"}}})
    parts = split_corpus(spec.data, "lm.data")
    assert parts == {"train": corpus.read_text(), "val": "the dog sat.\n", "test": "a cat ran.\n"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"   \n\n", "holds no text"),
        (b"abc\xff\xfedef", "is not UTF-8: byte 0xff at offset 3 (line 1)"),
    ],
)
def test_bad_corpus_files_are_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match="lm.data.path") as caught:
        split_corpus(lm_spec(path).data, "lm.data")
    assert message in str(caught.value)


def test_missing_paths_and_empty_folders_are_named(tmp_path: Path, corpus: Path) -> None:
    spec = lm_spec(corpus, data={"split": {"files": {"val": "nowhere.txt", "test": "corpus.txt"}}})
    with pytest.raises(DataError, match=r"lm.data.split.files.val: no such file or folder: .*nowhere.txt"):
        split_corpus(spec.data, "lm.data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="lm.data.path: .*empty is a folder without .txt files"):
        split_corpus(lm_spec(tmp_path / "empty").data, "lm.data")


def test_a_corpus_too_short_for_one_sequence_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("tiny\ntext\nhere\n")
    with pytest.raises(DataError, match=r"too short to train on: train has \d+ token\(s\), needs 13"):
        prepare_corpus_features(lm_spec(path).data, tmp_path / "features", "lm.data")


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_each_tokenizer_prepares_a_corpus_fitted_on_train_only(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS_LINE * 40 + "zebra zebra quagga\n" * 6, encoding="utf-8")  # the new words land in test
    spec = lm_spec(path, data={"tokenizer": {"kind": kind, "vocab_size": 60}, "split": {"val": 0.05, "test": 0.1}})
    summary = prepare_corpus_features(spec.data, tmp_path / "features", "lm.data")
    features = load_corpus(tmp_path / "features")
    assert features.tokenizer.kind == kind and features.vocab_size == summary["vocab_size"] <= 60
    assert summary["train_tokens"] == len(features.ids["train"]) > summary["test_tokens"] > 0
    assert summary["unknown_tokens_val_test"] > 0, "letters and words seen only in the test part are unknown"
    assert features.ids["train"].dtype == np.int32 and features.ids["train"].min() >= 2  # no padding, no unknown


def test_a_corpus_tokenizer_defaults_to_characters_with_case_kept(corpus: Path) -> None:
    tokenizer = lm_spec(corpus, data={"tokenizer": {"vocab_size": 50}}).data.tokenizer
    assert (tokenizer.kind, tokenizer.lowercase, tokenizer.vocab_size) == ("char", False, 50)


# ------------------------------------------------------------------------------------------ streams and state


def test_streams_continue_from_one_batch_to_the_next() -> None:
    stream = TokenStream(np.arange(2, 103, dtype=np.int32))  # 101 ids
    rows, steps = stream.rows_for(batch_size=4, steps=6), 6
    batches = list(stream.batches(rows, steps))
    assert rows == 4 and len(batches) == stream.batch_count(rows, steps)
    x = torch.cat([b[0] for b in batches], dim=1).squeeze(-1).long()  # (rows, L-1) after concatenating the spans
    y = torch.cat([b[1] for b in batches], dim=1)
    assert torch.equal(x, torch.from_numpy(stream.layout(rows)[:, :-1]).long())  # row r reads stream r in order
    assert torch.equal(y[:, :-1], x[:, 1:])  # each target is the next input
    assert y.numel() == stream.scored_tokens(rows)


def test_carried_state_equals_reading_the_two_spans_at_once(corpus: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = lm_spec(corpus)
    prepare_corpus_features(spec.data, tmp_path / "f", "lm.data")
    objective = make_objective(spec, tmp_path / "f")
    model = build_model(spec.model, objective.n_features, objective.n_outputs, per_step=True).eval()
    (first, _), (second, _) = [inputs for inputs, _ in zip(objective.batches("train", 4), range(2))]
    with torch.no_grad():
        objective.loss(model, first, torch.zeros(first[0].shape[:2], dtype=torch.long))
        carried = objective.carried_state()
        assert set(carried) == {"1.h", "1.c"} and not any(t.requires_grad for t in carried.values())
        continued, _ = model.logits_carrying(second[0], objective._carry)
        whole = model.logits(torch.cat([first[0], second[0]], dim=1))  # (B, 2T, V) from zeros
    torch.testing.assert_close(continued, whole[:, first[0].shape[1] :], rtol=1e-5, atol=1e-5)


def test_each_pass_starts_from_zero_state_and_restore_puts_it_back(corpus: Path, tmp_path: Path) -> None:
    spec = lm_spec(corpus)
    prepare_corpus_features(spec.data, tmp_path / "f", "lm.data")
    objective = make_objective(spec, tmp_path / "f")
    model = build_model(spec.model, objective.n_features, objective.n_outputs, per_step=True).eval()
    with torch.no_grad():
        losses = [float(objective.loss(model, inputs, target)) for inputs, target in objective.batches("train", 4)]
        saved = objective.carried_state()
        again = [float(objective.loss(model, inputs, target)) for inputs, target in objective.batches("train", 4)]
        assert again == losses, "a new pass must not start from the last pass's state"
        objective.restore_carried_state(saved)
        assert all(torch.equal(saved[k], objective.carried_state()[k]) for k in saved)
        next(iter(objective.batches("train", 4)))
        assert not objective.carried_state(), "batches() resets the carried state"


def test_only_stateful_layers_carry_and_stateless_spans_are_shuffled(corpus: Path, tmp_path: Path) -> None:
    spec = lm_spec(
        corpus,
        model={
            "layers": [
                {"embedding": {"dim": 8}},
                {"lstm": {"units": 8, "return_sequences": True, "stateful": True}},
                {"lstm": {"units": 8, "return_sequences": True}},
                {"dense": {}},
            ]
        },
    )
    prepare_corpus_features(spec.data, tmp_path / "f", "lm.data")
    objective = make_objective(spec, tmp_path / "f")
    model = build_model(spec.model, objective.n_features, objective.n_outputs, per_step=True)
    inputs, target = next(iter(objective.batches("train", 4, shuffle=True, seed=0, epoch=1)))
    objective.loss(model, inputs, target)
    assert set(objective.carried_state()) == {"1.h", "1.c"}
    in_order = [x for (x,), _ in objective.batches("train", 4, shuffle=True, seed=0, epoch=1)]
    assert torch.equal(in_order[0], inputs[0]), "a stateful model reads the spans in order even when shuffling"

    stateless = lm_spec(
        corpus,
        model={"layers": [{"embedding": {"dim": 8}}, {"lstm": {"units": 8, "return_sequences": True}}, {"dense": {}}]},
    )
    objective = make_objective(stateless, tmp_path / "f")
    first = [x for (x,), _ in objective.batches("train", 4)]
    shuffled = [x for (x,), _ in objective.batches("train", 4, shuffle=True, seed=0, epoch=1)]
    in_order_sums, shuffled_sums = [float(x.sum()) for x in first], [float(x.sum()) for x in shuffled]
    assert shuffled_sums != in_order_sums and sorted(shuffled_sums) == sorted(in_order_sums)


# ------------------------------------------------------------------------------------------ config rules


def test_stateful_outside_a_language_model_is_refused(tmp_path: Path) -> None:
    raw = {
        "data": {"path": "x.csv", "target": "y"},
        "model": {"layers": [{"lstm": {"units": 4, "stateful": True}}, {"dense": {}}]},
    }
    with pytest.raises(
        ConfigError, match=r"pipelines.f: model.layers\[0\].lstm.stateful: .*only task 'language_model'"
    ):
        validate_pipeline("f", raw, tmp_path)


def test_a_language_model_needs_a_corpus(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="pipelines.f: task 'language_model' needs data.kind 'corpus', got 'timeseries'"
    ):
        validate_pipeline("f", {"task": "language_model", "data": {"path": "x.csv", "target": "y"}}, tmp_path)


def test_a_bidirectional_language_model_is_refused(corpus: Path) -> None:
    layers = [
        {"embedding": {"dim": 4}},
        {"lstm": {"units": 4, "return_sequences": True, "bidirectional": True}},
        {"dense": {}},
    ]
    with pytest.raises(ConfigError, match=r"layers\[1\].lstm.bidirectional: .*would see the very token"):
        lm_spec(corpus, model={"layers": layers})


def test_a_language_model_must_predict_at_every_step(corpus: Path, tmp_path: Path) -> None:
    spec = lm_spec(corpus, model={"layers": [{"embedding": {"dim": 4}}, {"lstm": {"units": 4}}, {"dense": {}}]})
    prepare_corpus_features(spec.data, tmp_path / "f", "lm.data")
    with pytest.raises(
        ConfigError, match=r"layers\[1\].lstm.return_sequences: a language model predicts the next token"
    ):
        fit(spec, tmp_path / "f", tmp_path / "run", ListLogger(), progress=False)


def test_without_a_model_a_language_model_gets_an_embedding_and_a_stateful_lstm(corpus: Path) -> None:
    spec = validate_pipeline(
        "lm", {"task": "language_model", "data": {"kind": "corpus", "path": str(corpus)}}, corpus.parent
    )
    kinds = [layer.kind for layer in spec.model.layers]
    assert kinds == ["embedding", "lstm", "dense"] and spec.model.layers[1].lstm.stateful
    assert spec.model.layers[1].lstm.return_sequences and spec.loss == "cross_entropy"


# ------------------------------------------------------------------------------------------ train, evaluate, generate


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, Path]:
    root = tmp_path_factory.mktemp("lm")
    path = root / "corpus.txt"
    path.write_text(CORPUS_LINE * 60, encoding="utf-8")
    spec = lm_spec(path, train={"epochs": 12})
    prepare_corpus_features(spec.data, root / "f", "lm.data")
    result = fit(spec, root / "f", root / "run", ListLogger(), progress=False)
    return spec, root, Path(result.model_path)


def test_a_stateful_model_learns_the_text_far_below_the_unigram_baseline(trained: tuple[object, Path, Path]) -> None:
    spec, root, model_path = trained
    metrics, files = evaluate_language_model(spec, root / "f", model_path, root / "plots")
    assert metrics["perplexity"] < 0.4 * metrics["unigram_perplexity"], metrics
    assert metrics["bits_per_character"] == pytest.approx(metrics["cross_entropy"] / math.log(2))
    assert {f.name for f in files} == {"sample.txt", "loss_curves.png"}
    assert len((root / "plots" / "sample.txt").read_text()) > 400


def test_generation_is_seeded_greedy_at_zero_and_continues_the_prompt(trained: tuple[object, Path, Path]) -> None:
    spec, root, model_path = trained
    features = load_corpus(root / "f")
    model = build_model(spec.model, features.vocab_size, features.vocab_size, per_step=True)
    model.load_state_dict(torch.load(model_path, weights_only=True))
    assert generate(model, features.tokenizer, "the cat s", 30, 0.8, seed=3) == generate(
        model, features.tokenizer, "the cat s", 30, 0.8, seed=3
    )
    greedy = generate(model, features.tokenizer, "the cat s", 12, temperature=0.0)
    assert len(greedy) == 12 and greedy.startswith("at on the"), greedy
    with pytest.raises(DataError, match="holds no token"):
        generate(model, features.tokenizer, "", 5)


def test_word_decoding_spaces_words_and_glues_punctuation() -> None:
    from lstmflow.config import TokenizerSpec
    from lstmflow.data.text import fit_tokenizer

    tokenizer = fit_tokenizer(TokenizerSpec(kind="word"), ["the cat sat . the dog ran , far"])
    ids = tokenizer.encode("the dog sat, far.")
    assert decode(tokenizer, ids) == "the dog sat, far."
    assert decode(tokenizer, ids[:2], after="said") == " the dog"


@pytest.mark.slow
def test_run_then_generate_from_the_command_line(tmp_path: Path) -> None:
    pipelines = """\
pipelines:
  lm:
    task: language_model
    data: {kind: corpus, path: data/corpus.txt, sequence_length: 12}
    model:
      layers:
        - embedding: {dim: 8}
        - lstm: {units: 32, return_sequences: true, stateful: true}
        - dense: {activation: softmax}
    train: {epochs: 6, batch_size: 4, optimizer: {lr: 0.02}}
"""
    root = make_project(tmp_path / "project", pipelines)
    (root / "data" / "corpus.txt").write_text(CORPUS_LINE * 60)
    lstmflow = str(Path(sys.executable).parent / "lstmflow")
    run = subprocess.run([lstmflow, "run", "lm"], cwd=root, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "perplexity" in run.stdout and "unigram" in run.stdout
    done = subprocess.run(
        [lstmflow, "generate", "lm", "--prompt", "the cat", "--tokens", "20", "--temperature", "0"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("the cat") and len(done.stdout.rstrip("\n")) == len("the cat") + 20
    wrong = subprocess.run(
        [lstmflow, "generate", "nope", "--prompt", "x"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert wrong.returncode == 2 and "no pipeline named 'nope'" in wrong.stderr
