"""The per-frame network of `time_distributed` (lstmflow.models.frames): Keras shapes, masking of padded frames,
the shape rules with their YAML paths, the summary's rows, and a model that learns what only the order of frames
tells."""

from __future__ import annotations

import pytest
import torch

from lstmflow.config import ModelSpec
from lstmflow.config.model import Pool2DLayer
from lstmflow.errors import ConfigError
from lstmflow.models.frames import Pool2D, TimeDistributed
from lstmflow.models.lstm import build_model, summary

WHERE = "pipelines.clips.model"


def frames_model(frame: list[int], layers: list[dict], classes: int = 2, units: int = 8) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "layers": [
                {"time_distributed": {"input_shape": frame, "layers": layers}},
                {"lstm": {"units": units}},
                {"dense": {"activation": "softmax"}},
            ]
        }
    )


CONV_LAYERS = [
    {"conv2d": {"filters": 4, "kernel_size": 3, "activation": "relu"}},
    {"max_pool2d": {}},
    {"flatten": {}},
    {"dense": {"units": 16, "activation": "relu"}},
]


def test_a_batch_of_clips_of_different_lengths_gives_each_clip_what_it_gets_alone() -> None:
    torch.manual_seed(0)
    model = build_model(frames_model([6, 6, 2], CONV_LAYERS), 72, 2, WHERE).eval()
    clips = torch.rand(3, 5, 72)
    lengths = torch.tensor([5, 2, 4])
    batched = model(clips, lengths)
    for i in range(3):
        alone = model(clips[i : i + 1, : lengths[i]])
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_padded_frames_never_reach_the_per_frame_layers_and_stay_zero() -> None:
    spec = frames_model([4, 4, 1], [{"flatten": {}}, {"dense": {"units": 3}}])
    frames = TimeDistributed(spec.layers[0].time_distributed, "td")  # type: ignore[arg-type]
    seen: list[int] = []
    frames.layers[0].register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[0]))
    out = frames(torch.rand(2, 4, 16), torch.tensor([4, 1]))
    assert seen == [5]  # 4 + 1 valid frames, not 2 × 4
    assert out.shape == (2, 4, 3)
    assert torch.all(out[1, 1:] == 0)


def test_flatten_reads_frames_channels_last_like_keras() -> None:
    spec = frames_model([2, 3, 2], [{"flatten": {}}])
    frames = TimeDistributed(spec.layers[0].time_distributed, "td")  # type: ignore[arg-type]
    step = torch.arange(12.0).reshape(1, 1, 12)  # one frame stored (H, W, C) row-major
    assert torch.equal(frames(step).flatten(), step.flatten())


@pytest.mark.parametrize(
    ("layer", "size"),
    [
        ({"conv2d": {"filters": 2, "kernel_size": 3, "strides": 2}}, (4, 3)),  # same: ceil(7/2), ceil(5/2)
        ({"conv2d": {"filters": 2, "kernel_size": 3, "padding": "valid"}}, (5, 3)),
        ({"max_pool2d": {}}, (3, 2)),  # valid: whole windows only
        ({"average_pool2d": {"padding": "same"}}, (4, 3)),
    ],
)
def test_windows_give_keras_output_sizes(layer: dict, size: tuple[int, int]) -> None:
    model = build_model(frames_model([7, 5, 1], [layer, {"flatten": {}}]), 35, 2, WHERE)
    table = summary(model, 35)
    channels = 2 if "conv2d" in layer else 1
    assert f"(None, None, {size[0]}, {size[1]}, {channels})" in table


def test_pooling_with_same_padding_reads_only_the_frames_pixels_at_the_edges() -> None:
    image = -torch.ones(1, 1, 3, 3)  # all -1: padding read as 0 by a mean or a max would show
    same = Pool2DLayer(pool_size=2, padding="same")
    for mode in ("average", "max"):
        pooled = Pool2D(mode, same)(image)
        assert pooled.shape == (1, 1, 2, 2) and torch.all(pooled == -1)


def test_summary_shows_one_time_distributed_row_per_frame_layer_with_keras_counts() -> None:
    model = build_model(frames_model([8, 8, 3], CONV_LAYERS), 192, 2, WHERE)
    table = summary(model, 192)
    assert "Input(shape=(None, 8, 8, 3)) of frames" in table
    conv = 3 * 3 * 3 * 4 + 4
    dense = 4 * 4 * 4 * 16 + 16
    assert "time_distributed (TimeDistributed(Conv2D))" in table and f"{conv:,}" in table
    assert "time_distributed_2 (TimeDistributed(Flatten))" in table and "(None, None, 64)" in table
    assert "time_distributed_3 (TimeDistributed(Dense))" in table and f"{dense:,}" in table


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([{"conv2d": {"filters": 2, "kernel_size": 3}}], "time_distributed.layers: must end in one vector per frame"),
        (
            [{"flatten": {}}, {"max_pool2d": {}}],
            (
                "time_distributed.layers[1].max_pool2d: reads an image, but pipelines.clips.model.layers[0]"
                ".time_distributed.layers[0] made each frame one vector"
            ),
        ),
        ([{"dense": {"units": 3}}, {"flatten": {}}], "layers[0].dense: reads one vector per frame"),
        ([{"max_pool2d": {"pool_size": 9}}, {"flatten": {}}], "max_pool2d: leaves no pixel of a 8x8 frame"),
        ([{"lstm": {"units": 3}}, {"flatten": {}}], "layers[0].lstm: not a per-frame layer here"),
        ([{"flatten": {}}, {"dense": {}}], "layers[1].dense.units: is required inside time_distributed"),
    ],
)
def test_per_frame_layers_that_do_not_fit_are_refused_by_path(layers: list[dict], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_model(frames_model([8, 8, 1], layers), 64, 2, WHERE)
    assert f"{WHERE}.layers[0]." in str(caught.value) and message in str(caught.value)


def test_frame_layers_outside_time_distributed_and_a_late_time_distributed_are_refused() -> None:
    spec = ModelSpec.model_validate(
        {
            "layers": [
                {"lstm": {"units": 4, "return_sequences": True}},
                {"conv2d": {"filters": 2, "kernel_size": 3}},
                {"time_distributed": {"input_shape": [2, 2, 1], "layers": [{"flatten": {}}]}},
                {"global_average_pool": {}},
                {"dense": {}},
            ]
        }
    )
    with pytest.raises(ConfigError) as caught:
        build_model(spec, 4, 2, WHERE)
    text = str(caught.value)
    assert f"{WHERE}.layers[1].conv2d: reads each frame as an image" in text
    assert f"{WHERE}.layers[2].time_distributed: reads the input's frames, so it can only be the first layer" in text


def test_a_frame_shape_that_does_not_match_the_steps_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"input_shape: \[4, 4, 3\] holds 48 values per frame, but each step"):
        build_model(frames_model([4, 4, 3], [{"flatten": {}}]), 16, 2, WHERE)
    unknown = ModelSpec.model_validate(
        {"layers": [{"time_distributed": {"layers": [{"flatten": {}}]}}, {"lstm": {"units": 2}}, {"dense": {}}]}
    )
    with pytest.raises(ConfigError, match="input_shape: unknown; `data.kind: video` fills it in"):
        build_model(unknown, 16, 2, WHERE)


def test_learns_the_direction_of_motion_that_the_mean_frame_cannot_tell() -> None:
    """A dot crossing an 8x8 frame left to right or right to left: the two classes' mean frames are the same streak,
    so only the order of the frames tells them apart."""
    torch.manual_seed(0)
    clips, labels = [], []
    for i in range(64):
        row, right = i % 8, i % 2 == 0
        frames = torch.zeros(8, 8, 8)
        for step in range(8):
            frames[step, row, step if right else 7 - step] = 1.0
        clips.append(frames.reshape(8, 64, 1).squeeze(-1))
        labels.append(int(right))
    x, y = torch.stack(clips), torch.tensor(labels)
    layers = [{"conv2d": {"filters": 4, "kernel_size": 3, "activation": "relu"}}, {"flatten": {}}]
    model = build_model(frames_model([8, 8, 1], layers, units=16), 64, 2, WHERE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model.logits(x), y)
        loss.backward()
        optimizer.step()
    accuracy = (model.eval()(x).argmax(dim=1) == y).float().mean()
    assert accuracy > 0.95
