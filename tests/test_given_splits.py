"""Given splits: `data.split.files` names the validation and test files (or folders) of every data kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
from PIL import Image

from lstmflow.config import (
    AudioSpec,
    ImagesSpec,
    PipelineSpec,
    SequenceTableSpec,
    TextSpec,
    validate_pipeline,
)
from lstmflow.data.audio import prepare_audio_features
from lstmflow.data.images import prepare_image_features, read_images
from lstmflow.data.kinds import model_io
from lstmflow.data.sequences import load_sequences, prepare_sequence_features, read_sequence_table
from lstmflow.data.text import UNK_ID, load_tokenizer, prepare_text_features
from lstmflow.data.timeseries import load_features, prepare_features, read_series, resolve_data
from lstmflow.errors import ConfigError, DataError

torch.set_num_threads(1)

WHERE = "pipelines.given.data"


def given(val: Path, test: Path, **split: object) -> dict[str, object]:
    return {"files": {"val": str(val), "test": str(test)}, **split}


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def wide_rows(labels: str, start: float) -> list[dict[str, object]]:
    """One wide row per label letter; values start at ``start`` and rise by 1 per row, three steps each."""
    return [
        {"label": label, "t0": start + i, "t1": start + i + 0.5, "t2": start + i + 1.0}
        for i, label in enumerate(labels)
    ]


def wide_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    return (
        write_csv(tmp_path / "train.csv", wide_rows("abab", 0.0)),
        write_csv(tmp_path / "val.csv", wide_rows("ab", 100.0)),
        write_csv(tmp_path / "test.csv", wide_rows("ba", 200.0)),
    )


def sequences_spec(train: Path, **split: object) -> SequenceTableSpec:
    return SequenceTableSpec.model_validate({"kind": "sequences", "path": train, "format": "wide", "split": split})


# ------------------------------------------------------------------------------------------ table kinds


def test_sequences_from_three_files_take_each_files_part(tmp_path: Path) -> None:
    train, val, test = wide_files(tmp_path)
    spec = sequences_spec(train, **given(val, test))
    table = read_sequence_table(spec, WHERE)
    assert table.given_parts == ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    assert table.labels == list("abababba")
    assert table.names[0] == "train.csv line 2" and table.names[4] == "val.csv line 2"

    summary = prepare_sequence_features(spec, tmp_path / "out", WHERE)
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (4, 2, 2)
    assert summary["split"] == "files"
    features = load_sequences(tmp_path / "out")
    np.testing.assert_array_equal(features.parts, [0, 0, 0, 0, 1, 1, 2, 2])
    assert features.meta["split"] == {"by": "files"}
    # Scaling is fitted on the training file alone (values 0..4), not on the val and test files (100.., 200..).
    train_values = np.array([[i + step] for i in range(4) for step in (0.0, 0.5, 1.0)])
    assert features.preprocessing.offset == pytest.approx((train_values.mean(),))


def test_fractions_keep_the_meta_they_always_had(tmp_path: Path) -> None:
    train, _, _ = wide_files(tmp_path)
    summary = prepare_sequence_features(sequences_spec(train, val=0.25, test=0.25), tmp_path / "out", WHERE)
    assert summary["split"] == "fractions"
    assert "split" not in load_sequences(tmp_path / "out").meta


def test_text_files_fit_the_tokenizer_on_the_training_file_only(tmp_path: Path) -> None:
    rows = {
        "train": [("good film", "pos"), ("bad film", "neg"), ("good cast", "pos"), ("bad cast", "neg")],
        "val": [("wonderful film", "pos"), ("bad plot", "neg")],
        "test": [("good plot", "pos"), ("awful film", "neg")],
    }
    paths = {
        part: write_csv(tmp_path / f"{part}.csv", [{"text": t, "label": y} for t, y in texts])
        for part, texts in rows.items()
    }
    spec = TextSpec.model_validate(
        {
            "kind": "text",
            "path": paths["train"],
            "split": given(paths["val"], paths["test"]),
            "tokenizer": {"kind": "word"},
        }
    )
    summary = prepare_text_features(spec, tmp_path / "out", WHERE)
    assert (summary["n_train"], summary["n_val"], summary["n_test"], summary["split"]) == (4, 2, 2, "files")
    tokenizer = load_tokenizer(tmp_path / "out")
    assert "wonderful" not in tokenizer.tokens and "plot" not in tokenizer.tokens
    assert tokenizer.encode("wonderful plot") == [UNK_ID, UNK_ID]
    # Four unknown tokens in val and test: wonderful, plot, plot, awful.
    assert summary["unknown_tokens_val_test"] == 4


def test_a_label_seen_only_in_the_test_file_is_named(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", wide_rows("abab", 0.0))
    val = write_csv(tmp_path / "val.csv", wide_rows("ab", 0.0))
    test = write_csv(tmp_path / "test.csv", wide_rows("ac", 0.0))
    with pytest.raises(DataError) as excinfo:
        prepare_sequence_features(sequences_spec(train, **given(val, test)), tmp_path / "out", WHERE)
    assert str(excinfo.value) == (
        f"{WHERE}.split: label(s) never seen in the train part, so the model cannot learn them: 'c' (only in test)"
    )


# ------------------------------------------------------------------------------------------ folders


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def image_folder(root: Path, per_label: int, size: tuple[int, int] = (4, 6)) -> Path:
    """Label folders 'bars' (bright top half) and 'plain' of small grayscale PNGs."""
    rng = np.random.default_rng(len(root.name))
    for label in ("bars", "plain"):
        for i in range(per_label):
            pixels = rng.integers(0, 60, size=size).astype(np.uint8)
            if label == "bars":
                pixels[: size[0] // 2] += 150
            save_png(root / label / f"img{i}.png", pixels)
    return root


def images_spec(root: Path, **split: object) -> ImagesSpec:
    return ImagesSpec.model_validate({"kind": "images", "path": root, "split": split})


def test_image_folders_as_given_parts(tmp_path: Path) -> None:
    train, val, test = (image_folder(tmp_path / part, n) for part, n in (("train", 3), ("val", 2), ("test", 1)))
    spec = images_spec(train, **given(val, test))
    summary = prepare_image_features(spec, tmp_path / "out", WHERE)
    assert (summary["n_train"], summary["n_val"], summary["n_test"], summary["split"]) == (6, 4, 2, "files")
    features = load_sequences(tmp_path / "out")
    assert features.meta["counts"]["val"] == {"bars": 2, "plain": 2}
    assert read_images(spec, WHERE).names[6:8] == ["val/bars/img0.png", "val/bars/img1.png"]


def test_images_of_another_size_in_a_given_folder_are_named(tmp_path: Path) -> None:
    train, val = image_folder(tmp_path / "train", 2), image_folder(tmp_path / "val", 1)
    test = image_folder(tmp_path / "test", 1, size=(5, 6))  # one row taller: as wide, so only a size check sees it
    with pytest.raises(DataError) as excinfo:
        read_images(images_spec(train, **given(val, test)), WHERE)
    assert str(excinfo.value) == (
        f"{WHERE}.path: images differ in size (width x height): train/bars/img0.png is 6x4, test/bars/img0.png is "
        "6x5; resize them to one size first"
    )


RATE = 16000


def write_tone(path: Path, frequency: float, seconds: float = 0.1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * RATE)) / RATE
    soundfile.write(path, (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), RATE)


def clip_folder(root: Path, per_label: int) -> Path:
    for label, frequency in (("low", 300.0), ("high", 2000.0)):
        for i in range(per_label):
            write_tone(root / label / f"clip{i}.wav", frequency + 10 * i)
    return root


def audio_spec(root: Path, **split: object) -> AudioSpec:
    return AudioSpec.model_validate({"kind": "audio", "path": root, "workers": 1, "split": split})


def test_audio_folders_as_given_parts_name_bad_files_by_folder(tmp_path: Path) -> None:
    train, val, test = (clip_folder(tmp_path / part, n) for part, n in (("train", 2), ("val", 1), ("test", 1)))
    (val / "low" / "notes.txt").write_text("not audio\n")
    spec = audio_spec(train, **given(val, test))
    summary = prepare_audio_features(spec, tmp_path / "out", WHERE, tmp_path / "cache")
    assert (summary["n_train"], summary["n_val"], summary["n_test"], summary["split"]) == (4, 2, 2, "files")
    assert summary["skipped_files"] == ["val/low/notes.txt"]
    assert json.loads((tmp_path / "out" / "skipped.json").read_text())[0]["file"] == "val/low/notes.txt"
    np.testing.assert_array_equal(load_sequences(tmp_path / "out").parts, [0, 0, 0, 0, 1, 1, 2, 2])


def test_a_given_part_left_without_usable_clips_is_named(tmp_path: Path) -> None:
    train, test = clip_folder(tmp_path / "train", 2), clip_folder(tmp_path / "test", 1)
    val = tmp_path / "val"
    for label in ("low", "high"):
        (val / label).mkdir(parents=True)
        soundfile.write(val / label / "silence.wav", np.zeros(RATE // 10, dtype=np.float32), RATE)
    with pytest.raises(DataError) as excinfo:
        prepare_audio_features(audio_spec(train, **given(val, test)), tmp_path / "out", WHERE, tmp_path / "cache")
    assert str(excinfo.value) == f"{WHERE}.split.files.val: no usable samples in {val}"


# ------------------------------------------------------------------------------------------ errors


def test_a_missing_split_file_is_named_with_its_yaml_path(tmp_path: Path) -> None:
    train, val, _ = wide_files(tmp_path)
    with pytest.raises(DataError) as excinfo:
        read_sequence_table(sequences_spec(train, **given(val, tmp_path / "nowhere.csv")), WHERE)
    assert str(excinfo.value) == f"{WHERE}.split.files.test: no such file or folder: {tmp_path / 'nowhere.csv'}"


def test_a_split_file_of_another_form_is_named(tmp_path: Path) -> None:
    train, val, test = wide_files(tmp_path)
    parquet = tmp_path / "val.parquet"
    pd.read_csv(val).to_parquet(parquet)
    with pytest.raises(DataError) as excinfo:
        read_sequence_table(sequences_spec(train, **given(parquet, test)), WHERE)
    assert str(excinfo.value) == (
        f"{WHERE}.split.files.val: {parquet} is a .parquet file but {WHERE}.path is a .csv file; "
        "give the parts in the same form"
    )
    folder, val_folder = image_folder(tmp_path / "images", 1), image_folder(tmp_path / "images_val", 1)
    with pytest.raises(DataError, match=r"split\.files\.test: .* is a \.csv file but .*\.path is a folder"):
        read_images(images_spec(folder, **given(val_folder, test)), WHERE)


def test_the_same_file_twice_is_refused(tmp_path: Path) -> None:
    train, val, _ = wide_files(tmp_path)
    with pytest.raises(DataError) as excinfo:
        read_sequence_table(sequences_spec(train, **given(val, val)), WHERE)
    assert str(excinfo.value) == (
        f"{WHERE}.split.files.test: {val} is also {WHERE}.split.files.val; each part needs its own"
    )


def test_a_split_file_without_the_columns_is_named(tmp_path: Path) -> None:
    train, val, _ = wide_files(tmp_path)
    test = write_csv(tmp_path / "test.csv", [{"class": "a", "t0": 1.0}])
    with pytest.raises(DataError) as excinfo:
        read_sequence_table(sequences_spec(train, **given(val, test)), WHERE)
    assert str(excinfo.value) == f"{WHERE}: {test} has no column(s) ['label']; available: ['class', 't0']"


def test_an_empty_split_file_is_named(tmp_path: Path) -> None:
    train, _, test = wide_files(tmp_path)
    val = tmp_path / "val.csv"
    val.write_text("label,t0,t1,t2\n")
    with pytest.raises(DataError) as excinfo:
        read_sequence_table(sequences_spec(train, **given(val, test)), WHERE)
    assert str(excinfo.value) == f"{WHERE}.path: {val} has a header but no data rows"


def test_config_resolves_split_files_and_refuses_them_beside_a_column(tmp_path: Path) -> None:
    wide_files(tmp_path)
    raw = {
        "task": "classify",
        "data": {
            "kind": "sequences",
            "path": "train.csv",
            "format": "wide",
            "split": {"val": 0.6, "test": 0.6, "files": {"val": "val.csv", "test": "test.csv"}},
        },
    }
    spec = validate_pipeline("given", raw, base_dir=tmp_path)  # the fractions are ignored: no 10% rule
    assert spec.data.split.files.val == tmp_path / "val.csv"
    assert model_io(spec) == (1, 2)
    raw["data"]["split"] = {"column": "part", "files": {"val": "val.csv", "test": "test.csv"}}
    with pytest.raises(ConfigError) as excinfo:
        validate_pipeline("given", raw, base_dir=tmp_path)
    assert excinfo.value.problems == [
        "pipelines.given.data.split: give the split as column or as files, not both; got column 'part' and files"
    ]


# ------------------------------------------------------------------------------------------ time series


def monthly(rows: int, start: str = "2000-01-01") -> pd.DataFrame:
    months = pd.date_range(start, periods=rows, freq="MS").strftime("%Y-%m-%d")
    values = 20 + 3 * np.sin(2 * np.pi * np.arange(rows) / 12) + np.random.default_rng(0).normal(0, 0.3, rows)
    return pd.DataFrame({"t": months, "y": values})


def series_spec(path: Path, **data: object) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "name": "given",
            "data": {"path": str(path), "target": "y", "time_column": "t", **data},
            "model": {"layers": [{"lstm": {"units": 4}}]},
        }
    )


def three_series_files(tmp_path: Path, frame: pd.DataFrame, train_end: int, val_end: int) -> tuple[Path, Path, Path]:
    train, val, test = tmp_path / "train.csv", tmp_path / "val.csv", tmp_path / "test.csv"
    frame.iloc[:train_end].to_csv(train, index=False)
    frame.iloc[train_end:val_end].to_csv(val, index=False)
    frame.iloc[val_end:].to_csv(test, index=False)
    return train, val, test


def test_series_files_split_at_their_boundaries_like_the_same_fractions(tmp_path: Path) -> None:
    frame = monthly(100)
    whole = tmp_path / "whole.csv"
    frame.to_csv(whole, index=False)
    train, val, test = three_series_files(tmp_path, frame, 70, 85)  # fractions 0.15 + 0.15 cut at 70 and 85

    by_fractions = resolve_data(series_spec(whole, window=12, horizon=3))
    prepare_features(by_fractions.data, by_fractions.evaluate.season, tmp_path / "fractions")
    by_files = resolve_data(series_spec(train, window=12, horizon=3, split=given(val, test)))
    summary = prepare_features(by_files.data, by_files.evaluate.season, tmp_path / "files")

    assert by_files.evaluate.season == by_fractions.evaluate.season == 12
    a, b = load_features(tmp_path / "fractions"), load_features(tmp_path / "files")
    np.testing.assert_array_equal(a.series, b.series)
    np.testing.assert_array_equal(a.raw, b.raw)
    assert b.meta["split"] == {"train_end": 70, "val_end": 85, "by": "files"}
    assert a.meta["split"] == {"train_end": 70, "val_end": 85}
    assert a.meta["windows"] == b.meta["windows"] and a.meta["time"] == b.meta["time"]
    assert (summary["train_rows"], summary["val_rows"], summary["test_rows"], summary["split"]) == (70, 15, 15, "files")
    # The first validation window reads the last 12 training rows: context from the part before, as with fractions.
    np.testing.assert_array_equal(b.windows("val").inputs[0], b.series[58:70])


def test_series_files_must_continue_in_time(tmp_path: Path) -> None:
    frame = monthly(60)
    train, val, test = three_series_files(tmp_path, frame, 40, 50)
    frame.iloc[45:55].to_csv(test, index=False)  # starts inside the validation months
    with pytest.raises(DataError) as excinfo:
        read_series(series_spec(train, split=given(val, test)).data, WHERE)
    assert str(excinfo.value) == (
        f"{WHERE}.split.files.test: {test} line 2 is at 2003-10-01 00:00:00, not after 2004-02-01 00:00:00, "
        f"the last time of {val}; each file must continue the one before it in time"
    )
    pd.DataFrame({"t": np.arange(10), "y": np.ones(10)}).to_csv(val, index=False)
    with pytest.raises(DataError) as excinfo:
        read_series(series_spec(train, split=given(val, test)).data, WHERE)
    assert str(excinfo.value) == (
        f"{WHERE}.split.files.val: {val} has numbers in 't' but {train} has dates; the files must continue one series"
    )


def test_series_files_need_the_same_columns_and_a_horizon_each(tmp_path: Path) -> None:
    frame = monthly(60)
    train, val, test = three_series_files(tmp_path, frame, 40, 50)
    frame.iloc[50:].rename(columns={"y": "value"}).to_csv(test, index=False)
    with pytest.raises(DataError) as excinfo:
        read_series(series_spec(train, split=given(val, test)).data, WHERE)
    assert str(excinfo.value) == f"{WHERE}: {test} has no column(s) ['y']; available: ['t', 'value']"

    frame.iloc[50:52].to_csv(test, index=False)  # 2 rows: too few for a horizon of 3
    with pytest.raises(DataError) as excinfo:
        resolve_data(series_spec(train, window=6, horizon=3, split=given(val, test)))
    assert str(excinfo.value) == (
        "pipelines.given.data: the test part has 2 rows but horizon 3 needs at least 3; "
        "the files hold 52 rows; use longer files, or a smaller window or horizon"
    )


# ------------------------------------------------------------------------------- test file, no val file


def iris_files(tmp_path: Path) -> tuple[Path, Path]:
    """scikit-learn's iris as wide sequences (4 measurements each), the usual 120 / 30 train/test files."""
    from sklearn.datasets import load_iris

    iris = load_iris()
    rows = [
        {"label": str(iris.target_names[y]), **{f"t{j}": float(v) for j, v in enumerate(x)}}
        for x, y in zip(iris.data, iris.target)
    ]
    order = np.random.default_rng(0).permutation(len(rows))
    return (
        write_csv(tmp_path / "train.csv", [rows[i] for i in order[:120]]),
        write_csv(tmp_path / "test.csv", [rows[i] for i in order[120:]]),
    )


def test_a_test_file_alone_draws_a_stratified_seeded_validation_part_from_train(tmp_path: Path) -> None:
    train, test = iris_files(tmp_path)
    spec = sequences_spec(train, files={"test": str(test)})
    summary = prepare_sequence_features(spec, tmp_path / "out", WHERE)
    features = load_sequences(tmp_path / "out")
    counts = features.meta["counts"]
    train_labels = pd.read_csv(train)["label"].value_counts()
    for label, n in train_labels.items():  # round(n × 0.15) of each class validates, drawn from the training file
        assert counts["val"][label] == int(n * 0.15 + 0.5) and counts["train"][label] == n - counts["val"][label]
    assert summary["n_test"] == 30 and summary["split"] == "files"
    drawn = features.meta["split"]["val_drawn_from_train"]
    assert (drawn["fraction"], drawn["seed"], len(drawn["samples"])) == (0.15, 0, summary["n_val"])
    table = read_sequence_table(spec, WHERE)
    val_names = [name for name, part in zip(table.names, features.parts) if part == 1]
    assert drawn["samples"] == val_names and all(name.startswith("train.csv line ") for name in val_names)

    again = prepare_sequence_features(spec, tmp_path / "again", WHERE)
    assert again == summary and load_sequences(tmp_path / "again").meta == features.meta  # seeded: the same draw
    other = sequences_spec(train, files={"test": str(test)}, seed=1)
    prepare_sequence_features(other, tmp_path / "other", WHERE)
    assert load_sequences(tmp_path / "other").meta["split"]["val_drawn_from_train"]["samples"] != val_names


def test_text_with_a_test_file_alone_fits_the_tokenizer_on_what_trains(tmp_path: Path) -> None:
    words = [
        "crisp",
        "warm",
        "vivid",
        "bright",
        "lush",
        "rich",
        "deft",
        "dull",
        "flat",
        "limp",
        "drab",
        "stale",
        "bland",
        "weak",
    ]
    texts = [
        (f"good film {word}" if i < 7 else f"bad film {word}", "pos" if i < 7 else "neg")
        for i, word in enumerate(words)
    ]
    train = write_csv(tmp_path / "train.csv", [{"text": t, "label": y} for t, y in texts])
    test = write_csv(tmp_path / "test.csv", [{"text": "good plot", "label": "pos"}, {"text": "bad", "label": "neg"}])
    spec = TextSpec.model_validate(
        {
            "kind": "text",
            "path": train,
            "split": {"files": {"test": str(test)}, "val": 0.3},
            "tokenizer": {"kind": "word", "min_frequency": 1},
        }
    )
    summary = prepare_text_features(spec, tmp_path / "out", WHERE)
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (10, 4, 2)
    features = load_sequences(tmp_path / "out")
    assert len(features.meta["split"]["val_drawn_from_train"]["samples"]) == 4
    kept = {word for (text, _), part in zip(texts, features.parts) if part == 0 for word in text.split()}
    # Fitted on the training samples that remain, not on those drawn for validation (each text has a word of its own).
    assert set(load_tokenizer(tmp_path / "out").tokens[2:]) == kept


def test_a_corpus_with_a_test_file_alone_validates_on_the_end_of_the_training_text(tmp_path: Path) -> None:
    from lstmflow.config import CorpusSpec
    from lstmflow.data.corpus import split_corpus

    lines = [f"line {i} of the training text\n" for i in range(40)]
    (tmp_path / "train.txt").write_text("".join(lines))
    (tmp_path / "test.txt").write_text("the test text\n")
    spec = CorpusSpec.model_validate(
        {
            "kind": "corpus",
            "path": tmp_path / "train.txt",
            "split": {"files": {"test": tmp_path / "test.txt"}, "val": 0.25},
        }
    )
    parts = split_corpus(spec, WHERE)
    assert parts["train"] + parts["val"] == "".join(lines) and parts["test"] == "the test text\n"
    assert parts["val"] == "".join(lines[30:])  # the last quarter, cut at a line break


def test_a_series_with_a_test_file_alone_validates_on_the_end_of_the_training_file(tmp_path: Path) -> None:
    frame = monthly(100)
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    frame.iloc[:80].to_csv(train, index=False)
    frame.iloc[80:].to_csv(test, index=False)
    spec = resolve_data(series_spec(train, window=12, horizon=3, split={"files": {"test": str(test)}, "val": 0.25}))
    summary = prepare_features(spec.data, spec.evaluate.season, tmp_path / "out")
    assert (summary["train_rows"], summary["val_rows"], summary["test_rows"]) == (60, 20, 20)
    assert load_features(tmp_path / "out").meta["split"] == {
        "train_end": 60,
        "val_end": 80,
        "by": "files",
        "val": "train tail",
    }
