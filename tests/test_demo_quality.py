"""The generated demo sets are worth an LSTM: each needs the order of its steps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO
from sklearn.linear_model import LogisticRegression

from lstmflow.config import Config, PipelineSpec, validate_pipeline
from lstmflow.data.demo import build_demo_data
from lstmflow.data.sequences import assign_parts, prepare_sequence_features, read_sequence_table
from lstmflow.data.text import prepare_text_features, read_texts
from lstmflow.evaluation.evaluate import evaluate_classifier
from lstmflow.training.fit import fit
from lstmflow.training.loggers import ListLogger

pytestmark = pytest.mark.slow


def lstm_accuracy(tmp_path: Path, name: str, raw_file: str, prepare: Callable[..., Any]) -> tuple[PipelineSpec, float]:
    """Train the shipped pipeline `name` on freshly built demo data; returns its spec and test accuracy."""
    build_demo_data(tmp_path / "raw")
    tree, _ = Config.load(REPO / "pipelines.yaml").merged(name)
    tree["data"]["path"] = str(tmp_path / "raw" / raw_file)
    spec = validate_pipeline(name, tree, tmp_path)
    prepare(spec.data, tmp_path / "features", f"pipelines.{name}.data")
    result = fit(spec, tmp_path / "features", tmp_path / "run", ListLogger(), progress=False)
    metrics, _ = evaluate_classifier(spec, tmp_path / "features", Path(result.model_path), tmp_path / "plots")
    return spec, metrics.get("network_accuracy", metrics["accuracy"])  # the LSTM's own, not a blend's


def order_blind_accuracy(spec: PipelineSpec, table: Any, inputs: Any) -> float:
    """Logistic regression on order-free inputs, trained and scored on the pipeline's own train and test parts."""
    parts = assign_parts(
        table.labels, spec.data.split, table.given_parts, f"pipelines.{spec.name}.data", names=table.names
    )
    labels = np.array(table.labels)
    model = LogisticRegression(max_iter=1000).fit(inputs[parts == 0], labels[parts == 0])
    return model.score(inputs[parts == 2], labels[parts == 2])


def test_order_demo_needs_the_sequence(tmp_path: Path) -> None:
    """The `order` LSTM beats logistic regression on per-series mean, std and length by 15+ points."""
    spec, lstm = lstm_accuracy(tmp_path, "order", "order_sequences.csv", prepare_sequence_features)
    table = read_sequence_table(spec.data, "pipelines.order.data")
    summaries = np.array([[s.mean(), s.std(), len(s)] for s in table.sequences])
    blind = order_blind_accuracy(spec, table, summaries)
    assert lstm >= blind + 0.15, f"LSTM {lstm:.3f} vs order-blind {blind:.3f}"


def test_agents_demo_needs_word_order(tmp_path: Path) -> None:
    """The `agents` LSTM beats a bag-of-words logistic regression by 15+ points."""
    from sklearn.feature_extraction.text import CountVectorizer

    spec, lstm = lstm_accuracy(tmp_path, "agents", "agents.csv", prepare_text_features)
    table = read_texts(spec.data, "pipelines.agents.data")
    blind = order_blind_accuracy(spec, table, CountVectorizer().fit_transform(table.texts))
    assert lstm >= blind + 0.15, f"LSTM {lstm:.3f} vs bag of words {blind:.3f}"


def test_chirps_demo_needs_the_frame_order(tmp_path: Path) -> None:
    """The `chirps` LSTM beats logistic regression on each clip's per-band mean and deviation by 15+ points."""
    from lstmflow.data.audio import prepare_audio_features
    from lstmflow.data.sequences import load_sequences

    def prepare(data: Any, out_dir: Path, where: str) -> dict:
        return prepare_audio_features(data, out_dir, where, tmp_path / "cache")

    _spec, lstm = lstm_accuracy(tmp_path, "chirps", "chirps", prepare)
    features = load_sequences(tmp_path / "features")
    train, test = features.part("train"), features.part("test")

    def summaries(part: Any) -> np.ndarray:
        frames = [part.sequence(i) for i in range(len(part))]
        return np.array([np.concatenate([f.mean(axis=0), f.std(axis=0)]) for f in frames])

    blind = LogisticRegression(max_iter=2000).fit(summaries(train), train.labels).score(summaries(test), test.labels)
    assert lstm >= blind + 0.15, f"LSTM {lstm:.3f} vs order-blind {blind:.3f}"
