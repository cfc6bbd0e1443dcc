"""The served classifier: raw sequences (a long or wide table), texts, audio clips, images (file paths or pixel
columns) or video clips (file paths or their bytes, base64-encoded) in, a label and one probability per class for
each out.

It reads a request as the data stage read the training data (the bundle's fitted preprocessing and tokenizer), and
:meth:`Classifier.requests` builds such requests, with their true labels, from a pipeline's raw data so that the
gate can score any model on the same samples. No MLflow needed: :mod:`lstmflow.tracking.serving` wraps it as a
pyfunc.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lstmflow.models.blend import load_blend
from lstmflow.serving.bundle import load_network
from lstmflow.serving.files import ROOTS_KEY, FileGate, clip_source, recorded_roots, require_clip_columns
from lstmflow.serving.request_checks import BadRequest, decoded, describe, numbers, require_columns

PIXEL_PREFIX = "pixel_"
#: The request column that carries a video clip's bytes, base64-encoded (beside ``path``).
VIDEO_BYTES = "video_base64"
#: The key of a request frame's ``attrs`` under which :meth:`Classifier.requests` names the data's own folders, so
#: that any model scored on the pipeline's samples (the gate's champion among them) may read them. A served request
#: is built from JSON by MLflow and cannot carry it.
DATA_FOLDERS_ATTR = "lstmflow_data_folders"
#: What a classifier needs from its features' metadata to read a request like the training data.
SERVED_META = {"image_shape", "channels", "grayscale", "max_length", "vocab_size"}


@dataclass(frozen=True)
class Requests:
    """Samples of a classification data set in the layout :meth:`Classifier.predict` takes, with their true labels.

    Built from the raw data, not from prepared features, so that any model (one trained on an older version of the
    data, with its own scaler, tokenizer or audio features) can be scored on exactly these samples. Sample ``i`` is
    rows ``offsets[i]:offsets[i + 1]`` of ``frame`` and ``predict`` answers it with key ``keys[i]``.
    """

    frame: pd.DataFrame
    keys: list[Any]
    labels: list[str]
    offsets: np.ndarray

    def chunks(self, size: int) -> Iterator[tuple[list[Any], pd.DataFrame]]:
        """(keys, rows) of up to ``size`` samples at a time: a request of bounded size."""
        for begin in range(0, len(self.keys), size):
            end = min(begin + size, len(self.keys))
            yield self.keys[begin:end], self.frame.iloc[self.offsets[begin] : self.offsets[end]]


class Classifier:
    """Raw sequences or images in, a label and per-class probabilities out; no MLflow needed."""

    def __init__(self, bundle_dir: Path, spec: Any, info: dict[str, Any]) -> None:
        from lstmflow.data.sequences import SequencePreprocessing

        self.spec = spec
        self.classes: list[str] = info["classes"]
        self.meta: dict[str, Any] = info["meta"]
        self.preprocessing = SequencePreprocessing.from_dict(info["preprocessing"])
        self.model = load_network(bundle_dir, spec, info["n_features"], len(self.classes))
        self.tokenizer = None
        if spec.data.kind == "text":
            from lstmflow.data.text import TOKENIZER_FILE, Tokenizer

            self.tokenizer = Tokenizer.load(bundle_dir / TOKENIZER_FILE)
        #: The regression the network is blended with (``train.blend_baseline``), or None: the network alone.
        self.blend = load_blend(bundle_dir)
        #: Where request paths may point (audio clips, images): see :mod:`lstmflow.serving.files`.
        self.files = FileGate(info.get(ROOTS_KEY))

    def allow_files_under(self, *folders: Path | str) -> None:
        """Let requests name files under ``folders`` too (``lstmflow predict`` adds the current directory)."""
        self.files.allow(*folders)

    @staticmethod
    def bundle_info(features_dir: Path) -> dict[str, Any]:
        from lstmflow.data.sequences import load_sequences
        from lstmflow.training.objectives import classifier_input_size

        features = load_sequences(features_dir)
        return {
            "classes": features.classes,
            "n_features": classifier_input_size(features),
            "preprocessing": features.preprocessing.to_dict(),
            "meta": {k: v for k, v in features.meta.get("extra_meta", {}).items() if k in SERVED_META},
        }

    def samples(self, frame: pd.DataFrame) -> tuple[list[Any], list[np.ndarray]]:
        """Split a request into (keys, raw (T, F) arrays), in the layout the pipeline's data has."""
        data = self.spec.data
        keys = list(frame.index)
        if data.kind == "text":
            from lstmflow.data.text import text_steps

            require_columns(frame, [data.text_column])
            texts = frame[data.text_column]
            not_text = {key: text for key, text in zip(keys, texts) if not isinstance(text, str)}
            if not_text:
                kinds = {
                    key: "a missing value" if describe(v) == "a missing value" else type(v).__name__
                    for key, v in not_text.items()
                }
                found = ", ".join(f"{key!r}: {kind}" for key, kind in list(kinds.items())[:5])
                raise BadRequest(f"column {data.text_column!r} must hold text in every sample; got {found}")
            assert self.tokenizer is not None  # loaded in __init__ for text data
            return keys, [text_steps(self.tokenizer, text, self.meta.get("max_length")) for text in texts]
        if data.kind == "audio":
            from lstmflow.data.audio import clip_features, read_clip

            require_columns(frame, ["path"])
            files = self._files_for(frame)
            paths = [files.open_path(raw, row) for row, raw in frame["path"].items()]  # checked before opening
            return keys, [decoded(str(p), lambda p=p: clip_features(*read_clip(p), data)) for p in paths]
        if data.kind == "images":
            return keys, self._images(frame)
        if data.kind == "video":
            return keys, self._videos(frame)
        if data.format == "wide":
            steps = [c for c in frame.columns if c not in {data.label_column, data.id_column, data.split.column}]
            rows = numbers(frame, steps, allow_missing=True).astype(np.float32)  # empty cells end a shorter sequence
            return keys, [row[~np.isnan(row)][:, None] for row in rows]  # (T, 1) each
        require_columns(frame, [data.id_column, *([data.time_column] if data.time_column else []), *data.value_columns])
        numbers(frame, data.value_columns)
        ordered = frame.sort_values([data.id_column, data.time_column]) if data.time_column else frame
        groups = ordered.groupby(data.id_column, sort=True)
        values = [decoded(key, lambda g=group: g[data.value_columns].to_numpy(np.float32)) for key, group in groups]
        return [key for key, _ in groups], values

    def _files_for(self, frame: pd.DataFrame) -> FileGate:
        """The folders this request may name files in: the model's, and the data's own for a frame built by
        :meth:`requests` (its ``attrs``)."""
        folders = frame.attrs.get(DATA_FOLDERS_ATTR)
        if not folders:
            return self.files
        files = copy.copy(self.files)
        files.roots = list(self.files.roots)
        files.allow(*folders)
        return files

    def _images(self, frame: pd.DataFrame) -> list[np.ndarray]:
        """One (H, W × C) array per row: the image file its ``path`` names, or else its pixel columns (a request
        may mix the two, row by row)."""
        from lstmflow.data.images import load_image

        height, width = self.meta["image_shape"]
        columns = [f"{PIXEL_PREFIX}{i}" for i in range(height * width * self.meta.get("channels", 1))]
        paths = frame["path"] if "path" in frame.columns else pd.Series(None, index=frame.index, dtype=object)
        has_path = [describe(raw) != "a missing value" for raw in paths]
        if not all(has_path):
            first = frame.index[has_path.index(False)]
            if "path" not in frame.columns or any(column in frame.columns for column in columns):
                require_columns(frame, columns)
            else:
                raise BadRequest(
                    f"column 'path', row {first!r}: a missing value; give each image a file path or its "
                    f"{len(columns)} pixel columns ({columns[0]}..{columns[-1]})"
                )
        pixel_rows = frame[[not given for given in has_path]]
        pixels: Iterator[np.ndarray] = iter(numbers(pixel_rows, columns).astype(np.float32) if len(pixel_rows) else [])
        images: list[np.ndarray] = []
        files = self._files_for(frame)
        for (row, raw), given in zip(paths.items(), has_path):
            if given:
                path = files.open_path(raw, row)
                image = decoded(str(raw), lambda p=path: load_image(p, self.spec.data.grayscale))
                if image.shape != (height, width * self.meta.get("channels", 1)):
                    raise BadRequest(
                        f"column 'path', row {row!r}: {raw!r} is {image.shape[1] // self.meta.get('channels', 1)}x"
                        f"{image.shape[0]} pixels; this model reads {width}x{height} images"
                    )
                images.append(image)
            else:
                images.append(next(pixels).reshape(height, -1))  # (H, W × C)
        return images

    def _videos(self, frame: pd.DataFrame) -> list[np.ndarray]:
        """One (frames, H × W × C) array per row: the clip its ``path`` names or its bytes in ``video_base64``,
        decoded as the data stage decodes (frame rate, size, colour from the pipeline's data)."""
        from lstmflow.data.video import clip_frames

        require_clip_columns(frame, VIDEO_BYTES)
        files, clips = self._files_for(frame), []
        for row, cells in frame.iterrows():
            name, source = clip_source(files, row, cells, VIDEO_BYTES)
            frames = decoded(name, lambda source=source: clip_frames(source, self.spec.data))
            if frames.shape[1] != self.model.n_features:
                shape = self.spec.model.layers[0].time_distributed.input_shape
                raise BadRequest(
                    f"sample {name!r}: its frames hold {frames.shape[1]} values each; this model reads frames of "
                    f"{' x '.join(map(str, shape or [self.model.n_features]))} (height x width x channels)"
                )
            clips.append(frames)
        return clips

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row per sequence or image: the predicted label and a probability per class."""
        import torch
        from torch.nn.utils.rnn import pad_sequence

        keys, raw = self.samples(frame)
        if not raw:
            raise BadRequest("the request holds no sequence or image")
        empty = [key for key, sample in zip(keys, raw) if len(sample) == 0]
        if empty:
            raise BadRequest(f"sample(s) {empty} hold no steps (an empty text, or only missing values)")
        steps = [torch.from_numpy(self.preprocessing.encode(sample)) for sample in raw]
        lengths = torch.tensor([len(s) for s in steps], dtype=torch.int64)
        with torch.no_grad():
            logits = self.model.logits(pad_sequence(steps, batch_first=True), lengths)  # (N, C)
        probabilities = torch.softmax(logits.double(), dim=-1).numpy()
        if self.blend is not None:  # the regression reads what the network does: the texts, or the encoded steps
            text = self.spec.data.kind == "text"
            inputs = list(frame[self.spec.data.text_column]) if text else [sample.numpy() for sample in steps]
            probabilities = self.blend.probabilities(probabilities, inputs)
        result = pd.DataFrame(probabilities, columns=[f"prob_{c}" for c in self.classes])
        result.insert(0, "label", [self.classes[i] for i in probabilities.argmax(axis=1)])
        result.insert(0, "key", keys)
        return result

    @staticmethod
    def requests(spec: Any, features_dir: Path, part: str = "test") -> Requests:
        """The samples of one part of ``spec``'s data, read from its raw source, in the request layout.

        The raw source is read in the order the data stage read it, so sample ``i`` is sample ``i`` of the prepared
        features in ``features_dir``; their parts (``parts.npy``) pick the samples. Labels must agree sample by sample,
        else the raw data changed since the features were prepared: a DataError. Long tables get ids ``0..N-1`` and
        steps ``0..T-1`` (the request's id and time columns), wide ones a ``step_<j>`` column per step (trailing cells
        empty), images their pixel columns, texts their text column and clips their paths.
        """
        from lstmflow.data.sequences import PARTS, load_sequences
        from lstmflow.errors import DataError

        features = load_sequences(features_dir)
        data, where = spec.data, f"pipelines.{spec.name}.data"
        prepared = [features.classes[code] for code in features.labels]
        read, samples = _read_labelled_samples(data, where, Path(features_dir))
        if [str(label) for label in read] != prepared:
            raise DataError(
                f"{where}: the raw data no longer match the features prepared in {features_dir} ({len(read)} "
                f"samples read, {len(prepared)} prepared, or their labels differ); prepare the data again"
            )
        chosen = np.flatnonzero(features.parts == PARTS.index(part))
        frame, offsets = _request_table(data, [samples[i] for i in chosen])
        if data.kind in ("audio", "images", "video"):
            frame.attrs[DATA_FOLDERS_ATTR] = recorded_roots(data)
        return Requests(frame, list(range(len(chosen))), [prepared[i] for i in chosen], offsets)

    def example(self, info: dict[str, Any]) -> pd.DataFrame:
        """A few raw training samples in the request layout."""
        data = self.spec.data
        if data.kind == "text":
            from lstmflow.data.text import read_texts

            return pd.DataFrame({data.text_column: read_texts(data, f"pipelines.{self.spec.name}.data").texts[:3]})
        if data.kind == "audio":
            from lstmflow.data.audio import list_clips

            clips, _ = list_clips(data, f"pipelines.{self.spec.name}.data")
            return pd.DataFrame({"path": [str(clip.path) for clip in clips[:2]]})
        if data.kind == "video":
            from lstmflow.data.video import read_clips

            first, second = read_clips(data, f"pipelines.{self.spec.name}.data").clips[:2]
            sent = base64.b64encode(second.path.read_bytes()).decode()
            return pd.DataFrame({"path": [str(first.path), None], VIDEO_BYTES: [None, sent]})
        if data.kind == "images":
            from lstmflow.data.images import read_images

            found = read_images(data, f"pipelines.{self.spec.name}.data")
            flat = np.stack([image.reshape(-1) for image in found.images[:3]])
            example = pd.DataFrame(flat, columns=[f"{PIXEL_PREFIX}{i}" for i in range(flat.shape[1])])
            if Path(data.path).is_dir():  # a row that names its file: paths and pixels both optional in the signature
                first = pd.DataFrame({"path": [str(Path(data.path) / found.names[0])]})
                example = pd.concat([first, example.assign(path=None)], ignore_index=True)[["path", *example.columns]]
            return example
        table = pd.read_parquet(data.path) if data.path.suffix == ".parquet" else pd.read_csv(data.path)
        if data.format == "wide":
            return table.drop(columns=[c for c in (data.label_column, data.split.column) if c], errors="ignore").head(3)
        first = table[data.id_column].drop_duplicates().head(2)
        columns = [data.id_column, *([data.time_column] if data.time_column else []), *data.value_columns]
        return table[table[data.id_column].isin(first)][columns].reset_index(drop=True)


def _read_labelled_samples(data: Any, where: str, features_dir: Path) -> tuple[list[Any], list[Any]]:
    """(labels, samples) of every sample of the raw source, in the order the data stage read them: texts, clip
    paths, images (H, W, C) or sequences (T, F)."""
    if data.kind == "text":
        from lstmflow.data.text import read_texts

        texts = read_texts(data, where)
        return texts.labels, texts.texts
    if data.kind in ("audio", "video"):
        from lstmflow.data import audio, video

        skipped = {entry["file"] for entry in json.loads((features_dir / "skipped.json").read_text())}
        listing = (video if data.kind == "video" else audio).read_clips(data, where)
        clips = [clip for clip in listing.clips if clip.name not in skipped]  # as the stage kept them
        return [clip.label for clip in clips], [clip.path for clip in clips]
    if data.kind == "images":
        from lstmflow.data.images import read_images

        images = read_images(data, where)
        return images.labels, images.images
    from lstmflow.data.sequences import read_sequence_table

    table = read_sequence_table(data, where)
    return table.labels, table.sequences


def _request_table(data: Any, samples: list[Any]) -> tuple[pd.DataFrame, np.ndarray]:
    """``samples`` (as :func:`_read_labelled_samples` gives them) as one request, and each sample's first row in
    it (N + 1 offsets): one row per sample, but for a long table."""
    one_row_each = np.arange(len(samples) + 1)
    if data.kind == "text":
        return pd.DataFrame({data.text_column: samples}), one_row_each
    if data.kind in ("audio", "video"):
        return pd.DataFrame({"path": [str(path) for path in samples]}), one_row_each
    if data.kind == "images":
        flat = np.stack([image.reshape(-1) for image in samples])  # (N, H × W × C)
        return pd.DataFrame(flat, columns=[f"{PIXEL_PREFIX}{j}" for j in range(flat.shape[1])]), one_row_each
    lengths = [len(sample) for sample in samples]
    if data.format == "wide":
        grid = np.full((len(samples), max(lengths)), np.nan)
        for row, sample in enumerate(samples):
            grid[row, : len(sample)] = sample[:, 0]  # (T, 1) → its row
        return pd.DataFrame(grid, columns=[f"step_{j}" for j in range(grid.shape[1])]), one_row_each
    values = np.concatenate(samples)  # (sum of T, F)
    columns: dict[str, Any] = {data.id_column: np.repeat(np.arange(len(samples)), lengths)}
    if data.time_column is not None:
        columns[data.time_column] = np.concatenate([np.arange(length) for length in lengths])
    columns |= {name: values[:, j] for j, name in enumerate(data.value_columns)}
    return pd.DataFrame(columns), np.concatenate([[0], np.cumsum(lengths)])
