"""Images as sequences: each row of pixels is one time step, so an LSTM reads an image top to bottom.

Two sources, chosen by ``data.path``: a folder with one subfolder of image files per label, or a CSV/Parquet
table with a label column and one column per pixel (the image shape given as ``data.shape``). Either way an
image becomes an (H, W × C) float32 array of raw pixel values, the label its class name, and the rest (the
split into parts, scaling, the feature folder) is the sequences code's, so images and time-series
classification train, evaluate and serve the same way.

Nothing is resized: images of different sizes are an error naming two of them, because a silent resize would
change what the model sees without the user knowing. A served model turns an uploaded image into rows with
the same :func:`load_image` / :func:`image_rows`, so training and serving cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
from PIL import Image, ImageOps

from lstmflow.config import ImagesSpec
from lstmflow.data.parts import assign_parts, read_parts
from lstmflow.data.sequences import write_sequences
from lstmflow.data.tables import listing, numeric_values, read_table, row_namer
from lstmflow.errors import DataError

#: File name endings read as images in a label folder (compared lower-case); anything else is skipped and counted.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


class ImageSet(NamedTuple):
    """What :func:`read_images` found: one (H, W × C) array per image, in a deterministic order."""

    images: list[np.ndarray]
    labels: list[str]
    #: How messages name each image: its file (relative to the folder) or its table row.
    names: list[str]
    #: The given part per image: the split column's cell (tables), or its folder's or table's part (``split.files``).
    given_parts: list[Any] | None
    #: Files in the folder that are not images (by their ending) and were left out.
    skipped: int


def image_rows(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) pixels → (H, W × C) float32: one row of pixels per time step, channels interleaved."""
    if image.ndim == 2:
        return image.astype(np.float32)
    if image.ndim == 3:
        height, width, channels = image.shape
        return image.reshape(height, width * channels).astype(np.float32)  # (H, W × C)
    raise DataError(f"an image must be (height, width) or (height, width, channels), got shape {image.shape}")


def load_image(source: Path | BinaryIO, grayscale: bool) -> np.ndarray:
    """Read one image file (or an open binary file) as (H, W × C) float32 pixel values in 0..255.

    The image is turned as its EXIF orientation says (as a viewer shows it) and converted to one channel
    (``grayscale``) or RGB, which drops any alpha channel. An animated GIF or multi-page TIFF gives its first frame.
    """
    name = source if isinstance(source, Path) else getattr(source, "name", "the uploaded image")
    try:
        with Image.open(source) as opened:
            image = ImageOps.exif_transpose(opened).convert("L" if grayscale else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{name}: not a readable image ({exc})") from None
    return image_rows(np.asarray(image))


def read_images(spec: ImagesSpec, where: str) -> ImageSet:
    """Read the labelled images that ``spec.path`` names, a folder of label folders or a table of pixels (and the
    validation and test ones of ``split.files``); all must have one size."""
    found = read_parts(spec, where, _read_source)
    channels = _channels(spec.grayscale)
    for name, rows in zip(found.names, found.images):
        if rows.shape != found.images[0].shape:
            raise DataError(
                f"{where}.path: images differ in size (width x height): {found.names[0]} is "
                f"{_size(found.images[0], channels)}, {name} is {_size(rows, channels)}; resize them to one size first"
            )
    return found


def _read_source(spec: ImagesSpec, where: str) -> ImageSet:
    path = Path(spec.path)
    if not path.exists():
        raise DataError(f"{where}.path: no folder or file at {path}")
    if path.is_dir():
        return _read_folder(spec, path, where)
    return _read_table_of_pixels(spec, path, where)


def _read_folder(spec: ImagesSpec, root: Path, where: str) -> ImageSet:
    """One subfolder per label, read in name order; hidden entries are ignored, other non-images counted."""
    if spec.split.column is not None:
        raise DataError(
            f"{where}.split.column: {spec.split.column!r} needs a table; images in label folders have no columns "
            f"(use split fractions, or a CSV/Parquet table of pixels with a split column)"
        )
    # Compared by value, not by "was it set": the spec also arrives dumped and re-read from params.yaml.
    if spec.shape is not None or spec.label_column != ImagesSpec.model_fields["label_column"].default:
        key = "shape" if spec.shape is not None else "label_column"
        raise DataError(f"{where}.{key}: applies to a table of pixels; {root} is a folder of label folders")
    entries = sorted((entry for entry in root.iterdir() if not entry.name.startswith(".")), key=lambda e: e.name)
    folders = [entry for entry in entries if entry.is_dir()]
    if not folders:
        raise DataError(
            f"{where}.path: {root} has no label folders; put each class's images in a subfolder named after it"
        )
    skipped = len(entries) - len(folders)  # loose files beside the label folders
    images: list[np.ndarray] = []
    labels: list[str] = []
    names: list[str] = []
    for folder in folders:
        files = sorted((f for f in folder.iterdir() if not f.name.startswith(".")), key=lambda f: f.name)
        pictures = [f for f in files if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        skipped += len(files) - len(pictures)
        if not pictures:
            raise DataError(
                f"{where}.path: label folder {folder} holds no image files ({len(files)} other entries; "
                f"image files end in {', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        for file in pictures:
            try:
                images.append(load_image(file, spec.grayscale))
            except DataError as exc:
                raise DataError(f"{where}.path: {exc}") from None
            labels.append(folder.name)
            names.append(str(file.relative_to(root)))
    return ImageSet(images, labels, names, None, skipped)


def _channels(grayscale: bool) -> int:
    return 1 if grayscale else 3


def _size(rows: np.ndarray, channels: int) -> str:
    """An image's size as image tools write it, width x height, from its (H, W × C) rows."""
    return f"{rows.shape[1] // channels}x{rows.shape[0]}"


def _read_table_of_pixels(spec: ImagesSpec, path: Path, where: str) -> ImageSet:
    """A label column, an optional split column, and every other column a pixel, read row by row (H × W)."""
    if not spec.grayscale:
        raise DataError(
            f"{where}.grayscale: false needs image files; a table of pixels has one value per pixel "
            f"(leave grayscale out, or point {where}.path at a folder of label folders)"
        )
    table = read_table(path, where)
    if spec.shape is None:
        raise DataError(f"{where}.shape: required for a table of pixels, as [height, width]")
    height, width = spec.shape
    if height <= 0 or width <= 0:
        raise DataError(f"{where}.shape: height and width must be > 0, got {spec.shape}")
    row_label = row_namer(path)
    wanted = [spec.label_column] + ([spec.split.column] if spec.split.column is not None else [])
    missing = [name for name in wanted if name not in table.columns]
    if missing:
        raise DataError(f"{where}: {path} has no column(s) {missing}; available: {listing(list(table.columns))}")
    if table.empty:
        raise DataError(f"{where}.path: {path} has a header but no data rows")
    pixel_columns = [name for name in table.columns if name not in wanted]
    if height * width != len(pixel_columns):
        raise DataError(
            f"{where}.shape: {spec.shape} means {height * width} pixels per image, but {path} has "
            f"{len(pixel_columns)} pixel column(s) (every column but {wanted})"
        )
    no_label = [row_label(i) for i in np.flatnonzero(table[spec.label_column].isna().to_numpy())]
    if no_label:
        raise DataError(f"{where}: {path} has no {spec.label_column!r} in {len(no_label)} row(s): {listing(no_label)}")
    pixels = numeric_values(table, pixel_columns, path, row_label, where).to_numpy(np.float32)
    empty = [f"{row_label(i)} column {pixel_columns[j]!r}" for i, j in np.argwhere(np.isnan(pixels))]
    if empty:
        raise DataError(f"{where}: {path} has {len(empty)} empty pixel cell(s): {listing(empty)}")
    images = list(pixels.reshape(len(table), height, width))  # N × (H, W)
    labels = [str(value) for value in table[spec.label_column]]
    given = table[spec.split.column].tolist() if spec.split.column is not None else None
    return ImageSet(images, labels, [row_label(i) for i in range(len(table))], given, 0)


def prepare_image_features(spec: ImagesSpec, out_dir: Path, where: str) -> dict[str, Any]:
    """Read the images, divide them into parts and write them as a sequence feature folder; return its summary."""
    found = read_images(spec, where)
    height, width_channels = found.images[0].shape
    channels = _channels(spec.grayscale)
    parts = assign_parts(found.labels, spec.split, found.given_parts, where, names=found.names)
    meta = {
        "image_shape": [height, width_channels // channels],
        "channels": channels,
        "grayscale": spec.grayscale,
        "source": "folder" if Path(spec.path).is_dir() else "table",
        "skipped_files": found.skipped,
    }
    summary = write_sequences(
        out_dir,
        found.images,
        found.labels,
        parts,
        spec.scale,
        None,
        where,
        meta,
        names=found.names,
        split=spec.split,
        given=found.given_parts,
    )
    return {**summary, "skipped_files": found.skipped}
