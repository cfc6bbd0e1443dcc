"""The served model: an MLflow pyfunc that rebuilds the LSTM from its state dict at load time.

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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
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
        from lstmflow.objectives import classifier_input_size

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
            texts = frame[data.text_column].astype(str)
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
        _require_columns(frame, [data.id_column, *([data.time_column] if data.time_column else []), *data.value_columns])
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
        from lstmflow.generate import generate

        _require_columns(frame, ["prompt"])
        rows = frame.to_dict("records")
        settings = [{key: row.get(key, default) for key, default in self.DEFAULTS.items()} for row in rows]
        texts = [
            _decoded(index, lambda row=row, s=s: generate(
                self.model, self.tokenizer, str(row["prompt"]), int(s["tokens"]), float(s["temperature"]), int(s["seed"])
            ))
            for index, (row, s) in enumerate(zip(rows, settings))
        ]
        return pd.DataFrame({"prompt": [str(row["prompt"]) for row in rows], "text": texts})


#: Files of a features folder that the served model needs too (the fitted tokenizer).
BUNDLED_FEATURE_FILES = ("tokenizer.json",)

PREDICTORS: dict[str, type[Forecaster] | type[Classifier] | type[Generator]] = {
    "forecast": Forecaster, "classify": Classifier, "language_model": Generator,
}


def write_bundle(spec_json: dict[str, Any], features_dir: Path, model_path: Path, bundle_dir: Path) -> tuple[Any, pd.DataFrame]:
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


class LstmflowModel(mlflow.pyfunc.PythonModel):
    """MLflow's wrapper around the bundle's :class:`Forecaster`, :class:`Classifier` or :class:`Generator`."""

    def load_context(self, context: Any) -> None:
        self.predictor = load_predictor(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """The predictor's answer; a bad request is MLflow's invalid-parameter error (HTTP 400), not a 500."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            return self.predictor.predict(pd.DataFrame(model_input))
        except BadRequest as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
