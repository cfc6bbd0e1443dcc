"""The demo data: forecasting CSVs unchanged, the order-dependent series set, and the digits as PNG folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lstmflow.data.demo import AUDIO_DEMO_RATE, CHIRP_CLASSES, ORDER_CLASSES, build_audio_demo, build_demo_data

#: sha256 of the forecasting CSVs as written before the classification sets were added: their DVC hashes, and so
#: every forecasting pipeline's cached features, must not change.
FORECAST_SHA256 = {
    "sunspots.csv": "508bdf84f8976d8ea08f3730690b7a51f586a12bd867e9284b2be4097f78a2aa",
    "co2.csv": "5a7c084ecf8809b291a7269b116a3ae53fc0d6b219d7a9852c13cb1f6583b3e4",
}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    build_demo_data(out)
    return out


def test_forecasting_files_are_byte_identical(demo_dir: Path) -> None:
    for name, digest in FORECAST_SHA256.items():
        assert hashlib.sha256((demo_dir / name).read_bytes()).hexdigest() == digest


def test_build_is_deterministic(demo_dir: Path, tmp_path: Path) -> None:
    build_demo_data(tmp_path)
    files = sorted(p.relative_to(demo_dir) for p in demo_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for name in files:
        assert (demo_dir / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_order_sequences_need_the_order(demo_dir: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    table = pd.read_csv(demo_dir / "order_sequences.csv")
    assert list(table.columns) == ["series_id", "step", "x", "label"]
    series = table.groupby("series_id", sort=False)
    lengths = series["x"].size()
    assert series.ngroups == 600 and lengths.between(40, 120).all()
    labels = series["label"].first()
    assert labels.value_counts().to_dict() == {name: 200 for name in ORDER_CLASSES}
    assert (series["label"].nunique() == 1).all()
    order_free = np.column_stack([series["x"].mean(), series["x"].std(), lengths])
    accuracy = cross_val_score(LogisticRegression(max_iter=1000), order_free, labels, cv=5).mean()
    assert accuracy <= 0.5  # chance is 1/3


def test_order_sequences_carry_their_class_in_the_order(demo_dir: Path) -> None:
    """The order does hold the class: a hand rule (is there a bump before / after the deepest dip?) reads it."""
    table = pd.read_csv(demo_dir / "order_sequences.csv")
    rule = {(False, True): "dip-bump-bump", (True, True): "bump-dip-bump", (True, False): "bump-bump-dip"}
    right = 0
    for _, one in table.groupby("series_id", sort=False):
        smooth = np.convolve(one["x"].to_numpy(), np.ones(5) / 5, mode="same")
        dip = int(np.argmin(smooth))
        bump_before, bump_after = smooth[:dip].max(initial=0) > 0.5, smooth[dip + 1 :].max(initial=0) > 0.5
        right += rule.get((bump_before, bump_after)) == one["label"].iloc[0]
    assert right / 600 > 0.8


def test_digits_are_grayscale_pngs_in_a_folder_per_label(demo_dir: Path) -> None:
    from sklearn.datasets import load_digits

    root = demo_dir / "digits"
    assert sorted(p.name for p in root.iterdir()) == [str(d) for d in range(10)]
    files = sorted(root.glob("*/*.png"))
    assert len(files) == 1797
    digits = load_digits()
    for index in (0, 42, 1796):
        path = root / str(digits.target[index]) / f"{index:04d}.png"
        with Image.open(path) as image:
            assert image.mode == "L" and image.size == (8, 8)
            np.testing.assert_array_equal(np.asarray(image), digits.images[index].astype(np.uint8) * 15)


def test_audio_demo_is_deterministic_chirps_whose_class_is_the_pitch_order(tmp_path: Path) -> None:
    import soundfile

    folders = build_audio_demo(tmp_path / "a")
    build_audio_demo(tmp_path / "b")
    assert [folder.name for folder in folders] == list(CHIRP_CLASSES)
    for folder in folders:
        files = sorted(folder.glob("*.wav"))
        assert len(files) == 100
        for file in files:
            assert file.read_bytes() == (tmp_path / "b" / folder.name / file.name).read_bytes(), file
            samples, rate = soundfile.read(file)
            assert rate == AUDIO_DEMO_RATE and samples.ndim == 1 and 0.5 <= len(samples) / rate <= 1.0
            # Zero crossings per third of the clip follow the pitch: low, high or in between as the class says.
            thirds = [np.count_nonzero(np.diff(np.signbit(part))) for part in np.array_split(samples, 3)]
            start, _middle, end = CHIRP_CLASSES[folder.name]
            if start < end:
                assert thirds[0] < thirds[2], (file, thirds)
            elif start > end:
                assert thirds[0] > thirds[2], (file, thirds)
            else:
                assert thirds[1] > max(thirds[0], thirds[2]), (file, thirds)


@pytest.mark.parametrize(("recorded", "refused"), [("an-older-version", False), (None, True)])
def test_a_file_missing_from_demo_data_of_an_older_lstmflow_waits_for_the_rebuild(
    tmp_path: Path, recorded: str | None, refused: bool
) -> None:
    """After an upgrade that adds a demo file, the demo data on disk lack it until DVC runs the stage again (its
    code version changed): the probe lets the run go on to rebuild; with the same version the file is a typo."""
    import shutil

    import yaml

    from lstmflow.config import validate_pipeline
    from lstmflow.errors import DataError
    from lstmflow.ops.probe import probe
    from lstmflow.ops.steps import stage_versions

    shutil.copy(Path(__file__).parents[1] / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "sunspots.csv").write_text("year,sunactivity\n1700,5\n")
    version = recorded or stage_versions()["datasets_version"]
    params = {"params.yaml": {"lstmflow.datasets_version": version}}
    outs = [{"path": "data/raw", "hash": "md5", "md5": "0" * 32 + ".dir", "size": 1, "nfiles": 1}]
    lock = {"schema": "2.0", "stages": {"demo_data": {"cmd": "python -m lstmflow.data.demo data/raw", "params": params,
                                                      "outs": outs}}}  # fmt: skip
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    raw = {"task": "translate", "data": {"kind": "pairs", "path": "data/raw/numbers_en_fr.csv"}}
    spec = validate_pipeline("numbers", raw, tmp_path)
    if refused:
        with pytest.raises(DataError, match="is not in .*which DVC stage 'demo_data' built already"):
            probe(spec, tmp_path)
    else:
        assert probe(spec, tmp_path) == spec  # left for the prepare step, after DVC has rebuilt the demo data
