"""Images as sequences: label folders and pixel tables become (H, W × C) rows, and bad input is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lstmflow.config import ImagesSpec
from lstmflow.data.images import image_rows, load_image, prepare_image_features, read_images
from lstmflow.errors import DataError

WHERE = "pipelines.digits.data"


def images_spec(path: Path, **fields: object) -> ImagesSpec:
    return ImagesSpec.model_validate({"kind": "images", "path": path, **fields})


def save_image(path: Path, pixels: np.ndarray) -> Path:
    """Write a real image file (the format from the suffix) from uint8 pixels, (H, W) or (H, W, 3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_folder(root: Path, per_label: int = 4, size: tuple[int, int] = (5, 7), rgb: bool = False) -> Path:
    """Two labels of small PNGs (height, width = size): 'bars' brighter in the top half, 'plain' uniform."""
    rng = np.random.default_rng(0)
    height, width = size
    for label in ("bars", "plain"):
        for i in range(per_label):
            pixels = rng.integers(0, 60, size=(height, width, 3) if rgb else (height, width)).astype(np.uint8)
            if label == "bars":
                pixels[: height // 2] += 150
            save_image(root / label / f"img{i}.png", pixels)
    return root


def pixel_table(rows: int = 12, height: int = 3, width: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(rows, height * width))
    table = pd.DataFrame(pixels, columns=[f"p{i}" for i in range(height * width)])
    table.insert(0, "label", ["even" if i % 2 == 0 else "odd" for i in range(rows)])
    return table


# ------------------------------------------------------------------------------------------ one image


def test_load_image_grayscale_and_rgb_rows(tmp_path: Path) -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10  # (H=2, W=3, C=3)
    path = save_image(tmp_path / "tiny.png", rgb)

    rows = load_image(path, grayscale=False)
    assert rows.dtype == np.float32 and rows.shape == (2, 9)
    np.testing.assert_array_equal(rows[1, 3:6], rgb[1, 1])  # row 1, pixel 1: its R, G, B side by side

    gray = load_image(path, grayscale=True)
    assert gray.shape == (2, 3)
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)
    np.testing.assert_array_equal(gray, expected)


def test_image_rows_is_what_load_image_uses(tmp_path: Path) -> None:
    """A served model turns an uploaded array into the same rows as the training data."""
    pixels = np.random.default_rng(2).integers(0, 256, size=(4, 6, 3)).astype(np.uint8)
    path = save_image(tmp_path / "a.png", pixels)
    np.testing.assert_array_equal(image_rows(pixels), load_image(path, grayscale=False))
    with open(path, "rb") as upload:
        np.testing.assert_array_equal(load_image(upload, grayscale=False), image_rows(pixels))
    with pytest.raises(DataError, match=r"got shape \(4,\)"):
        image_rows(np.zeros(4))


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "cats" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"this is not a png at all")
    with pytest.raises(DataError, match=r"broken\.png: not a readable image"):
        load_image(broken, grayscale=True)


def test_truncated_image_is_named(tmp_path: Path) -> None:
    whole = save_image(tmp_path / "whole.jpg", np.full((32, 32, 3), 128, dtype=np.uint8)).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg: not a readable image"):
        load_image(cut, grayscale=False)


# ------------------------------------------------------------------------------------------ folders


def test_folder_grayscale_one_feature_per_column(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images", size=(5, 7))
    found = read_images(images_spec(root), WHERE)
    assert len(found.images) == 8 and found.given_parts is None and found.skipped == 0
    assert {image.shape for image in found.images} == {(5, 7)}  # H steps of W features
    assert found.labels == ["bars"] * 4 + ["plain"] * 4  # label folders, then files, in name order
    bars = found.images[0]
    assert bars[:2].mean() > bars[3:].mean() + 100  # the top rows stay the bright ones: row order is kept


def test_folder_rgb_has_width_times_three_features(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images", size=(4, 6), rgb=True)
    found = read_images(images_spec(root, grayscale=False), WHERE)
    assert {image.shape for image in found.images} == {(4, 18)}
    first = np.asarray(Image.open(root / "bars" / "img0.png"), dtype=np.float32)  # (H, W, 3)
    np.testing.assert_array_equal(found.images[0], first.reshape(4, 18))


def test_folder_reads_jpeg_and_skips_and_counts_other_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images", per_label=2, size=(5, 7))
    save_image(root / "plain" / "extra.JPG", np.full((5, 7), 20, dtype=np.uint8))
    (root / "plain" / "notes.txt").write_text("not an image")
    (root / "bars" / "labels.csv").write_text("a,b\n")
    (root / "README.md").write_text("loose file beside the label folders")
    (root / "bars" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored, not counted
    (root / ".cache").mkdir()  # hidden folder: not a label
    found = read_images(images_spec(root), WHERE)
    assert found.labels == ["bars", "bars", "plain", "plain", "plain"]
    assert found.skipped == 3


def test_mixed_sizes_name_two_files_and_their_sizes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images", per_label=2, size=(5, 7))
    save_image(root / "plain" / "wide.png", np.zeros((5, 9), dtype=np.uint8))
    with pytest.raises(DataError, match=r"img0\.png is 7x5, .*wide\.png is 9x5") as error:
        read_images(images_spec(root), WHERE)
    assert str(error.value).startswith(f"{WHERE}.path: images differ in size")


def test_unreadable_file_in_a_folder_is_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images", per_label=2)
    (root / "plain" / "garbage.png").write_bytes(b"\x89PNG but then nothing sensible")
    with pytest.raises(DataError, match=rf"{WHERE}\.path: .*plain/garbage\.png: not a readable image"):
        read_images(images_spec(root), WHERE)


def test_empty_label_folder_and_no_label_folders(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images", per_label=2)
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no pictures here")
    with pytest.raises(DataError, match=r"label folder .*empty holds no image files"):
        read_images(images_spec(root), WHERE)

    flat = tmp_path / "flat"
    save_image(flat / "a.png", np.zeros((3, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=rf"{WHERE}\.path: .*flat has no label folders"):
        read_images(images_spec(flat), WHERE)
    with pytest.raises(DataError, match=rf"{WHERE}\.path: no folder or file at .*nowhere"):
        read_images(images_spec(tmp_path / "nowhere"), WHERE)
    with pytest.raises(DataError, match=r"must be a \.csv or \.parquet file, got suffix '\.png'"):
        read_images(images_spec(flat / "a.png"), WHERE)  # one image is not a data set


def test_folder_rejects_table_only_settings(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images", per_label=2)
    with pytest.raises(DataError, match=rf"{WHERE}\.split\.column: 'part' needs a table"):
        read_images(images_spec(root, split={"column": "part"}), WHERE)
    with pytest.raises(DataError, match=rf"{WHERE}\.shape: applies to a table of pixels"):
        read_images(images_spec(root, shape=[5, 7]), WHERE)
    with pytest.raises(DataError, match=rf"{WHERE}\.label_column: applies to a table of pixels"):
        read_images(images_spec(root, label_column="digit"), WHERE)


# ------------------------------------------------------------------------------------------ tables


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_with_shape_gives_rows_of_pixels(tmp_path: Path, suffix: str) -> None:
    table = pixel_table(rows=12, height=3, width=4)
    table["part"] = ["train"] * 8 + ["val"] * 2 + ["test"] * 2  # after the pixels: not a pixel column
    path = tmp_path / f"pixels{suffix}"
    table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path, index=False)

    found = read_images(images_spec(path, shape=[3, 4], split={"column": "part"}), WHERE)
    assert len(found.images) == 12 and {image.shape for image in found.images} == {(3, 4)}
    expected = table.loc[5, [f"p{i}" for i in range(12)]].to_numpy(np.float32).reshape(3, 4)
    np.testing.assert_array_equal(found.images[5], expected)
    assert found.labels[:3] == ["even", "odd", "even"]
    assert found.given_parts == table["part"].tolist()


def test_table_needs_a_shape_that_matches_the_pixel_columns(tmp_path: Path) -> None:
    path = tmp_path / "pixels.csv"
    pixel_table(height=3, width=4).to_csv(path, index=False)
    with pytest.raises(DataError, match=rf"{WHERE}\.shape: required for a table of pixels"):
        read_images(images_spec(path), WHERE)
    with pytest.raises(DataError, match=r"\[4, 4\] means 16 pixels per image, but .* has 12 pixel column"):
        read_images(images_spec(path, shape=[4, 4]), WHERE)
    with pytest.raises(DataError, match=rf"{WHERE}\.grayscale: false needs image files"):
        read_images(images_spec(path, shape=[3, 4], grayscale=False), WHERE)


def test_table_non_numeric_or_empty_pixel_names_row_and_column(tmp_path: Path) -> None:
    table = pixel_table(height=2, width=2).astype({"p2": object})
    table.loc[3, "p2"] = "dark"
    path = tmp_path / "pixels.csv"
    table.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"line 5 column 'p2': 'dark'"):
        read_images(images_spec(path, shape=[2, 2]), WHERE)

    table.loc[3, "p2"] = None
    table.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"empty pixel cell\(s\): line 5 column 'p2'"):
        read_images(images_spec(path, shape=[2, 2]), WHERE)


def test_table_missing_label_column_or_label(tmp_path: Path) -> None:
    path = tmp_path / "pixels.csv"
    table = pixel_table(height=2, width=2)
    table.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"no column\(s\) \['digit'\]"):
        read_images(images_spec(path, shape=[2, 2], label_column="digit"), WHERE)
    table.loc[2, "label"] = None
    table.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"no 'label' in 1 row\(s\): line 4"):
        read_images(images_spec(path, shape=[2, 2]), WHERE)


# ------------------------------------------------------------------------------------------ end to end


def test_prepare_image_features_writes_a_sequence_folder(tmp_path: Path) -> None:
    from lstmflow.data.sequences import load_sequences

    root = make_folder(tmp_path / "images", per_label=10, size=(5, 7), rgb=True)
    (root / "bars" / "notes.txt").write_text("skipped")
    spec = images_spec(root, grayscale=False, split={"val": 0.2, "test": 0.2, "seed": 3})
    summary = prepare_image_features(spec, tmp_path / "features", WHERE)
    assert summary["skipped_files"] == 1

    features = load_sequences(tmp_path / "features")
    assert features.classes == ["bars", "plain"]
    assert features.n_features == 7 * 3 and features.n_classes == 2
    extra = features.meta["extra_meta"]
    assert extra["image_shape"] == [5, 7] and extra["channels"] == 3
    assert extra["grayscale"] is False and extra["source"] == "folder" and extra["skipped_files"] == 1
    assert [len(features.part(name)) for name in ("train", "val", "test")] == [12, 4, 4]  # stratified: 6/2/2 a class
    train = features.part("train")
    assert set(train.lengths.tolist()) == {5}  # every image is H = 5 steps long
    batch = next(train.batches(batch_size=4))
    assert tuple(batch.x.shape) == (4, 5, 21)


def test_prepare_image_features_from_a_table_with_given_parts(tmp_path: Path) -> None:
    from lstmflow.data.sequences import load_sequences

    table = pixel_table(rows=12, height=3, width=4)
    table["part"] = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    path = tmp_path / "pixels.csv"
    table.to_csv(path, index=False)
    spec = images_spec(path, shape=[3, 4], split={"column": "part"}, scale="none")
    prepare_image_features(spec, tmp_path / "features", WHERE)

    features = load_sequences(tmp_path / "features")
    assert features.n_features == 4 and features.meta["extra_meta"]["source"] == "table"
    assert [len(features.part(name)) for name in ("train", "val", "test")] == [8, 2, 2]
    batch = next(features.part("test").batches(batch_size=2))  # equal lengths: kept in table order
    expected = table.loc[[10, 11], [f"p{i}" for i in range(12)]].to_numpy(np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(batch.x.numpy(), expected)  # scale: none, so the pixels as given
    assert [features.classes[i] for i in batch.y] == ["even", "odd"]


def test_bad_given_part_names_the_table_line(tmp_path: Path) -> None:
    table = pixel_table(rows=6, height=2, width=2)
    table["part"] = ["train", "train", "val", "tset", "train", "test"]
    path = tmp_path / "pixels.csv"
    table.to_csv(path, index=False)
    spec = images_spec(path, shape=[2, 2], split={"column": "part"})
    with pytest.raises(DataError, match=r"line 5: 'tset'"):
        prepare_image_features(spec, tmp_path / "features", WHERE)
