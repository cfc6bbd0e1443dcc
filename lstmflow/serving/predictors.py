"""The predictors behind a served model: each rebuilds the LSTM from its state dict at load time.

The logged bundle is a folder with ``model.pt`` (state dict), ``spec.json`` (the
resolved pipeline spec) and ``features.json`` (the fitted preprocessing and what the
input looks like). Rebuilding from the spec, instead of pickling a module or
exporting a graph, keeps custom layers and preprocessing working in serving.

A forecaster takes recent raw rows and returns the next ``horizon`` steps; a
classifier takes raw sequences (a long or wide table) or images (file paths or
pixel columns) and returns a label and one probability per class for each; a
language model takes prompts and returns the text it writes after each.

A request the model cannot answer (a missing column, too few rows, a value of the wrong type, a file that does not
decode) raises :class:`BadRequest` naming the problem; served, that is MLflow's invalid-parameter error, an HTTP 400
with the message, and the server goes on serving.

Nothing here imports MLflow: ``lstmflow.serving.predictors`` wraps a predictor as MLflow's pyfunc.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

BUNDLE_FILES = ("model.pt", "spec.json", "features.json")
PIXEL_PREFIX = "pixel_"


class BadRequest(ValueError):
    """A request that the model cannot answer as sent: the caller's to fix, not the server's."""


def _require_columns(frame: pd.DataFrame, columns: list[str]) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise BadRequest(f"the request lacks column(s) {missing}; it has {[str(c) for c in frame.columns]}")


def _decoded(key: Any, decode: Any) -> Any:
    """``decode()`` of one sample of a request; what goes wrong there is named by the sample's key."""
    from lstmflow.errors import LstmflowError

    try:
        return decode()
    except (ValueError, TypeError, OSError, LstmflowError) as exc:
        raise BadRequest(f"sample {key!r}: {exc}") from None


#: What a classifier needs from its features' metadata to read a request like the training data.
SERVED_META = {"image_shape", "channels", "grayscale", "max_length", "vocab_size"}


def _load_network(bundle_dir: Path, spec: Any, n_features: int, n_outputs: int, per_step: bool = False) -> Any:
    import torch

    from lstmflow.models.lstm import build_model

    model = build_model(spec.model, n_features, n_outputs, where=f"pipelines.{spec.name}.model", per_step=per_step)
    model.load_state_dict(torch.load(bundle_dir / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()


class Forecaster:
    """Raw recent rows in, forecast in original units out; no MLflow needed."""

    def __init__(self, bundle_dir: Path, spec: Any, info: dict[str, Any]) -> None:
        from lstmflow.data.timeseries import Preprocessing

        self.spec = spec
        self.columns: list[str] = info["columns"]
        self.targets: list[str] = info["targets"]
        self.window: int = info["window"]
        self.horizon: int = info["horizon"]
        self.preprocessing = Preprocessing.from_dict(info["preprocessing"])
        self.model = _load_network(bundle_dir, spec, len(self.columns), self.horizon * len(self.targets))

    @staticmethod
    def bundle_info(features_dir: Path) -> dict[str, Any]:
        from lstmflow.data.timeseries import load_features

        features = load_features(features_dir)
        return {
            "columns": features.columns,
            "targets": features.targets,
            "window": features.window,
            "horizon": features.horizon,
            "preprocessing": features.preprocessing.to_dict(),
            "train_end": features.meta["split"]["train_end"],
        }

    def example(self, info: dict[str, Any]) -> pd.DataFrame:
        """The last rows of the training part: a realistic request."""
        from lstmflow.data.timeseries import read_series

        end = info["train_end"]
        return read_series(self.spec.data).iloc[end - self.context_rows : end].reset_index(drop=True)

    @property
    def context_rows(self) -> int:
        return self.preprocessing.context_rows(self.window)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Forecast the ``horizon`` steps after the last row of ``frame``."""
        import torch

        _require_columns(frame, self.columns)
        if len(frame) < self.context_rows:
            raise BadRequest(f"the request has {len(frame)} rows; this model needs the last {self.context_rows}")
        raw = _decoded("rows", lambda: frame[self.columns].to_numpy(dtype=np.float64)[-self.context_rows :])
        if not np.isfinite(raw).all():
            raise BadRequest(f"the request's last {self.context_rows} rows hold missing or infinite values")
        encoded = self.preprocessing.encode(raw)[-self.window :]  # (W, F)
        with torch.no_grad():
            out = self.model(torch.from_numpy(np.ascontiguousarray(encoded, dtype=np.float32))[None])  # (1, H*K)
        pred = out.numpy().reshape(1, self.horizon, len(self.targets))  # (1, H, K)
        last_raw = raw[-1:, : len(self.targets)]  # (1, K)
        forecast = self.preprocessing.decode(pred, last_raw)[0]  # (H, K)
        result = pd.DataFrame(forecast, columns=self.targets)
        result.insert(0, "step", np.arange(1, self.horizon + 1))
        return result

    def forecast_at(self, frame: pd.DataFrame, origins: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Forecasts (N, horizon, targets) in original units from many points of one series, in batches.

        ``frame`` is the whole series in time order (this model's columns among its columns) and ``origins[i]`` the
        row of forecast ``i``'s first step. Each forecast reads only the rows before its origin, as :meth:`predict`
        of those rows would; the series is encoded once. For scoring on the same test windows as another model
        whose window, scaler or transform differ.
        """
        import torch
        from numpy.lib.stride_tricks import sliding_window_view

        _require_columns(frame, self.columns)
        origins = np.asarray(origins, dtype=np.intp)
        if origins.size == 0 or origins.min() < self.context_rows or origins.max() > len(frame):
            shown = f"{origins.min()}..{origins.max()}" if origins.size else "none"
            raise BadRequest(
                f"forecast origins must lie in {self.context_rows}..{len(frame)} (this model reads the "
                f"{self.context_rows} rows before each, of {len(frame)}); got {shown}"
            )
        first = int(origins.min()) - self.context_rows
        raw = _decoded("rows", lambda: frame[self.columns].to_numpy(dtype=np.float64)[first : int(origins.max())])
        with np.errstate(invalid="ignore", divide="ignore"):  # a log of values <= 0 is reported just below
            encoded = self.preprocessing.encode(raw)  # (R - lost, F): row j is raw row j + lost
        if not np.isfinite(encoded).all():
            raise BadRequest(
                f"rows {first}..{int(origins.max()) - 1} hold missing or infinite values, or values this model's "
                f"transform {list(self.preprocessing.transforms)} cannot take"
            )
        lost = self.context_rows - self.window
        starts = origins - first - lost - self.window  # each window's first row in `encoded`
        windows = sliding_window_view(encoded, (self.window, encoded.shape[1]))[:, 0]  # (R' - W + 1, W, F) view
        k = len(self.targets)
        outputs = []
        with torch.no_grad():
            for begin in range(0, len(starts), batch_size):
                x = torch.from_numpy(
                    np.ascontiguousarray(windows[starts[begin : begin + batch_size]], dtype=np.float32)
                )
                outputs.append(self.model(x).numpy().reshape(len(x), self.horizon, k))  # (B, H*K) → (B, H, K)
        last_raw = raw[origins - first - 1, :k]  # (N, K): the row before each origin anchors differences
        return self.preprocessing.decode(np.concatenate(outputs), last_raw)


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
        self.model = _load_network(bundle_dir, spec, info["n_features"], len(self.classes))
        self.tokenizer = None
        if spec.data.kind == "text":
            from lstmflow.data.text import TOKENIZER_FILE, Tokenizer

            self.tokenizer = Tokenizer.load(bundle_dir / TOKENIZER_FILE)

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

            _require_columns(frame, [data.text_column])
            texts = frame[data.text_column]
            not_text = {key: text for key, text in zip(keys, texts) if not isinstance(text, str)}
            if not_text:
                found = ", ".join(
                    f"{key!r}: {'a missing value' if pd.isna(v) else type(v).__name__}"
                    for key, v in list(not_text.items())[:5]
                )
                raise BadRequest(f"column {data.text_column!r} must hold text in every sample; got {found}")
            return keys, [text_steps(self.tokenizer, text, self.meta.get("max_length")) for text in texts]
        if data.kind == "audio":
            from lstmflow.data.audio import clip_features, read_clip

            _require_columns(frame, ["path"])
            paths = [Path(str(p)) for p in frame["path"]]
            return keys, [_decoded(str(p), lambda p=p: clip_features(*read_clip(p), data)) for p in paths]
        if data.kind == "images":
            if "path" in frame.columns:
                from lstmflow.data.images import load_image

                paths = [Path(str(p)) for p in frame["path"]]
                return keys, [_decoded(str(p), lambda p=p: load_image(p, data.grayscale)) for p in paths]
            height, width = self.meta["image_shape"]
            columns = [f"{PIXEL_PREFIX}{i}" for i in range(height * width * self.meta.get("channels", 1))]
            _require_columns(frame, columns)
            pixels = _decoded("pixels", lambda: frame[columns].to_numpy(np.float32))
            return keys, list(pixels.reshape(len(frame), height, -1))  # (N, H, W × C)
        if data.format == "wide":
            steps = frame[[c for c in frame.columns if c not in {data.label_column, data.id_column, data.split.column}]]
            rows = _decoded("steps", lambda: steps.to_numpy(np.float32))
            return keys, [row[~np.isnan(row)][:, None] for row in rows]  # (T, 1) each
        _require_columns(
            frame, [data.id_column, *([data.time_column] if data.time_column else []), *data.value_columns]
        )
        ordered = frame.sort_values([data.id_column, data.time_column]) if data.time_column else frame
        groups = ordered.groupby(data.id_column, sort=True)
        values = [_decoded(key, lambda g=group: g[data.value_columns].to_numpy(np.float32)) for key, group in groups]
        return [key for key, _ in groups], values

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
        probabilities = torch.softmax(logits, dim=-1).numpy()
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
        chosen = np.flatnonzero(features.parts == PARTS.index(part))

        def check(read: list[Any]) -> None:
            if [str(label) for label in read] != prepared:
                raise DataError(
                    f"{where}: the raw data no longer match the features prepared in {features_dir} ({len(read)} "
                    f"samples read, {len(prepared)} prepared, or their labels differ); prepare the data again"
                )

        rows = np.arange(len(chosen) + 1)  # one row per sample, but for a long table
        if data.kind == "text":
            from lstmflow.data.text import read_texts

            texts = read_texts(data, where)
            check(texts.labels)
            frame = pd.DataFrame({data.text_column: [texts.texts[i] for i in chosen]})
        elif data.kind == "audio":
            from lstmflow.data.audio import read_clips

            skipped = {entry["file"] for entry in json.loads((Path(features_dir) / "skipped.json").read_text())}
            clips = [
                clip for clip in read_clips(data, where).clips if clip.name not in skipped
            ]  # as the stage kept them
            check([clip.label for clip in clips])
            frame = pd.DataFrame({"path": [str(clips[i].path) for i in chosen]})
        elif data.kind == "images":
            from lstmflow.data.images import read_images

            images = read_images(data, where)
            check(images.labels)
            flat = np.stack([images.images[i].reshape(-1) for i in chosen])  # (N, H × W × C)
            frame = pd.DataFrame(flat, columns=[f"{PIXEL_PREFIX}{j}" for j in range(flat.shape[1])])
        else:
            from lstmflow.data.sequences import read_sequence_table

            table = read_sequence_table(data, where)
            check(table.labels)
            steps = [table.sequences[i] for i in chosen]
            lengths = [len(sample) for sample in steps]
            if data.format == "wide":
                grid = np.full((len(steps), max(lengths)), np.nan)
                for row, sample in enumerate(steps):
                    grid[row, : len(sample)] = sample[:, 0]  # (T, 1) → its row
                frame = pd.DataFrame(grid, columns=[f"step_{j}" for j in range(grid.shape[1])])
            else:
                values = np.concatenate(steps)  # (sum of T, F)
                columns: dict[str, Any] = {data.id_column: np.repeat(np.arange(len(steps)), lengths)}
                if data.time_column is not None:
                    columns[data.time_column] = np.concatenate([np.arange(length) for length in lengths])
                columns |= {name: values[:, j] for j, name in enumerate(data.value_columns)}
                frame = pd.DataFrame(columns)
                rows = np.concatenate([[0], np.cumsum(lengths)])
        return Requests(frame, list(range(len(chosen))), [prepared[i] for i in chosen], rows)

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
        if data.kind == "images":
            from lstmflow.data.images import read_images

            images = read_images(data, f"pipelines.{self.spec.name}.data").images
            flat = np.stack([image.reshape(-1) for image in images[:3]])
            return pd.DataFrame(flat, columns=[f"{PIXEL_PREFIX}{i}" for i in range(flat.shape[1])])
        table = pd.read_parquet(data.path) if data.path.suffix == ".parquet" else pd.read_csv(data.path)
        if data.format == "wide":
            return table.drop(columns=[c for c in (data.label_column, data.split.column) if c], errors="ignore").head(3)
        first = table[data.id_column].drop_duplicates().head(2)
        columns = [data.id_column, *([data.time_column] if data.time_column else []), *data.value_columns]
        return table[table[data.id_column].isin(first)][columns].reset_index(drop=True)


class Generator:
    """Prompts in, generated text out: a ``prompt`` column, and optionally per row ``tokens``, ``temperature`` and
    ``seed`` (defaults: 200 tokens, temperature 0.8, seed 0); no MLflow needed."""

    DEFAULTS = {"tokens": 200, "temperature": 0.8, "seed": 0}

    def __init__(self, bundle_dir: Path, spec: Any, info: dict[str, Any]) -> None:
        from lstmflow.data.text import TOKENIZER_FILE, Tokenizer

        self.spec = spec
        self.tokenizer = Tokenizer.load(bundle_dir / TOKENIZER_FILE)
        self.model = _load_network(bundle_dir, spec, info["vocab_size"], info["vocab_size"], per_step=True)

    @staticmethod
    def bundle_info(features_dir: Path) -> dict[str, Any]:
        meta = json.loads((features_dir / "meta.json").read_text())
        return {"vocab_size": meta["vocab_size"], "tokenizer_kind": meta["tokenizer_kind"]}

    def example(self, info: dict[str, Any]) -> pd.DataFrame:
        """The start of the training text as a prompt, with a short continuation."""
        from lstmflow.data.corpus import read_text

        start = read_text(self.spec.data.path, f"pipelines.{self.spec.name}.data.path")[:40]
        return pd.DataFrame({"prompt": [start], "tokens": [20], "temperature": [0.8], "seed": [0]})

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row per prompt: the prompt and the text generated after it."""
        from lstmflow.serving.generate import generate

        _require_columns(frame, ["prompt"])
        rows = frame.to_dict("records")
        settings = [{key: row.get(key, default) for key, default in self.DEFAULTS.items()} for row in rows]
        texts = [
            _decoded(
                index,
                lambda row=row, s=s: generate(
                    self.model,
                    self.tokenizer,
                    str(row["prompt"]),
                    int(s["tokens"]),
                    float(s["temperature"]),
                    int(s["seed"]),
                ),
            )
            for index, (row, s) in enumerate(zip(rows, settings))
        ]
        return pd.DataFrame({"prompt": [str(row["prompt"]) for row in rows], "text": texts})

    def score_text(self, text: str) -> tuple[float, int]:
        """(summed cross-entropy in nats, tokens scored) of every token of ``text`` after the first, read as one
        stream in spans of ``data.sequence_length`` with the stateful layers' state carried, as evaluation reads a
        part. Divided by the characters of ``text``, it compares models whose tokenizers differ."""
        import torch
        import torch.nn.functional as F

        from lstmflow.training.objectives import stateful_layers

        ids = self.tokenizer.encode(text)
        if len(ids) < 2:
            raise BadRequest(
                f"the text holds {len(ids)} token(s) for this {self.tokenizer.kind} tokenizer; scoring needs 2"
            )
        stream = torch.tensor(ids, dtype=torch.int64)
        steps, stateful = self.spec.data.sequence_length, stateful_layers(self.spec)
        carry: dict[int, Any] = {}
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(ids) - 1, steps):
                end = min(start + steps, len(ids) - 1)
                x = stream[start:end].float().view(1, -1, 1)  # (1, T, 1): the embedding's input
                logits, final = self.model.logits_carrying(x, carry)  # (1, T, V)
                carry = {index: state for index, state in final.items() if index in stateful}
                total += F.cross_entropy(logits[0].double(), stream[start + 1 : end + 1], reduction="sum").item()
        return total, len(ids) - 1


#: Files of a features folder that the served model needs too (the fitted tokenizer).
BUNDLED_FEATURE_FILES = ("tokenizer.json",)

PREDICTORS: dict[str, type[Forecaster | Classifier | Generator]] = {
    "forecast": Forecaster,
    "classify": Classifier,
    "language_model": Generator,
}


def write_bundle(
    spec_json: dict[str, Any], features_dir: Path, model_path: Path, bundle_dir: Path
) -> tuple[Any, pd.DataFrame]:
    """Write the bundle the pyfunc loads; returns the predictor it makes and an example request."""
    import shutil

    from lstmflow.config import PipelineSpec

    spec = PipelineSpec.model_validate(spec_json)
    info = PREDICTORS[spec.task].bundle_info(features_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, bundle_dir / "model.pt")
    for extra in BUNDLED_FEATURE_FILES:
        if (features_dir / extra).exists():
            shutil.copyfile(features_dir / extra, bundle_dir / extra)
    (bundle_dir / "spec.json").write_text(json.dumps(spec_json, indent=2))
    (bundle_dir / "features.json").write_text(json.dumps(info, indent=2))
    predictor = load_predictor(bundle_dir)
    return predictor, predictor.example(info)


def load_predictor(bundle_dir: Path) -> Forecaster | Classifier | Generator:
    """Rebuild the forecaster, classifier or generator that a bundle holds."""
    from lstmflow.config import PipelineSpec

    spec = PipelineSpec.model_validate(json.loads((bundle_dir / "spec.json").read_text()))
    info = json.loads((bundle_dir / "features.json").read_text())
    return PREDICTORS[spec.task](bundle_dir, spec, info)
