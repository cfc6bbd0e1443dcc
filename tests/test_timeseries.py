"""Time-series ingestion and windowing: exact data errors, default rules, no look-ahead, views, batch order."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from statsmodels.tsa.stattools import kpss

from lstmflow.config import PipelineSpec
from lstmflow.data.demo import build_demo_data
from lstmflow.data.timeseries import (
    EpochOrder,
    Features,
    Preprocessing,
    auto_transform,
    infer_season,
    load_features,
    prepare_features,
    read_series,
    resolve_data,
)
from lstmflow.data.timeseries.prepare import SMOOTHED_MIN_WINDOWS
from lstmflow.data.timeseries.preprocessing import _trends, differenced
from lstmflow.errors import DataError
from lstmflow.ops.probe import model_for

torch.set_num_threads(1)


def spec_for(path: Path, **data: object) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "name": "demo",
            "data": {"path": str(path), "target": "y", **data},
            "model": {"layers": [{"lstm": {"units": 4}}]},
        }
    )


def write(tmp_path: Path, text: str, name: str = "series.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def monthly_csv(
    tmp_path: Path, values: np.ndarray, name: str = "series.csv", feature: np.ndarray | None = None
) -> Path:
    """A month-indexed table with target ``y`` (and feature ``x`` when given)."""
    months = pd.date_range("2000-01-01", periods=len(values), freq="MS").strftime("%Y-%m-%d")
    frame = pd.DataFrame({"t": months, "y": values})
    if feature is not None:
        frame["x"] = feature
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def seasonal(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 20 + 3 * np.sin(2 * np.pi * np.arange(rows) / 12) + rng.normal(0, 0.3, rows)


def prepared(tmp_path: Path, path: Path, out: str = "features", **data: object) -> tuple[dict, Features]:
    """Resolve, prepare into ``tmp_path / out`` and load back: the path the pipeline takes."""
    spec = resolve_data(spec_for(path, time_column="t", **data))
    summary = prepare_features(spec.data, spec.evaluate.season, tmp_path / out)
    return summary, load_features(tmp_path / out)


def test_writing_features_leaves_torch_unimported_until_a_batch_is_taken(tmp_path: Path) -> None:
    """A DVC stage's process only writes features: torch's import would be a second of a new project's first run."""
    path = monthly_csv(tmp_path, seasonal(120))
    script = f"""
import sys
from pathlib import Path
from lstmflow.config import PipelineSpec
from lstmflow.data.timeseries import load_features, prepare_features, resolve_data
raw = {{"name": "demo", "data": {{"path": {str(path)!r}, "target": "y", "time_column": "t"}},
       "model": {{"layers": [{{"lstm": {{"units": 4}}}}]}}}}
spec = resolve_data(PipelineSpec.model_validate(raw))
prepare_features(spec.data, spec.evaluate.season, Path({str(tmp_path / "features")!r}))
print("torch" in sys.modules)
x, y = next(load_features(Path({str(tmp_path / "features")!r})).windows("train").batches(4))
print("torch" in sys.modules, type(x).__name__, tuple(x.shape)[0])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "Tensor", "4"]


# ------------------------------------------------------------------------------------------ reading


def test_read_series_puts_targets_then_features_indexed_by_time(tmp_path: Path) -> None:
    path = write(tmp_path, "t,x,y,unused\n2020-01-01,1,10,a\n2020-02-01,2,11,b\n2020-03-01,3,12,c\n")
    frame = read_series(spec_for(path, time_column="t", features=["x"]).data)
    assert list(frame.columns) == ["y", "x"]
    assert isinstance(frame.index, pd.DatetimeIndex) and frame.index.name == "t"
    assert frame["y"].tolist() == [10.0, 11.0, 12.0]
    assert frame.attrs["gaps_filled"] == 0


def test_interior_gaps_are_interpolated_linearly_and_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "t,y,x\n1,1,5\n2,,\n3,3,7\n4,,8\n5,,9\n6,6,10\n")
    frame = read_series(spec_for(path, time_column="t", features=["x"]).data)
    assert frame["y"].tolist() == [1, 2, 3, 4, 5, 6]
    assert frame["x"].tolist() == [5, 6, 7, 8, 9, 10]
    assert frame.attrs["gaps_filled"] == 4
    assert frame.index.tolist() == [1, 2, 3, 4, 5, 6]


def test_parquet_is_read_and_rows_are_named_by_position(tmp_path: Path) -> None:
    path = tmp_path / "series.parquet"
    pd.DataFrame({"y": [1.0, np.nan, 3.0, np.nan, 5.0]}).to_parquet(path)
    assert read_series(spec_for(path).data)["y"].tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(DataError, match=r"2 empty cell\(s\) inside the series: row 2 column 'y', row 4 column 'y'"):
        read_series(spec_for(path, gaps="error").data)

    indexed = tmp_path / "indexed.parquet"  # time saved as the index comes back as a column
    months = pd.date_range("2001-01-01", periods=5, freq="MS", name="t")
    pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0, 5.0]}, index=months).to_parquet(indexed)
    assert read_series(spec_for(indexed, time_column="t").data).index.equals(months)


@pytest.mark.parametrize(
    ("text", "data", "message"),
    [
        ("t,y\n2001,1\n2003,2\n2002,3\n", {}, "2002 at line 4 comes after 2003"),
        ("t,y\n2001,1\n2002,2\n2002,3\n", {}, "duplicate timestamp(s) in 't': 2002 at line 3 and line 4"),
        ("t,y\n2020-01-01,1\n2020-02-01,2\nsoon,3\n", {}, "nor dates in the format of the first one: line 4: 'soon'"),
        ("t,y\n2001,1\n2002,abc\n2003,4\n", {}, "1 non-numeric or infinite cell(s): line 3 column 'y': 'abc'"),
        ("t,y\n2001,1\n2002,2\n2003,inf\n", {}, "1 non-numeric or infinite cell(s): line 4 column 'y': 'inf'"),
        ("t,y\n2001,1\n2002,2\n", {"features": ["z", "w"]}, "has no column(s) ['z', 'w']; available: ['t', 'y']"),
        ("t,y\n2001,1\n2002,\n2003,3\n", {"gaps": "error"}, "1 empty cell(s) inside the series: line 3 column 'y'"),
        ("t,y\n2001,\n2002,\n2003,3\n", {}, "column 'y' of {path} starts with 2 empty cell(s) (line 2 to line 3)"),
        ("t,y\n2001,1\n2002,2\n2003,\n", {}, "column 'y' of {path} ends with 1 empty cell(s) (line 4 to line 4)"),
        ("t,y\n2001,1\n,2\n", {}, "1 empty timestamp(s) in 't': line 3"),
        ("t,y\n2001,1\n", {"features": ["y"]}, "data.features: ['y'] also listed in data.target"),
    ],
)
def test_bad_tables_name_the_rows_and_columns(tmp_path: Path, text: str, data: dict, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DataError) as caught:
        read_series(spec_for(path, time_column="t", **data).data)
    assert message.format(path=path) in str(caught.value)


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"pipelines.demo.data.path: no file at .*nowhere.csv"):
        resolve_data(spec_for(tmp_path / "nowhere.csv"))
    with pytest.raises(DataError, match=r"must be a .csv or .parquet file, got suffix '.txt'"):
        read_series(spec_for(write(tmp_path, "y\n1\n", "series.txt")).data)


def test_too_short_names_the_lengths(tmp_path: Path) -> None:
    path = monthly_csv(tmp_path, seasonal(57))  # train 41 rows (57 - 8 - 8)
    with pytest.raises(DataError) as caught:
        resolve_data(spec_for(path, time_column="t", window=48, horizon=12, transform="none"))
    expected = "pipelines.demo.data: the training part has 41 rows but window 48 + horizon 12 needs at least 60"
    assert expected in str(caught.value)
    with pytest.raises(DataError, match="the validation part has 8 rows but horizon 12 needs at least 12"):
        resolve_data(spec_for(path, time_column="t", window=4, horizon=12, transform="none"))


# ------------------------------------------------------------------------------------- default rules


@pytest.mark.parametrize(
    ("freq", "season"),
    [("h", 24), ("D", 7), ("W-SUN", 52), ("MS", 12), ("ME", 12), ("QS", 4), ("YS", 1), ("15min", 1)],
)
def test_infer_season_from_the_spacing_of_the_time_index(freq: str, season: int) -> None:
    frame = pd.DataFrame({"y": range(30)}, index=pd.date_range("2001-01-01", periods=30, freq=freq))
    assert infer_season(frame) == season


def test_infer_season_survives_a_missing_month_and_ignores_numbers() -> None:
    months = pd.date_range("2001-01-01", periods=30, freq="MS").delete(7)
    assert infer_season(pd.DataFrame({"y": range(29)}, index=months)) == 12
    assert infer_season(pd.DataFrame({"y": range(30)}, index=pd.Index(range(1700, 1730)))) == 1


def test_resolve_fills_defaults_and_keeps_explicit_values(tmp_path: Path) -> None:
    path = monthly_csv(tmp_path, seasonal(200))
    resolved = resolve_data(spec_for(path, time_column="t"))
    assert (resolved.data.window, resolved.data.horizon, resolved.evaluate.season) == (48, 12, 12)
    explicit = spec_for(path, time_column="t", window=20, horizon=3).model_copy(
        update={"evaluate": spec_for(path).evaluate.model_copy(update={"season": 6})}
    )
    resolved = resolve_data(explicit)
    assert (resolved.data.window, resolved.data.horizon, resolved.evaluate.season) == (20, 3, 6)


def test_default_window_is_capped_to_leave_eight_training_windows(tmp_path: Path) -> None:
    path = monthly_csv(tmp_path, seasonal(80))  # train 56 rows; 48 + 12 would leave none
    summary, _ = prepared(tmp_path, path, transform="none")
    assert summary["window"] == 56 - 12 - 7 and summary["n_train"] == 8
    summary, _ = prepared(tmp_path, path, out="strided", transform="none", stride=2)
    assert summary["window"] == 56 - 12 - 14 and summary["n_train"] == 8


def test_auto_transform_rule() -> None:
    t = np.arange(120.0)
    rng = np.random.default_rng(0)
    assert auto_transform(5 + 0.5 * t + rng.normal(0, 1, 120)) == "difference"
    assert auto_transform(np.where(t % 7 == 0, 50.0, 1.0) + rng.uniform(0, 0.5, 120)) == "log"
    assert auto_transform(np.sin(t / 3)) == "none"
    assert auto_transform(np.full(120, 4.0)) == "none"
    assert auto_transform(np.where(t % 7 == 0, 50.0, 0.0)) == "none"  # ratio > 10 but not all > 0


@pytest.mark.parametrize(("explained", "trends"), [(0.81, True), (0.79, False)])
def test_a_trend_is_a_line_explaining_80_percent_of_variance(explained: float, trends: bool) -> None:
    t = np.arange(100.0)
    noise = np.random.default_rng(0).normal(size=100)
    noise -= np.polyval(np.polyfit(t, noise, 1), t)  # orthogonal to the line, so R² is exact
    trend_ss = ((t - t.mean()) ** 2).sum()
    noise *= np.sqrt(trend_ss * (1 / explained - 1) / (noise**2).sum())
    assert _trends(100 + t + noise) is trends


def test_auto_differences_a_wandering_level_but_not_a_stationary_one() -> None:
    shocks = np.random.default_rng(0).normal(size=300)
    assert auto_transform(np.cumsum(shocks)) == "difference"  # a random walk: KPSS rejects a stationary level
    ar = np.zeros(300)
    for i in range(1, 300):
        ar[i] = 0.5 * ar[i - 1] + shocks[i]
    assert auto_transform(ar) == "none"


def test_a_short_wandering_level_that_kpss_alone_keeps_is_differenced() -> None:
    walk = 50 + np.cumsum(np.random.default_rng(6).normal(size=96))
    assert kpss(walk, regression="c", nlags="auto", result_object=True).pvalue >= 0.05  # KPSS alone keeps the level
    assert auto_transform(walk) == "difference"  # the ADF test cannot reject its unit root
    ar = np.zeros(96)
    for i, shock in enumerate(np.random.default_rng(6).normal(size=95), start=1):
        ar[i] = 0.5 * ar[i - 1] + shock
    assert auto_transform(ar) == "none"  # a short stationary series still keeps its level


def test_auto_seasonally_differences_a_strong_season_whose_level_wanders() -> None:
    rng = np.random.default_rng(1)
    stable = seasonal(144)
    wandering = stable + np.cumsum(rng.normal(0, 0.3, 144))  # no straight trend; KPSS rejects a stationary level
    assert auto_transform(wandering, 12) == "seasonal_difference"
    assert auto_transform(stable, 12) == "none"  # a stationary level keeps its season for the network to learn
    assert auto_transform(wandering, 1) == "difference"  # no calendar season: the first difference alone
    weak = 20 + 0.3 * np.sin(2 * np.pi * np.arange(144) / 12) + np.cumsum(rng.normal(0, 1, 144))
    assert auto_transform(weak, 12) == "difference"  # STL seasonal strength below 0.64


def test_auto_looks_at_the_training_part_only(tmp_path: Path) -> None:
    flat_then_trend = np.concatenate([seasonal(140), 20 + np.arange(60.0) * 5])  # the trend is all in val/test
    summary, _ = prepared(tmp_path, monthly_csv(tmp_path, flat_then_trend))
    assert summary["transform"] == "none"
    assert auto_transform(flat_then_trend, 12) != "none"  # what the whole series would have given


def test_log_needs_positive_values_everywhere(tmp_path: Path) -> None:
    values = seasonal(100)
    values[90] = 0.0
    with pytest.raises(DataError) as caught:
        resolve_data(spec_for(monthly_csv(tmp_path, values), time_column="t", transform="log"))
    expected = "log (requested) needs values > 0, but column 'y' has 1 value(s) <= 0: 0.0 at 2007-07-01"
    assert expected in str(caught.value)


# ------------------------------------------------------------------------------------ no look-ahead


def test_preprocessing_is_fitted_on_training_rows_only(tmp_path: Path) -> None:
    values, feature = seasonal(200), np.linspace(0.0, 1.0, 200) ** 2
    altered = values.copy()
    altered[140:] *= 10  # val (140..169) and test (170..199) only
    _, features = prepared(tmp_path, monthly_csv(tmp_path, values, feature=feature), features=["x"], scale="minmax")
    altered_path = monthly_csv(tmp_path, altered, "altered.csv", feature=feature)
    _, other = prepared(tmp_path, altered_path, "other", features=["x"], scale="minmax")

    assert features.meta["split"] == {"train_end": 140, "val_end": 170}
    assert features.preprocessing == other.preprocessing
    train_rows = np.column_stack([values[:140], feature[:140]])
    assert features.preprocessing.offset == pytest.approx(train_rows.min(axis=0))
    assert features.preprocessing.factor == pytest.approx(np.ptp(train_rows, axis=0))

    train, train_other = features.windows("train"), other.windows("train")
    assert (train.origins + features.horizon <= 140).all()
    np.testing.assert_array_equal(train.inputs, train_other.inputs)
    np.testing.assert_array_equal(train.targets, train_other.targets)
    val = features.windows("val")
    assert val.origins[0] == 140 and val.origins[-1] + features.horizon == 170
    assert np.diff(val.origins).tolist() == [1] * (len(val) - 1)


def test_standard_scaling_of_a_differenced_target_uses_training_differences(tmp_path: Path) -> None:
    values = 100 + 0.8 * np.arange(200.0) + seasonal(200)
    summary, features = prepared(tmp_path, monthly_csv(tmp_path, values), transform="difference")
    assert summary["transform"] == "difference"
    steps = np.diff(values[:140])
    assert features.preprocessing.offset == pytest.approx([steps.mean()])
    assert features.preprocessing.factor == pytest.approx([steps.std()])
    assert features.windows("train").origins[0] == features.window + 1  # row 0 has no difference
    assert not features.series[0].any()


# --------------------------------------------------------------------------------- windows and order


def test_windows_are_views_of_the_series(tmp_path: Path) -> None:
    path = monthly_csv(tmp_path, seasonal(200), feature=np.arange(200.0))
    _, features = prepared(tmp_path, path, features=["x"], stride=3)
    train = features.windows("train")
    assert train.inputs.base is not None and not train.inputs.flags.owndata
    assert np.shares_memory(train.inputs, features.series)
    assert np.shares_memory(train.targets, features.series)
    assert train.inputs.shape == (len(train), features.window, 2)
    assert train.targets.shape == (len(train), features.horizon, 1)
    t0 = int(train.origins[3])
    x, y = train[3]
    np.testing.assert_array_equal(x.numpy(), features.series[t0 - features.window : t0])
    np.testing.assert_array_equal(y.numpy(), features.series[t0 : t0 + features.horizon, :1])
    assert np.diff(train.origins).tolist() == [3] * (len(train) - 1)
    np.testing.assert_array_equal(train.last_raw(), features.raw[train.origins - 1])


def test_batches_are_reproducible_per_seed_and_epoch(tmp_path: Path) -> None:
    _, features = prepared(tmp_path, monthly_csv(tmp_path, seasonal(300)), transform="none")
    train = features.windows("train")

    def first_steps(**order: int) -> np.ndarray:
        return np.concatenate([x[:, 0, 0].numpy() for x, _ in train.batches(16, shuffle=True, **order)])

    epoch0 = first_steps(seed=1, epoch=0)
    np.testing.assert_array_equal(epoch0, first_steps(seed=1, epoch=0))
    assert not np.array_equal(epoch0, first_steps(seed=1, epoch=1))
    assert not np.array_equal(epoch0, first_steps(seed=2, epoch=0))
    np.testing.assert_array_equal(np.sort(epoch0), np.sort(train.inputs[:, 0, 0]))  # every window once

    sizes = [(x.shape, y.shape, x.dtype) for x, y in train.batches(16)]
    assert sizes[0] == ((16, features.window, 1), (16, features.horizon, 1), torch.float32)
    assert sum(shape[0][0] for shape in sizes) == len(train)
    sequential = torch.cat([x for x, _ in train.batches(16)])
    np.testing.assert_array_equal(sequential.numpy(), train.inputs)


def test_a_batch_is_the_callers_own_copy(tmp_path: Path) -> None:
    """Writing to a batch must leave the series alone; horizon 1 makes each y slice look contiguous."""
    _, features = prepared(tmp_path, monthly_csv(tmp_path, seasonal(100)), transform="none", horizon=1)
    for shuffle in (False, True):
        x, y = next(features.windows("train").batches(4, shuffle=shuffle))
        assert not np.shares_memory(x.numpy(), features.series) and not np.shares_memory(y.numpy(), features.series)
        assert x.numpy().flags.writeable and y.numpy().flags.writeable


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 1000, 40_000])
def test_epoch_order_is_a_permutation(n: int) -> None:
    order = EpochOrder(n, seed=3, epoch=2)
    pieces = np.concatenate([order.indices(start, min(start + 777, n)) for start in range(0, n, 777)])
    np.testing.assert_array_equal(np.sort(pieces), np.arange(n))
    np.testing.assert_array_equal(pieces, EpochOrder(n, seed=3, epoch=2).indices(0, n))


def test_epoch_order_holds_nothing_per_window() -> None:
    """Why the order is a keyed permutation computed piece by piece, not ``rng.permutation(n)``: that would hold
    8 bytes per window (twice a float32 series with one column), this only the positions in hand."""
    n, start, piece = 10**12, 7 * 10**11, 16_384  # rng.permutation(n) would need 7.3 TiB
    tracemalloc.start()
    picked = EpochOrder(n, seed=0, epoch=0).indices(start, start + piece)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(np.unique(picked)) == piece and picked.min() >= 0 and picked.max() < n
    assert peak < 2**20 * 4


# -------------------------------------------------------------------------- encode / decode, serving


@pytest.mark.parametrize("transform", ["none", "log", "difference"])
@pytest.mark.parametrize("scale", ["standard", "minmax"])
def test_decode_inverts_encode(tmp_path: Path, transform: str, scale: str) -> None:
    values = 50 + 0.3 * np.arange(160.0) + seasonal(160)
    path = monthly_csv(tmp_path, values, feature=seasonal(160, seed=1))
    _, features = prepared(tmp_path, path, features=["x"], transform=transform, scale=scale)
    test = features.windows("test")
    restored = features.preprocessing.decode(test.targets, test.last_raw())
    np.testing.assert_allclose(restored, test.targets_original(), rtol=1e-5)

    # The served model sees raw rows: encoding the last context rows gives exactly the training inputs.
    prep = Preprocessing.from_dict(json.loads(json.dumps(features.preprocessing.to_dict())))
    raw_rows = np.column_stack([values, seasonal(160, seed=1)])
    t0, window = int(test.origins[0]), features.window
    encoded = prep.encode(raw_rows[t0 - prep.context_rows(window) : t0])
    np.testing.assert_allclose(encoded, features.series[t0 - window : t0], rtol=1e-6)


def test_constant_feature_is_not_divided_by_zero(tmp_path: Path) -> None:
    _, features = prepared(tmp_path, monthly_csv(tmp_path, seasonal(120), feature=np.full(120, 7.0)), features=["x"])
    assert features.preprocessing.factor[1] == 1.0
    assert np.isfinite(features.series).all()


def test_prepare_writes_deterministic_files(tmp_path: Path) -> None:
    path = monthly_csv(tmp_path, seasonal(120))
    prepared(tmp_path, path, out="a")
    prepared(tmp_path, path, out="b")
    for name in ("series.npy", "raw.npy", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["time"]["first"] == "2000-01-01" and len(meta["time"]["values"]) == 120


def test_demo_data_pass_the_checks(tmp_path: Path) -> None:
    written = build_demo_data(tmp_path)
    assert [p.name for p in written] == [
        "sunspots.csv",
        "co2.csv",
        "order_sequences.csv",
        "agents.csv",
        "numbers_en_fr.csv",
        "python_docs.txt",
        "digits",
        "chirps",
        "speech",
        "shapes",
        "LICENSE-DATA.md",
    ]
    sunspots = resolve_data(spec_for(tmp_path / "sunspots.csv", time_column="year", target="sunactivity"))
    # Yearly: the calendar gives no season, the data's ~11-year solar cycle does (window two cycles, horizon 1).
    assert (sunspots.data.window, sunspots.data.horizon, sunspots.evaluate.season) == (22, 1, 11)
    co2 = read_series(spec_for(tmp_path / "co2.csv", time_column="date", target="co2").data)
    assert len(co2) == 526 and co2.attrs["gaps_filled"] == 5 and infer_season(co2) == 12


# ------------------------------------------------------------------------- test start and test points


def test_test_points_and_test_start_place_the_test_part(tmp_path: Path) -> None:
    path = monthly_csv(tmp_path, seasonal(120))
    by_points = resolve_data(spec_for(path, time_column="t", split={"test_points": 24}))
    summary = prepare_features(by_points.data, by_points.evaluate.season, tmp_path / "points")
    assert (summary["train_rows"], summary["val_rows"], summary["test_rows"]) == (82, 14, 24)  # val: 15% of 96
    assert summary["split"] == "test_points"
    by_date = resolve_data(spec_for(path, time_column="t", split={"test_start": "2008-01-01"}))
    summary = prepare_features(by_date.data, by_date.evaluate.season, tmp_path / "date")
    assert (summary["train_rows"], summary["val_rows"], summary["test_rows"]) == (82, 14, 24)
    assert load_features(tmp_path / "date").meta["time"]["values"][96] == "2008-01-01"  # the first test row

    years = write(tmp_path, "year,y\n" + "".join(f"{1900 + i},{np.sin(i / 2):.4f}\n" for i in range(60)), "years.csv")
    by_year = resolve_data(spec_for(years, time_column="year", split={"test_start": 1950, "val": 0.2}))
    summary = prepare_features(by_year.data, by_year.evaluate.season, tmp_path / "year")
    assert (summary["train_rows"], summary["val_rows"], summary["test_rows"]) == (40, 10, 10)
    rows = write(tmp_path, "y\n" + "".join(f"{np.sin(i / 2):.4f}\n" for i in range(60)), "rows.csv")
    by_row = resolve_data(spec_for(rows, split={"test_start": 45, "val": 0.2}))
    summary = prepare_features(by_row.data, by_row.evaluate.season, tmp_path / "row")
    assert (summary["train_rows"], summary["val_rows"], summary["test_rows"]) == (36, 9, 15)


def test_the_test_part_is_given_one_way_and_inside_the_series(tmp_path: Path) -> None:
    path = monthly_csv(tmp_path, seasonal(120))
    with pytest.raises(
        ValueError, match="give the test part one way: test, test_start or test_points; got test 0.2, test_points 12"
    ):
        spec_for(path, time_column="t", split={"test": 0.2, "test_points": 12})
    with pytest.raises(ValueError, match="give the test part as files or as test_start '2008-01-01', not both"):
        spec_for(path, time_column="t", split={"test_start": "2008-01-01", "files": {"test": str(path)}})
    with pytest.raises(DataError) as caught:
        resolve_data(spec_for(path, time_column="t", split={"test_start": "2030-01-01"}))
    assert str(caught.value) == (
        "pipelines.demo.data.split.test_start: '2030-01-01' leaves no test rows; "
        "the series runs from 2000-01-01 00:00:00 to 2009-12-01 00:00:00 (120 rows)"
    )
    with pytest.raises(DataError, match=r"split.test_start: 'soon' is neither a date nor a row number"):
        resolve_data(spec_for(path, time_column="t", split={"test_start": "soon"}))
    with pytest.raises(DataError, match=r"split.test_points: 120 test points leave no training rows"):
        resolve_data(spec_for(path, time_column="t", split={"test_points": 120}))


# ---------------------------------------------------------------------------- season from the data


def yearly_csv(tmp_path: Path, values: np.ndarray, name: str = "yearly.csv") -> Path:
    frame = pd.DataFrame({"t": np.arange(1700, 1700 + len(values)), "y": values})
    frame.to_csv(tmp_path / name, index=False)
    return tmp_path / name


def test_yearly_data_get_the_season_of_their_own_cycle(tmp_path: Path) -> None:
    import statsmodels.api as sm

    sunspots = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    resolved = resolve_data(spec_for(yearly_csv(tmp_path, sunspots), time_column="t"))
    assert (resolved.evaluate.season, resolved.data.horizon, resolved.data.window) == (11, 1, 22)
    # Noise and a random walk have no cycle: season 1, and the window stays the plain default.
    rng = np.random.default_rng(0)
    for values in (rng.normal(size=300), 50 + np.cumsum(rng.normal(size=300))):
        plain = resolve_data(spec_for(yearly_csv(tmp_path, values, "plain.csv"), time_column="t", transform="none"))
        assert (plain.evaluate.season, plain.data.window) == (1, 8)


# ------------------------------------------------------------------- multiplicative seasonality, undone


AIRLINE = [  # Box & Jenkins' monthly airline passengers (thousands), 1949-1960: the classic multiplicative series
    *(112, 118, 132, 129, 121, 135, 148, 148, 136, 119, 104, 118, 115, 126, 141, 135, 125, 149, 170, 170, 158, 133),
    *(114, 140, 145, 150, 178, 163, 172, 178, 199, 199, 184, 162, 146, 166, 171, 180, 193, 181, 183, 218, 230, 242),
    *(209, 191, 172, 194, 196, 196, 236, 235, 229, 243, 264, 272, 237, 211, 180, 201, 204, 188, 235, 227, 234, 264),
    *(302, 293, 259, 229, 203, 229, 242, 233, 267, 269, 270, 315, 364, 347, 312, 274, 237, 278, 284, 277, 317, 313),
    *(318, 374, 413, 405, 355, 306, 271, 306, 315, 301, 356, 348, 355, 422, 465, 467, 404, 347, 305, 336, 340, 318),
    *(362, 348, 363, 435, 491, 505, 404, 359, 310, 337, 360, 342, 406, 396, 420, 472, 548, 559, 463, 407, 362, 405),
    *(417, 391, 419, 461, 472, 535, 622, 606, 508, 461, 390, 432),
]


def test_auto_takes_logs_and_a_seasonal_difference_of_a_multiplicative_series_and_undoes_them(tmp_path: Path) -> None:
    values = np.array(AIRLINE, dtype=np.float64)
    assert auto_transform(values[:120], 12) == "log+seasonal_difference"
    assert auto_transform(values[:120], 1) != "log+seasonal_difference"  # no calendar season, no seasonal difference
    path = monthly_csv(tmp_path, values, feature=seasonal(144, seed=1))
    summary, features = prepared(tmp_path, path, features=["x"], split={"test_points": 12})
    assert summary["transform"] == "log+seasonal_difference" and features.meta["first_usable_row"] == 12
    expected = np.log(values[12:]) - np.log(values[:-12])
    offset, factor = features.preprocessing.offset[0], features.preprocessing.factor[0]
    np.testing.assert_allclose(features.series[12:, 0] * factor + offset, expected, rtol=1e-5, atol=1e-6)

    test = features.windows("test")
    np.testing.assert_allclose(features.preprocessing.decode(test.targets, test.history()), test.targets_original())
    with pytest.raises(ValueError, match=r"decode needs the last 12 raw row\(s\) before each forecast"):
        features.preprocessing.decode(test.targets, test.last_raw())

    # Served: the raw context rows before an origin encode to the training inputs, and a forecast decodes from them.
    prep = Preprocessing.from_dict(json.loads(json.dumps(features.preprocessing.to_dict())))
    raw_rows = np.column_stack([values, seasonal(144, seed=1)])
    t0, window = int(test.origins[0]), features.window
    encoded = prep.encode(raw_rows[t0 - prep.context_rows(window) : t0])
    np.testing.assert_allclose(encoded, features.series[t0 - window : t0], rtol=1e-6)


@pytest.mark.parametrize(
    "transform",
    [
        "seasonal_difference",
        "log+seasonal_difference+difference",
        "log+difference",
        "log+seasonal_mean_difference",
        "seasonal_mean_difference+difference",
    ],
)
def test_every_chain_is_undone_exactly_beyond_a_season(tmp_path: Path, transform: str) -> None:
    values = np.array(AIRLINE, dtype=np.float64)
    _, features = prepared(tmp_path, monthly_csv(tmp_path, values), transform=transform, horizon=18, window=24)
    for part in ("train", "val", "test"):
        windows = features.windows(part)
        restored = features.preprocessing.decode(windows.targets, windows.history())
        np.testing.assert_allclose(restored, windows.targets_original(), rtol=1e-5)


def test_a_seasonal_mean_difference_subtracts_the_mean_of_three_past_seasons(tmp_path: Path) -> None:
    values = np.array(AIRLINE, dtype=np.float64)
    _, features = prepared(tmp_path, monthly_csv(tmp_path, values), transform="log+seasonal_mean_difference")
    assert features.meta["first_usable_row"] == 36
    logs = np.log(values)
    expected = logs[36:] - (logs[24:-12] + logs[12:-24] + logs[:-36]) / 3
    offset, factor = features.preprocessing.offset[0], features.preprocessing.factor[0]
    np.testing.assert_allclose(features.series[36:, 0] * factor + offset, expected, rtol=1e-5, atol=1e-6)


def test_transform_steps_are_named_and_ordered() -> None:
    with pytest.raises(ValueError, match="steps joined by \\+ in the order log, seasonal_difference or seasonal_mean"):
        spec_for(Path("x.csv"), transform="difference+log")
    with pytest.raises(ValueError, match="one of the two"):
        spec_for(Path("x.csv"), transform="seasonal_difference+seasonal_mean_difference")
    with pytest.raises(ValueError, match="got 'sqrt'"):
        spec_for(Path("x.csv"), transform="sqrt")


def test_an_infinite_number_in_the_time_column_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "t,y\n1,1.0\n1e400,2.0\n3,3.0\n")  # found by the fuzzer in tests/test_bad_input.py
    with pytest.raises(DataError, match=r"infinite time\(s\) in 't': line 3: '1e400'"):
        read_series(spec_for(path, time_column="t").data, "pipelines.demo.data")


def test_values_beyond_the_bound_are_refused_with_the_bound_and_its_key(tmp_path: Path) -> None:
    path = monthly_csv(tmp_path, np.array([1.0, 2.0, -3e12, 4.0]))
    with pytest.raises(DataError) as caught:
        read_series(spec_for(path, time_column="t").data, "pipelines.demo.data")
    assert "pipelines.demo.data.max_abs_value" in str(caught.value) and "line 4 column 'y': -3e+12" in str(caught.value)
    assert "±1e+12" in str(caught.value)
    assert read_series(spec_for(path, time_column="t", max_abs_value=1e13).data)["y"].iloc[2] == -3e12


@pytest.mark.parametrize(
    ("transforms", "changes"),
    [
        (("difference",), True),
        (("log+seasonal_difference",), True),
        (("seasonal_mean_difference", "difference"), True),
        (("none",), False),
        (("log",), False),
        (("difference", "log"), False),  # one target not differenced: 0 is not naive for it
    ],
)
def test_targets_are_changes_only_when_every_target_is_differenced(transforms: tuple[str, ...], changes: bool) -> None:
    prep = Preprocessing(("y",) * len(transforms), transforms, "standard", (0.0,) * len(transforms), (1.0,) * 2, 12)
    assert prep.targets_are_changes is changes


def test_auto_smooths_the_seasonal_difference_only_where_enough_training_windows_remain(tmp_path: Path) -> None:
    path = monthly_csv(tmp_path, np.array(AIRLINE, dtype=np.float64))
    split = {"test_points": 12}
    one_step, features = prepared(tmp_path, path, "one", split=split, horizon=1)  # window 24: many windows left
    assert one_step["transform"] == "log+seasonal_mean_difference" and features.meta["first_usable_row"] == 36
    assert len(features.windows("train")) >= SMOOTHED_MIN_WINDOWS
    year_ahead, features = prepared(tmp_path, path, "year", split=split)  # horizon 12, window 48: too few if smoothed
    assert year_ahead["transform"] == "log+seasonal_difference" and features.meta["first_usable_row"] == 12
    assert (
        prepared(tmp_path, path, "declared", split=split, horizon=1, transform="log+seasonal_difference")[0][
            "transform"
        ]
        == "log+seasonal_difference"
    )  # a declared transform is kept as written


def forecast_leaving_the_model(path: Path, data: dict[str, object] | None = None, **sections: object) -> PipelineSpec:
    """A one-step forecast pipeline of the monthly series at ``path`` (``data`` keys added) that declares no model."""
    declared = {"path": str(path), "target": "y", "time_column": "t", "horizon": 1, **(data or {})}
    return PipelineSpec.model_validate({"name": "demo", "data": declared, **sections})


def random_walk(rows: int, seed: int) -> np.ndarray:
    return 100 + np.cumsum(np.random.default_rng(seed).normal(0.5, 1.0, rows))


def test_the_default_forecaster_gets_a_linear_autoregression_of_its_window_one_step_ahead_of_changes(
    tmp_path: Path,
) -> None:
    path = monthly_csv(tmp_path, random_walk(300, seed=0))
    resolved = resolve_data(forecast_leaving_the_model(path))
    window = resolved.data.window
    assert window is not None and window > 8  # the kernel follows the window resolved from the data
    branches, output = resolved.model.layers
    assert branches.branches is not None and output.dense is not None
    (lstm,), (linear, pooling) = branches.branches
    assert lstm.lstm is not None and lstm.lstm.units == 64
    assert linear.conv1d is not None and pooling.global_average_pool is not None
    assert (linear.conv1d.filters, linear.conv1d.kernel_size, linear.conv1d.padding) == (16, window, "valid")
    with_branch, _ = model_for(resolved)
    without, _ = model_for(resolve_data(forecast_leaving_the_model(path, {"transform": "none"})))
    count = sum(p.numel() for p in with_branch.parameters()) - sum(p.numel() for p in without.parameters())
    assert count == 16 * window + 16 + 16  # Keras: Conv1D(16, window) on 1 feature, and 16 more Dense weights
    assert resolve_data(resolved) == resolved  # a recorded spec resolves to itself


def test_one_step_ahead_auto_differences_a_level_its_tests_keep(tmp_path: Path) -> None:
    stationary = monthly_csv(tmp_path, 20 + np.random.default_rng(3).normal(0, 1, 300))
    assert auto_transform(20 + np.random.default_rng(3).normal(0, 1, 240)) == "none"  # the tests keep the level
    one_step = resolve_data(forecast_leaving_the_model(stationary))
    assert one_step.model.layers[0].branches is not None  # differenced, so the default gets its autoregression
    summary, _ = prepared(tmp_path, stationary, "one", horizon=1)
    assert summary["transform"] == "difference"
    assert prepared(tmp_path, stationary, "year", horizon=12)[0]["transform"] == "none"  # further ahead: levels
    assert prepared(tmp_path, stationary, "declared", horizon=1, transform="none")[0]["transform"] == "none"
    assert [differenced(t) for t in ("none", "log", "log+seasonal_difference")] == [
        "difference",
        "log+difference",
        "log+seasonal_difference",
    ]


def test_the_autoregression_is_left_out_where_its_rule_fails(tmp_path: Path) -> None:
    path = monthly_csv(tmp_path, random_walk(300, seed=1))
    short = monthly_csv(tmp_path, random_walk(60, seed=2), name="short.csv")
    lstm_alone = PipelineSpec.model_validate({"name": "demo", "data": {"path": str(path), "target": "y"}}).model
    space = {"model.layers[0].lstm.units": {"int": [4, 8]}}
    cases = {
        "a year ahead": forecast_leaving_the_model(path, {"horizon": None}),
        "levels kept": forecast_leaving_the_model(path, {"transform": "none"}),
        "a declared model": forecast_leaving_the_model(
            path, model={"layers": [{"lstm": {"units": 64}}, {"dense": {}}]}
        ),
        "a search": forecast_leaving_the_model(path, search={"trials": 2, "space": space}),
        "too few windows": forecast_leaving_the_model(short, {"transform": "difference"}),
    }
    for case, spec in cases.items():
        assert resolve_data(spec).model == spec.model, case
    assert cases["levels kept"].model == lstm_alone
    differenced = resolve_data(forecast_leaving_the_model(path, {"transform": "difference"}))
    assert differenced.model.layers[0].branches is not None  # the long series gets it: only the rule left it out
