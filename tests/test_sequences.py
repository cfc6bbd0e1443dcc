"""Sequence classification data: readers, parts, scaling, truncation, the ragged store and length-bucketed batches."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lstmflow.config import ClassSplitSpec, SequenceTableSpec
from lstmflow.data.sequences import (
    SequenceSet,
    assign_parts,
    load_sequences,
    prepare_sequence_features,
    read_sequence_table,
    write_sequences,
)
from lstmflow.errors import DataError

WHERE = "pipelines.x.data"


def long_spec(path: Path, **fields: object) -> SequenceTableSpec:
    return SequenceTableSpec(kind="sequences", path=path, id_column="id", value_columns=["a", "b"], **fields)


def wide_spec(path: Path, **fields: object) -> SequenceTableSpec:
    return SequenceTableSpec(kind="sequences", path=path, format="wide", **fields)


def stored(features_dir: Path, part: str = "train") -> list[np.ndarray]:
    """Every stored sequence of a part, in store order."""
    features = load_sequences(features_dir)
    positions = np.flatnonzero(features.parts == ("train", "val", "test").index(part))
    return [np.array(features.values[features.offsets[i] : features.offsets[i + 1]]) for i in positions]


def error_text(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    return str(excinfo.value)


def test_writing_features_leaves_torch_unimported_until_batches_are_asked_for(tmp_path: Path) -> None:
    """A DVC stage's process only writes features: torch's import would be a second of a new project's first run."""
    path = tmp_path / "wide.csv"
    path.write_text("label,v1,v2,v3\n" + "".join(f"{'ab'[i % 2]},{i},{i + 1},{i + 2}\n" for i in range(40)))
    script = f"""
import sys
from pathlib import Path
from lstmflow.config import SequenceTableSpec
from lstmflow.data.sequences import load_sequences, prepare_sequence_features
spec = SequenceTableSpec(kind="sequences", path=Path({str(path)!r}), format="wide")
prepare_sequence_features(spec, Path({str(tmp_path / "features")!r}), "pipelines.x.data")
print("torch" in sys.modules)
part = load_sequences(Path({str(tmp_path / "features")!r})).part("train")
print("torch" in sys.modules, type(part).__name__, len(part) > 0)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "SequenceSet", "True"]


# ------------------------------------------------------------------------------------------ readers


def test_long_csv_multivariate_orders_steps_by_time(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text("id,t,a,b,label\ns1,2,3,30,up\ns2,1,9,90,down\ns1,1,2,20,up\ns1,0,1,10,up\ns2,0,8,80,down\n")
    table = read_sequence_table(long_spec(path, time_column="t"), WHERE)
    assert table.labels == ["up", "down"]
    assert table.names == ["series 's1' (line 2)", "series 's2' (line 3)"]
    np.testing.assert_array_equal(table.sequences[0], [[1, 10], [2, 20], [3, 30]])
    np.testing.assert_array_equal(table.sequences[1], [[8, 80], [9, 90]])
    assert table.features == ("a", "b")


def test_long_without_time_column_keeps_row_order(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text("id,a,b,label\ns1,3,0,p\ns2,5,0,q\ns1,1,0,p\n")
    table = read_sequence_table(long_spec(path), WHERE)
    np.testing.assert_array_equal(table.sequences[0][:, 0], [3, 1])


def test_long_parquet_with_dates_and_numeric_ids(tmp_path: Path) -> None:
    path = tmp_path / "long.parquet"
    pd.DataFrame(
        {
            "id": [7, 7, 8, 8, 8],
            "when": pd.to_datetime(["2020-01-02", "2020-01-01", "2020-01-03", "2020-01-01", "2020-01-02"]),
            "a": [2.0, 1.0, 6.0, 4.0, 5.0],
            "b": [0.0] * 5,
            "label": [0, 0, 1, 1, 1],
        }
    ).to_parquet(path)
    table = read_sequence_table(long_spec(path, time_column="when"), WHERE)
    assert table.labels == ["0", "1"]
    assert table.names == ["series '7' (row 1)", "series '8' (row 3)"]
    np.testing.assert_array_equal(table.sequences[1][:, 0], [4, 5, 6])


def test_wide_csv_trailing_empty_cells_make_shorter_series(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("label,s0,s1,s2,s3\nA,1,2,3,4\nB,5,6,,\nA,7,,,\n")
    table = read_sequence_table(wide_spec(path), WHERE)
    assert [len(s) for s in table.sequences] == [4, 2, 1]
    np.testing.assert_array_equal(table.sequences[1], [[5], [6]])
    assert table.labels == ["A", "B", "A"]
    assert table.names == ["line 2", "line 3", "line 4"]


def test_wide_parquet_with_explicit_step_columns_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "wide.parquet"
    table = {"key": ["u", "v"], "y": ["p", "q"], "t0": [1.0, 3.0], "t1": [2.0, None], "note": [9.0, 9.0]}
    pd.DataFrame(table).to_parquet(path)
    table = read_sequence_table(wide_spec(path, label_column="y", id_column="key", value_columns=["t0", "t1"]), WHERE)
    np.testing.assert_array_equal(table.sequences[0][:, 0], [1, 2])
    np.testing.assert_array_equal(table.sequences[1][:, 0], [3])
    assert table.names == ["row 1 (id 'u')", "row 2 (id 'v')"]


# --------------------------------------------------------------------------------------------- parts


def test_given_split_column_long_and_wide(tmp_path: Path) -> None:
    long_path = tmp_path / "long.csv"
    long_path.write_text(
        "id,a,b,label,part\n"
        + "".join(f"s{i},{i},0,{'pq'[i % 2]},{part}\n" for i, part in enumerate(["train"] * 4 + ["val", "test"]))
        + "s0,1,0,p,train\n"
    )
    summary = prepare_sequence_features(long_spec(long_path, split={"column": "part"}), tmp_path / "f1", WHERE)
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (4, 1, 1)
    np.testing.assert_array_equal(load_sequences(tmp_path / "f1").parts, [0, 0, 0, 0, 1, 2])

    wide_path = tmp_path / "wide.csv"
    wide_path.write_text("label,split,s0,s1\np,train,1,2\nq,train,3,4\np,test,5,\nq,val,7,8\n")
    prepare_sequence_features(wide_spec(wide_path, split={"column": "split"}), tmp_path / "f2", WHERE)
    np.testing.assert_array_equal(load_sequences(tmp_path / "f2").parts, [0, 0, 2, 1])


def test_stratified_fractions_per_class_are_seeded() -> None:
    labels = ["a"] * 20 + ["b"] * 10 + ["c"] * 3 + ["d"] * 2
    split = ClassSplitSpec(val=0.15, test=0.15, seed=3)
    parts = assign_parts(labels, split, None, WHERE)
    label_array = np.array(labels)
    counts = {c: np.bincount(parts[label_array == c], minlength=3).tolist() for c in "abcd"}
    # a: round(3.0) each; b: round(1.5) = 2 each; c: at least one each; d: too few to divide, all train.
    assert counts == {"a": [14, 3, 3], "b": [6, 2, 2], "c": [1, 1, 1], "d": [2, 0, 0]}
    np.testing.assert_array_equal(parts, assign_parts(labels, split, None, WHERE))
    assert not np.array_equal(parts, assign_parts(labels, ClassSplitSpec(seed=4), None, WHERE))
    # Another class does not reshuffle the existing ones.
    more = assign_parts([*labels, *["e"] * 7], split, None, WHERE)
    np.testing.assert_array_equal(more[: len(labels)], parts)


def test_zero_fraction_leaves_the_part_empty() -> None:
    parts = assign_parts(["a"] * 10 + ["b"] * 10, ClassSplitSpec(val=0.0, test=0.2), None, WHERE)
    assert np.bincount(parts, minlength=3).tolist() == [16, 0, 4]


def test_bad_split_value_names_value_and_row() -> None:
    with pytest.raises(DataError) as excinfo:
        assign_parts(
            ["a", "b", "a"],
            ClassSplitSpec(column="part"),
            ["train", "holdout", None],
            WHERE,
            names=["line 2", "line 3", "line 4"],
        )
    assert error_text(excinfo) == (
        "pipelines.x.data.split.column: 2 value(s) that are not train, val or test (or training, validation, valid, "
        "testing): line 3: 'holdout', line 4: None"
    )


def test_split_values_may_be_spelt_out() -> None:
    given = ["Training", "validation ", "TESTING", "valid", "train"]
    parts = assign_parts(list("abcab"), ClassSplitSpec(column="part"), given, WHERE, names=list("vwxyz"))
    assert parts.tolist() == [0, 1, 2, 1, 0]


# --------------------------------------------------------------------------------- writing the store


def ragged(lengths: list[int], n_features: int = 1, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(length, n_features)) for length in lengths]


def test_store_layout_and_deterministic_bytes(tmp_path: Path) -> None:
    sequences = ragged([3, 5, 2, 4], n_features=2)
    labels, parts = ["b", "a", "b", "a"], np.array([0, 0, 1, 2], dtype=np.int8)
    for out in ("one", "two"):
        summary = write_sequences(tmp_path / out, sequences, labels, parts, "none", None, WHERE, {"source": "test"})
    for name in ("values.npy", "offsets.npy", "labels.npy", "parts.npy", "meta.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    features = load_sequences(tmp_path / "one")
    assert features.classes == ["a", "b"] and features.n_classes == 2 and features.n_features == 2
    np.testing.assert_array_equal(features.offsets, [0, 3, 8, 10, 14])
    np.testing.assert_array_equal(features.labels, [1, 0, 1, 0])
    assert features.values.dtype == np.float32 and features.values.shape == (14, 2)
    np.testing.assert_allclose(stored(tmp_path / "one", "val")[0], sequences[2], rtol=1e-6)
    assert features.meta["counts"] == {"train": {"a": 1, "b": 1}, "val": {"a": 0, "b": 1}, "test": {"a": 1, "b": 0}}
    assert features.meta["length"] == {"min": 2, "median": 3.5, "max": 5}
    assert features.meta["extra_meta"] == {"source": "test"}
    assert summary["n_train"] == 2 and summary["n_classes"] == 2 and summary["length_max"] == 5


def test_integer_labels_sort_by_value(tmp_path: Path) -> None:
    write_sequences(tmp_path, ragged([1] * 3), ["10", "2", "1"], np.zeros(3, np.int8), "none", None, WHERE, {})
    assert load_sequences(tmp_path).classes == ["1", "2", "10"]


def test_scaling_is_fitted_on_training_sequences_only(tmp_path: Path) -> None:
    train = [np.array([[0.0, 5.0], [2.0, 5.0]]), np.array([[4.0, 5.0]])]
    held_out = [np.array([[1000.0, -1000.0]]), np.array([[-500.0, 7.0]])]
    parts = np.array([0, 0, 1, 2], dtype=np.int8)
    write_sequences(tmp_path, [*train, *held_out], ["a", "b", "a", "b"], parts, "standard", None, WHERE, {})
    features = load_sequences(tmp_path)
    # Feature 0 of train: mean 2, std sqrt(8/3); feature 1 is constant there, so it keeps factor 1.
    assert features.preprocessing.offset == pytest.approx((2.0, 5.0))
    assert features.preprocessing.factor == pytest.approx((np.sqrt(8 / 3), 1.0))
    np.testing.assert_allclose(stored(tmp_path, "val")[0], [[998 / np.sqrt(8 / 3), -1005.0]], rtol=1e-6)
    np.testing.assert_allclose(
        np.concatenate(stored(tmp_path, "train"))[:, 0], np.array([-2, 0, 2]) / np.sqrt(8 / 3), rtol=1e-6
    )


def test_max_length_keeps_the_last_steps_and_counts_them(tmp_path: Path) -> None:
    sequences = [np.arange(6.0)[:, None], np.arange(3.0)[:, None], np.arange(10.0)[:, None]]
    summary = write_sequences(tmp_path, sequences, ["a", "b", "a"], np.zeros(3, np.int8), "none", 4, WHERE, {})
    kept = stored(tmp_path)
    np.testing.assert_array_equal(kept[0][:, 0], [2, 3, 4, 5])
    np.testing.assert_array_equal(kept[1][:, 0], [0, 1, 2])
    np.testing.assert_array_equal(kept[2][:, 0], [6, 7, 8, 9])
    assert (summary["truncated_sequences"], summary["truncated_steps"]) == (2, 8)
    assert load_sequences(tmp_path).preprocessing.encode(np.arange(9.0)[:, None])[:, 0].tolist() == [5, 6, 7, 8]


# ------------------------------------------------------------------------------------------- batches


def sequence_set(lengths: np.ndarray, n_classes: int = 3) -> SequenceSet:
    """A set whose every step holds its sequence's index, so a batch shows which samples it gathered."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.repeat(np.arange(len(lengths), dtype=np.float32), lengths)[:, None]
    labels = np.arange(len(lengths), dtype=np.int64) % n_classes
    return SequenceSet(values, offsets, labels, np.arange(len(lengths)))


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_sample_once_with_zero_padding(shuffle: bool) -> None:
    lengths = np.random.default_rng(0).integers(1, 40, size=237)
    data = sequence_set(lengths)
    seen = []
    for batch in data.batches(16, shuffle=shuffle, seed=1, epoch=2):
        assert batch.x.dtype.is_floating_point and batch.lengths.device.type == "cpu"
        assert batch.x.shape[1] == int(batch.lengths.max())
        ids = batch.x[:, 0, 0].long()
        for row, (sample, length) in enumerate(zip(ids.tolist(), batch.lengths.tolist())):
            assert length == lengths[sample] and batch.y[row] == sample % 3
            assert (batch.x[row, :length, 0] == sample).all() and (batch.x[row, length:] == 0).all()
        seen += ids.tolist()
    assert sorted(seen) == list(range(len(lengths)))


def test_order_is_a_pure_function_of_seed_and_epoch() -> None:
    data = sequence_set(np.random.default_rng(1).integers(1, 60, size=500))
    first = [b.tolist() for b in data.batch_indices(8, shuffle=True, seed=5, epoch=0)]
    assert first == [b.tolist() for b in data.batch_indices(8, shuffle=True, seed=5, epoch=0)]
    assert first != [b.tolist() for b in data.batch_indices(8, shuffle=True, seed=5, epoch=1)]
    assert first != [b.tolist() for b in data.batch_indices(8, shuffle=True, seed=6, epoch=0)]
    fixed = data.batch_indices(8)
    assert [b.tolist() for b in fixed] == [b.tolist() for b in data.batch_indices(8)]
    assert np.all(np.diff(data.lengths[np.concatenate(fixed)]) >= 0)


def test_bucketing_lowers_padding_against_random_batches() -> None:
    lengths = np.random.default_rng(2).integers(10, 501, size=2000)
    data = sequence_set(lengths)
    permuted = np.random.default_rng(3).permutation(len(lengths))
    random_batches = [lengths[permuted[i : i + 32]] for i in range(0, len(lengths), 32)]
    random_fraction = 1 - lengths.sum() / sum(len(b) * b.max() for b in random_batches)
    bucketed = data.padding_fraction(32, shuffle=True, seed=0, epoch=0)
    assert random_fraction > 0.3
    assert bucketed < 0.05
    assert data.padding_fraction(32) < bucketed


def test_load_splits_into_parts(tmp_path: Path) -> None:
    parts = np.array([0, 1, 0, 2, 0], dtype=np.int8)
    write_sequences(tmp_path, ragged([4, 1, 2, 3, 5]), ["a", "a", "b", "b", "b"], parts, "none", None, WHERE, {})
    features = load_sequences(tmp_path)
    train = features.part("train")
    assert len(train) == 3 and train.lengths.tolist() == [4, 2, 5] and train.labels.tolist() == [0, 1, 1]
    assert len(features.part("val")) == 1 and features.part("test").labels.tolist() == [1]
    assert next(iter(features.part("val").batches(4))).x.shape == (1, 1, 1)


# -------------------------------------------------------------------------------------------- errors


def test_label_seen_only_outside_train(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        write_sequences(
            tmp_path,
            ragged([2] * 5),
            ["a", "a", "b", "c", "c"],
            np.array([0, 0, 0, 1, 2], np.int8),
            "none",
            None,
            WHERE,
            {},
        )
    assert error_text(excinfo) == (
        "pipelines.x.data.split: label(s) never seen in the train part, so the model cannot learn them: "
        "'c' (only in val and test)"
    )


def test_single_class(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        write_sequences(tmp_path, ragged([2] * 3), ["a"] * 3, np.zeros(3, np.int8), "none", None, WHERE, {})
    assert error_text(excinfo) == (
        "pipelines.x.data.label_column: every sequence has the label 'a'; classification needs two classes or more"
    )


def test_no_training_sequences(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        write_sequences(
            tmp_path, ragged([2] * 3), ["a", "b", "a"], np.array([1, 2, 2], np.int8), "none", None, WHERE, {}
        )
    assert error_text(excinfo) == "pipelines.x.data.split: no training sequences (val 1, test 2)"


def test_empty_sequence_names_its_id(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("id,label,s0,s1\nu,A,1,2\nv,B,,\n")
    with pytest.raises(DataError) as excinfo:
        prepare_sequence_features(wide_spec(path, id_column="id"), tmp_path / "out", WHERE)
    assert error_text(excinfo) == "pipelines.x.data: line 3 (id 'v') is an empty sequence (no steps)"


def test_wide_interior_empty_cell_names_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("label,s0,s1,s2\nA,1,,3\nB,1,2,3\n")
    with pytest.raises(DataError) as excinfo:
        read_sequence_table(wide_spec(path), WHERE)
    assert error_text(excinfo) == (
        f"pipelines.x.data.value_columns: {path} has 1 empty cell(s) before the last value of their row "
        "(only trailing cells may be empty): line 2 column 's1'"
    )


def test_wide_empty_label_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("label,s0\nA,1\n,2\n")
    with pytest.raises(DataError) as excinfo:
        read_sequence_table(wide_spec(path), WHERE)
    assert error_text(excinfo) == f"pipelines.x.data.label_column: {path} has 1 empty cell(s) in 'label': line 3"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("s1,1,0,p\ns1,2,0,q\ns2,1,0,p\n", "1 series with more than one 'label': 's1' ('p', 'q')"),
        ("s1,1,0,\ns1,2,0,\ns2,1,0,p\n", "1 series with no 'label' at all: 's1'"),
        ("s1,1,0,p\ns1,2,0,\ns2,1,0,p\n", "1 series with an empty 'label' cell: 's1'"),
    ],
)
def test_long_label_must_be_one_per_series(tmp_path: Path, rows: str, message: str) -> None:
    path = tmp_path / "long.csv"
    path.write_text("id,a,b,label\n" + rows)
    with pytest.raises(DataError) as excinfo:
        read_sequence_table(long_spec(path), WHERE)
    assert error_text(excinfo) == f"pipelines.x.data.label_column: {message}"


def test_long_split_column_must_be_constant_per_series(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text("id,a,b,label,part\ns1,1,0,p,train\ns1,2,0,p,test\n")
    with pytest.raises(DataError) as excinfo:
        read_sequence_table(long_spec(path, split={"column": "part"}), WHERE)
    assert error_text(excinfo) == (
        "pipelines.x.data.split.column: 1 series with more than one 'part': 's1' ('test', 'train')"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "id,a,b,label\ns1,1,,p\n",
            "pipelines.x.data.value_columns: {path} has 1 empty value cell(s): line 2 column 'b' (series 's1')",
        ),
        (
            "id,a,b,label\ns1,1,x,p\n",
            "pipelines.x.data: {path} has 1 non-numeric or infinite cell(s): line 2 column 'b': 'x'",
        ),
        ("id,a,b,label\n,1,2,p\n", "pipelines.x.data.id_column: {path} has 1 empty cell(s) in 'id': line 2"),
        ("id,a,label\ns1,1,p\n", "pipelines.x.data: {path} has no column(s) ['b']; available: ['id', 'a', 'label']"),
        ("id,a,b,label\n", "pipelines.x.data.path: {path} has a header but no data rows"),
    ],
)
def test_long_bad_cells(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "long.csv"
    path.write_text(body)
    with pytest.raises(DataError, match=re.escape(message.format(path=path))):
        read_sequence_table(long_spec(path), WHERE)


def test_long_repeated_and_unreadable_times(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text("id,t,a,b,label\ns1,1,1,0,p\ns1,1,2,0,p\n")
    with pytest.raises(DataError) as excinfo:
        read_sequence_table(long_spec(path, time_column="t"), WHERE)
    assert error_text(excinfo) == "pipelines.x.data.time_column: 1 repeated time(s) within a series: series 's1' at '1'"
    path.write_text("id,t,a,b,label\ns1,1,1,0,p\ns1,soon,2,0,p\n")
    with pytest.raises(DataError) as excinfo:
        read_sequence_table(long_spec(path, time_column="t"), WHERE)
    assert error_text(excinfo) == (
        f"pipelines.x.data.time_column: {path} has 1 time(s) in 't' that are neither numbers nor dates: line 3: 'soon'"
    )


def test_missing_store_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no prepared sequences in"):
        load_sequences(tmp_path)


def test_long_csv_date_strings_order_the_steps(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text("id,day,a,b,label\ns1,2021-03-02,2,0,p\ns1,2021-02-28,1,0,p\ns2,2021-01-01,5,0,q\n")
    table = read_sequence_table(long_spec(path, time_column="day"), WHERE)
    np.testing.assert_array_equal(table.sequences[0][:, 0], [1, 2])
