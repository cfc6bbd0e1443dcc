"""Video classification end to end on tiny real clips: the default model and its frame shape from the data, training
through the ordinary loop beside the order-blind baseline, the summary's Keras rows, and the served classifier
(paths and bytes, bad rows)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lstmflow.config import validate_pipeline
from lstmflow.data.demo import write_video
from lstmflow.data.kinds import resolve
from lstmflow.data.video import prepare_video_features
from lstmflow.errors import ConfigError
from lstmflow.evaluation.evaluate import evaluate_classifier
from lstmflow.models.lstm import summary
from lstmflow.ops.probe import model_for
from lstmflow.serving.predictors import BadRequest, Classifier, write_bundle
from lstmflow.training.fit import fit
from lstmflow.training.loggers import ListLogger

SIDE, FRAMES = 12, 8
SMALL_MODEL = {
    "layers": [
        {
            "time_distributed": {
                "layers": [
                    {"conv2d": {"filters": 4, "kernel_size": 3, "activation": "relu"}},
                    {"max_pool2d": {}},
                    {"flatten": {}},
                ]
            }
        },
        {"lstm": {"units": 16}},
        {"dense": {"activation": "softmax"}},
    ]
}


def write_moving_dots(root: Path, per_class: int = 20) -> Path:
    """Clips of a bright block crossing a dark frame left to right or right to left, on a random row: the two
    classes' mean frames are alike, their order is not."""
    rng = np.random.default_rng(0)
    for label in ("left", "right"):
        for index in range(per_class):
            row, start = int(rng.integers(0, SIDE - 2)), int(rng.integers(0, SIDE - 1 - FRAMES))
            clip = np.full((FRAMES, SIDE, SIDE, 3), 20, dtype=np.uint8)
            for step in range(FRAMES):  # the same columns both ways, in opposite orders
                column = start + (step if label == "right" else FRAMES - 1 - step)
                clip[step, row : row + 2, column : column + 2] = 230
            write_video(root / label / f"{index:02d}.mp4", clip, fps=8)
    return root


def video_spec(root: Path, **sections: object):
    raw = {
        "task": "classify",
        "data": {"kind": "video", "path": "dots", "frame_size": [SIDE, SIDE], "grayscale": True, "workers": 1},
        "model": SMALL_MODEL,
        "train": {"epochs": 40, "batch_size": 8, "optimizer": {"lr": 0.01}, "seed": 0},
    }
    return resolve(validate_pipeline("dots", raw | sections, root))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, Path]:
    root = tmp_path_factory.mktemp("video")
    write_moving_dots(root / "dots")
    spec = video_spec(root)
    prepare_video_features(spec.data, root / "features", "pipelines.dots.data", root / "cache")
    result = fit(spec, root / "features", root / "run", ListLogger(), progress=False)
    return spec, root, Path(result.model_path)


def test_a_video_classifier_gets_a_per_frame_network_before_an_lstm_sized_by_the_data(tmp_path: Path) -> None:
    write_moving_dots(tmp_path / "dots", per_class=3)
    data = {"kind": "video", "path": "dots", "frame_size": [SIDE, SIDE], "grayscale": True}
    spec = resolve(validate_pipeline("dots", {"task": "classify", "data": data}, tmp_path))  # no `model` section
    assert [layer.kind for layer in spec.model.layers] == ["time_distributed", "lstm", "dropout", "dense"]
    frames = spec.model.layers[0].time_distributed
    assert frames is not None and frames.input_shape == [SIDE, SIDE, 1]
    model, n_features = model_for(spec)
    table = summary(model, n_features)
    assert f"Input(shape=(None, {SIDE}, {SIDE}, 1)) of frames" in table
    assert "time_distributed (TimeDistributed(Conv2D))" in table and f"{3 * 3 * 1 * 16 + 16:,}" in table


def test_a_frame_shape_other_than_the_datas_is_refused_by_path(tmp_path: Path) -> None:
    write_moving_dots(tmp_path / "dots", per_class=2)
    layers = [{"time_distributed": {"input_shape": [8, 8, 1], "layers": [{"flatten": {}}]}}, *SMALL_MODEL["layers"][1:]]
    with pytest.raises(
        ConfigError, match=r"model.layers\[0\].time_distributed.input_shape: \[8, 8, 1\], but the video"
    ):
        video_spec(tmp_path, model={"layers": layers})


def test_the_lstm_tells_directions_of_motion_apart_where_the_order_blind_baseline_cannot(
    trained: tuple[object, Path, Path], tmp_path: Path
) -> None:
    spec, root, model_path = trained
    metrics, _ = evaluate_classifier(spec, root / "features", model_path, tmp_path)  # type: ignore[arg-type]
    assert metrics["accuracy"] >= 0.8, metrics
    assert metrics["accuracy"] > metrics["baseline_accuracy"], metrics


def test_the_served_video_classifier_reads_paths_and_bytes_and_refuses_bad_rows(
    trained: tuple[object, Path, Path], tmp_path: Path
) -> None:
    spec, root, model_path = trained
    predictor, example = write_bundle(
        spec.model_dump(mode="json"),
        root / "features",
        model_path,
        tmp_path / "b",  # type: ignore[attr-defined]
    )
    assert isinstance(predictor, Classifier) and list(example.columns) == ["path", "video_base64"]
    assert len(predictor.predict(example)) == 2  # one clip by path, one by bytes
    clip = root / "dots" / "right" / "03.mp4"
    by_path = predictor.predict(pd.DataFrame({"path": [str(clip)]}))
    by_bytes = predictor.predict(pd.DataFrame({"video_base64": [base64.b64encode(clip.read_bytes()).decode()]}))
    np.testing.assert_allclose(by_path.filter(like="prob_"), by_bytes.filter(like="prob_"), atol=1e-6)
    with pytest.raises(BadRequest, match="is not a file this model may read"):
        predictor.predict(pd.DataFrame({"path": ["/etc/hostname"]}))
    with pytest.raises(BadRequest, match="not readable as video"):
        predictor.predict(pd.DataFrame({"video_base64": [base64.b64encode(b"not a video").decode()]}))
    with pytest.raises(BadRequest, match="needs a 'path' column or a 'video_base64' one"):
        predictor.predict(pd.DataFrame({"text": ["hello"]}))
    big = write_video(tmp_path / "big.webm", np.zeros((4, 2 * SIDE, 3 * SIDE, 3), dtype=np.uint8), fps=8)
    resized = predictor.predict(pd.DataFrame({"video_base64": [base64.b64encode(big.read_bytes()).decode()]}))
    assert len(resized) == 1  # another size and container: resized to data.frame_size as in training
