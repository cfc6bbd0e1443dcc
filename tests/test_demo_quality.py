"""The demo sets are worth an LSTM: the generated one needs the order of its steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from conftest import REPO
from lstmflow.config import Config, validate_pipeline
from lstmflow.data.sequences import assign_parts, prepare_sequence_features, read_sequence_table
from lstmflow.datasets import build_demo_data
from lstmflow.evaluate import evaluate_classifier
from lstmflow.loggers import ListLogger
from lstmflow.train import fit

pytestmark = pytest.mark.slow


def test_order_demo_needs_the_sequence(tmp_path: Path) -> None:
    """The LSTM of the `order` pipeline beats logistic regression on per-series mean, std and length by 15+ points."""
    build_demo_data(tmp_path / "raw")
    tree, _ = Config.load(REPO / "pipelines.yaml").merged("order")
    tree["data"]["path"] = str(tmp_path / "raw" / "order_sequences.csv")
    spec = validate_pipeline("order", tree, tmp_path)
    where = "pipelines.order.data"
    prepare_sequence_features(spec.data, tmp_path / "features", where)
    result = fit(spec, tmp_path / "features", tmp_path / "run", ListLogger(), progress=False)
    lstm = evaluate_classifier(spec, tmp_path / "features", Path(result.model_path), tmp_path / "plots")[0]["accuracy"]

    table = read_sequence_table(spec.data, where)
    parts = assign_parts(table.labels, spec.data.split, table.given_parts, where, names=table.names)
    summaries = np.array([[s.mean(), s.std(), len(s)] for s in table.sequences])
    labels = np.array(table.labels)
    order_blind = LogisticRegression(max_iter=1000).fit(summaries[parts == 0], labels[parts == 0])
    blind = order_blind.score(summaries[parts == 2], labels[parts == 2])
    assert lstm >= blind + 0.15, f"LSTM {lstm:.3f} vs order-blind {blind:.3f}"


def test_agents_demo_needs_word_order(tmp_path: Path) -> None:
    """The LSTM of the `agents` pipeline beats a bag-of-words logistic regression by 15+ points."""
    from lstmflow.data.text import prepare_text_features, read_texts

    build_demo_data(tmp_path / "raw")
    tree, _ = Config.load(REPO / "pipelines.yaml").merged("agents")
    tree["data"]["path"] = str(tmp_path / "raw" / "agents.csv")
    spec = validate_pipeline("agents", tree, tmp_path)
    where = "pipelines.agents.data"
    prepare_text_features(spec.data, tmp_path / "features", where)
    result = fit(spec, tmp_path / "features", tmp_path / "run", ListLogger(), progress=False)
    lstm = evaluate_classifier(spec, tmp_path / "features", Path(result.model_path), tmp_path / "plots")[0]["accuracy"]

    from sklearn.feature_extraction.text import CountVectorizer

    table = read_texts(spec.data, where)
    parts = assign_parts(table.labels, spec.data.split, table.given_parts, where, names=table.names)
    words = CountVectorizer().fit_transform(table.texts)
    labels = np.array(table.labels)
    bag = LogisticRegression(max_iter=1000).fit(words[parts == 0], labels[parts == 0])
    blind = bag.score(words[parts == 2], labels[parts == 2])
    assert lstm >= blind + 0.15, f"LSTM {lstm:.3f} vs bag of words {blind:.3f}"
