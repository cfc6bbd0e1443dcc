"""Keras' ``TimeDistributed`` around a per-frame network: the layers of a ``time_distributed`` spec layer read each
step of a video as an image and turn it into one vector, so that the lstm after them reads a sequence of frame
vectors (the long-term recurrent convolutional network of Donahue et al. 2015, trained end to end).

A step arrives as its (height × width × channels) pixel values, channels last (what the video data kind stores);
only the valid frames of a batch go through the per-frame layers, as one batch of images, so padding costs no
convolution. The shape rules of the per-frame layers live here too, because they need the frame's size.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lstmflow.config import BatchNormLayer, DenseLayer, DropoutLayer, LayerSpec
from lstmflow.config.model import (
    ActivationLayer,
    Conv2DLayer,
    FlattenLayer,
    GlobalPoolLayer,
    LayerNormLayer,
    Pool2DLayer,
    TimeDistributedLayer,
)
from lstmflow.models.layers import ACTIVATIONS, Dense, FeatureBatchNorm, valid_steps

#: Per-frame layers that read and emit an image (N, C, H, W).
ON_IMAGE = frozenset({"conv2d", "max_pool2d", "average_pool2d", "batchnorm", "activation", "dropout"})
#: Per-frame layers that turn an image into one vector.
TO_VECTOR = frozenset({"flatten", "global_average_pool", "global_max_pool"})
#: Per-frame layers that read and emit a vector (N, F).
ON_VECTOR = frozenset({"dense", "dropout", "batchnorm", "layernorm", "activation"})

#: A frame's (height, width, channels).
FrameShape = tuple[int, int, int]


# ------------------------------------------------------------------------------------------------ shape rules


def frame_problems(layers: list[LayerSpec], where: str, n_features: int) -> list[str]:
    """What stops the ``time_distributed`` layers of a layer list from reading frames of ``n_features`` values: a
    missing or wrong frame shape, a layer that does not fit where it stands, a frame that shrinks to nothing."""
    problems: list[str] = []
    for index, layer in enumerate(layers):
        if layer.time_distributed is not None:
            problems += _time_distributed_problems(layer.time_distributed, f"{where}.layers[{index}]", n_features)
    return problems


def _time_distributed_problems(spec: TimeDistributedLayer, path: str, n_features: int) -> list[str]:
    name = f"{path}.time_distributed"
    if spec.input_shape is None:
        unknown = "unknown; `data.kind: video` fills it in, other data kinds must give [height, width, channels]"
        return [f"{name}.input_shape: {unknown}"]
    height, width, channels = spec.input_shape
    if min(spec.input_shape) < 1 or height * width * channels != n_features:
        values = f"{spec.input_shape} holds {height * width * channels} values per frame"
        return [f"{name}.input_shape: {values}, but each step of the data has {n_features}"]
    problems: list[str] = []
    image: tuple[int, int] | None = (height, width)  # None once the frame is a vector
    vector_from = ""  # the layer that made it one
    for position, layer in enumerate(spec.layers):
        at, kind = f"{name}.layers[{position}].{layer.kind}", layer.kind
        if image is not None and kind in ON_IMAGE | TO_VECTOR:
            image = _image_after(layer, image)
            if image is not None and min(image) < 1:
                problems.append(f"{at}: leaves no pixel of a {height}x{width} frame; use padding: same or fewer pools")
                return problems
            if kind in TO_VECTOR:
                image, vector_from = None, f"{name}.layers[{position}]"
        elif image is None and kind in ON_VECTOR:
            if layer.dense is not None and layer.dense.units is None:
                problems.append(f"{at}.units: is required inside time_distributed (only the last layer's is inferred)")
        elif image is not None and kind in ON_VECTOR:
            problems.append(f"{at}: reads one vector per frame; put `- flatten: {{}}` or a global pool before it")
        elif image is None and kind in ON_IMAGE | TO_VECTOR:
            problems.append(f"{at}: reads an image, but {vector_from} made each frame one vector; move it before")
        else:
            allowed = sorted(ON_IMAGE | TO_VECTOR | ON_VECTOR)
            problems.append(f"{at}: not a per-frame layer here; time_distributed takes {', '.join(allowed)}")
    if image is not None and not problems:
        problems.append(
            f"{name}.layers: must end in one vector per frame; end them with `- flatten: {{}}` or a global pool"
        )
    return problems


def _image_after(layer: LayerSpec, size: tuple[int, int]) -> tuple[int, int] | None:
    """A frame's (height, width) after a layer that reads images; None for one that makes it a vector."""
    if layer.kind in TO_VECTOR:
        return None
    window = layer.conv2d or layer.max_pool2d or layer.average_pool2d
    if window is None:
        return size
    kernel = window.kernel_size if isinstance(window, Conv2DLayer) else window.pool_size
    strides = window.strides or kernel
    return cast(tuple[int, int], tuple(_positions(side, kernel, strides, window.padding) for side in size))


def _positions(side: int, kernel: int, strides: int, padding: str) -> int:
    """Positions of a window along one side of a frame (Keras' output size)."""
    return math.ceil(side / strides) if padding == "same" else (side - kernel) // strides + 1


# ------------------------------------------------------------------------------------------------ modules


class Conv2D(nn.Module):
    """Keras ``Conv2D`` on (N, C, H, W): glorot_uniform kernel, zero bias; ``same`` pads as TensorFlow does (the
    extra zero, when the total is odd, after the frame)."""

    def __init__(self, channels: int, spec: Conv2DLayer) -> None:
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv2d(channels, spec.filters, spec.kernel_size, stride=spec.strides)
        self.activation = ACTIVATIONS[spec.activation]()
        nn.init.xavier_uniform_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)  # type: ignore[arg-type]  # set: Conv2d's bias=True

    def forward(self, x: Tensor) -> Tensor:
        if self.spec.padding == "same":
            x = F.pad(x, _same_padding(x, self.spec.kernel_size, self.spec.strides))
        return self.activation(self.conv(x))


class Pool2D(nn.Module):
    """Keras ``MaxPooling2D`` / ``AveragePooling2D`` on (N, C, H, W); under ``same`` a partial window at an edge
    takes the max, or the mean, of the frame's own pixels only, as TensorFlow's pooling does."""

    def __init__(self, mode: str, spec: Pool2DLayer) -> None:
        super().__init__()
        self.mode, self.size, self.padding = mode, spec.pool_size, spec.padding
        self.strides = spec.strides or spec.pool_size

    def forward(self, x: Tensor) -> Tensor:
        pad = _same_padding(x, self.size, self.strides) if self.padding == "same" else (0, 0, 0, 0)
        if self.mode == "max":
            return F.max_pool2d(F.pad(x, pad, value=float("-inf")), self.size, self.strides)
        sums = F.avg_pool2d(F.pad(x, pad), self.size, self.strides)
        counts = F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), pad), self.size, self.strides)  # (1, 1, H', W')
        return sums / counts


def _same_padding(x: Tensor, kernel: int, strides: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zeros that give ceil(side / strides) windows each way, TensorFlow's ``same``."""
    pads = []
    for side in (x.shape[-1], x.shape[-2]):  # F.pad lists the last axis (width) first
        total = max((math.ceil(side / strides) - 1) * strides + kernel - side, 0)
        pads += [total // 2, total - total // 2]
    return cast(tuple[int, int, int, int], tuple(pads))


class Flatten(nn.Module):
    """Keras ``Flatten`` of a channels-last image: (N, C, H, W) → (N, H × W × C) in Keras' order."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


class GlobalPool2D(nn.Module):
    """Keras ``GlobalMaxPooling2D`` / ``GlobalAveragePooling2D``: (N, C, H, W) → (N, C) over the frame's pixels."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return x.amax(dim=(2, 3)) if self.mode == "max" else x.mean(dim=(2, 3))


class TimeDistributed(nn.Module):
    """(B, T, H × W × C) → (B, T, F): the per-frame ``layers`` on every valid frame; padded steps stay zero."""

    def __init__(self, spec: TimeDistributedLayer, name: str) -> None:
        super().__init__()
        assert spec.input_shape is not None  # frame_problems refuses a spec without one
        self.frame_shape = cast(FrameShape, tuple(spec.input_shape))
        height, width, channels = self.frame_shape
        modules: list[nn.Module] = []
        size: int | tuple[int, int] = (height, width)  # pixels while an image, then the vector's width
        for position, layer in enumerate(spec.layers):
            module, channels, size = _frame_module(layer, channels, size, f"{name}.layers[{position}]")
            modules.append(module)
        self.layers = nn.ModuleList(modules)
        assert isinstance(size, int)  # frame_problems makes every frame end as a vector
        self.out_features = size

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        batch, steps, _ = x.shape
        height, width, channels = self.frame_shape
        valid = valid_steps(lengths.to(x.device), steps) if lengths is not None else None
        frames = x[valid] if valid is not None else x.reshape(batch * steps, -1)  # (N, H·W·C)
        out = frames.reshape(-1, height, width, channels).permute(0, 3, 1, 2)  # (N, C, H, W)
        for layer in self.layers:
            out = layer(out)
        if valid is None:
            return out.reshape(batch, steps, -1)  # (B, T, F)
        return x.new_zeros(batch, steps, out.shape[-1]).masked_scatter(valid.unsqueeze(-1), out)


def _frame_module(
    layer: LayerSpec, channels: int, size: int | tuple[int, int], name: str
) -> tuple[nn.Module, int, int | tuple[int, int]]:
    """The module of one per-frame layer reading ``channels`` × ``size`` (pixels as (H, W), or a vector's width),
    with the channels and size it emits."""
    args = layer.args
    match args:
        case Conv2DLayer() | Pool2DLayer():
            assert isinstance(size, tuple)
            shrunk = _image_after(layer, size)
            assert shrunk is not None  # a window layer keeps an image
            if isinstance(args, Conv2DLayer):
                return Conv2D(channels, args), args.filters, shrunk
            return Pool2D("max" if layer.kind == "max_pool2d" else "average", args), channels, shrunk
        case FlattenLayer():
            assert isinstance(size, tuple)
            return Flatten(), channels, size[0] * size[1] * channels
        case GlobalPoolLayer():
            return GlobalPool2D("max" if layer.kind == "global_max_pool" else "average"), channels, channels
        case BatchNormLayer() if isinstance(size, tuple):
            return nn.BatchNorm2d(channels, eps=args.epsilon, momentum=1.0 - args.momentum), channels, size
        case BatchNormLayer():
            assert isinstance(size, int)
            return FeatureBatchNorm(size, eps=args.epsilon, momentum=1.0 - args.momentum), channels, size
        case LayerNormLayer():
            assert isinstance(size, int)
            return nn.LayerNorm(size, eps=args.epsilon), channels, size
        case DenseLayer():
            assert isinstance(size, int) and args.units is not None
            return Dense(size, args.units, args.activation), channels, args.units
        case DropoutLayer():
            return nn.Dropout(args.rate), channels, size
        case ActivationLayer():
            return ACTIVATIONS[args.activation](), channels, size
        case _:
            raise TypeError(f"{name}: no per-frame module for layer kind {layer.kind!r}")
