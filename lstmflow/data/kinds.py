"""One entry point per step for every data kind, so the pipeline's steps never branch on ``data.kind``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from lstmflow.config import DataSpec, PipelineSpec
from lstmflow.errors import ConfigError, DataError

_DATA_SPEC = TypeAdapter(DataSpec)


def parse_data_spec(data: dict[str, Any]) -> Any:
    """A data spec mapping (as written to ``params.yaml``) back to its typed model."""
    return _DATA_SPEC.validate_python(data)


def resolve(spec: PipelineSpec) -> PipelineSpec:
    """Fill the defaults that depend on the data itself (a series' window, horizon, season)."""
    if spec.data.kind == "timeseries":
        from lstmflow.data.timeseries import resolve_data

        return resolve_data(spec)
    if spec.data.kind == "video":
        from lstmflow.data.video import frame_shape

        return _with_frame_shape(spec, list(frame_shape(spec.data, f"pipelines.{spec.name}.data")))
    return spec


def _with_frame_shape(spec: PipelineSpec, shape: list[int]) -> PipelineSpec:
    """The spec whose ``time_distributed`` layers read frames of ``shape`` (height, width, channels), the data's;
    a layer that gives another shape is refused, naming both."""
    layers = []
    for index, layer in enumerate(spec.model.layers):
        frames = layer.time_distributed
        if frames is not None and frames.input_shape not in (None, shape):
            raise ConfigError(
                f"pipelines.{spec.name}.model.layers[{index}].time_distributed.input_shape: {frames.input_shape}, but "
                f"the video frames are {shape} (height, width, channels from data.frame_size and data.grayscale); "
                "leave input_shape out"
            )
        if frames is not None:
            layer = layer.model_copy(update={"time_distributed": frames.model_copy(update={"input_shape": shape})})
        layers.append(layer)
    return spec.model_copy(update={"model": spec.model.model_copy(update={"layers": layers})})


def build_features(data: Any, season: int | None, out_dir: Path, where: str, cache_dir: Path) -> dict[str, Any]:
    """Read the raw data of any kind and write the features folder that training reads.

    ``cache_dir`` keeps per-file work (audio and speech features, video frames) that must outlive the folder DVC
    deletes before a rerun.
    """
    if data.kind == "timeseries":
        from lstmflow.data.timeseries import prepare_features

        return prepare_features(data, season, out_dir, where)
    if data.kind == "sequences":
        from lstmflow.data.sequences import prepare_sequence_features

        return prepare_sequence_features(data, out_dir, where)
    if data.kind == "text":
        from lstmflow.data.text import prepare_text_features

        return prepare_text_features(data, out_dir, where)
    if data.kind == "corpus":
        from lstmflow.data.corpus import prepare_corpus_features

        return prepare_corpus_features(data, out_dir, where)
    if data.kind == "pairs":
        from lstmflow.data.pairs import prepare_pairs_features

        return prepare_pairs_features(data, out_dir, where)
    if data.kind == "audio":
        from lstmflow.data.audio import prepare_audio_features

        return prepare_audio_features(data, out_dir, where, cache_dir)
    if data.kind == "speech":
        from lstmflow.data.speech import prepare_speech_features

        return prepare_speech_features(data, out_dir, where, cache_dir)
    if data.kind == "video":
        from lstmflow.data.video import prepare_video_features

        return prepare_video_features(data, out_dir, where, cache_dir)
    from lstmflow.data.images import prepare_image_features

    return prepare_image_features(data, out_dir, where)


def model_io(spec: PipelineSpec) -> tuple[int, int | None]:
    """(input features per step, outputs the task needs) read from the resolved spec and its raw data.

    A classifier's data are also divided into parts, as the data stage will, so that a bad split column, a single
    class or a class missing from the training part is refused here too. For a series whose horizon is not resolved
    yet (its data are still to be built), the outputs are unknown: None.
    """
    data, where = spec.data, f"pipelines.{spec.name}.data"
    if data.kind == "timeseries":
        return len(data.target) + len(data.features), data.horizon * len(data.target) if data.horizon else None
    if data.kind == "text":
        from lstmflow.data.text import text_model_io

        return text_model_io(data, where)
    if data.kind == "corpus":
        from lstmflow.data.corpus import corpus_model_io

        return corpus_model_io(data, where)
    if data.kind == "pairs":
        from lstmflow.data.pairs import pairs_model_io

        return pairs_model_io(data, where)
    if data.kind == "speech":
        from lstmflow.data.speech import speech_model_io

        return speech_model_io(data, where)
    if data.kind == "audio" or data.kind == "video":
        return _clip_model_io(data, where)
    if data.kind == "sequences":
        from lstmflow.data.sequences import read_sequence_table

        table = read_sequence_table(data, where)
        classes = _classes(table.labels, table.given_parts, data, table.names, where)
        return table.sequences[0].shape[1], classes
    from lstmflow.data.images import read_images

    images = read_images(data, where)
    classes = _classes(images.labels, images.given_parts, data, images.names, where)
    return images.images[0].shape[1], classes


def _clip_model_io(data: Any, where: str) -> tuple[int, int]:
    """(features per step, classes) of labelled clips, from their listing (and a video's frame size: ``frame_size``,
    or the first clip's); bad files are refused under ``bad_files: fail`` as far as their headers show."""
    from lstmflow.data import audio, video
    from lstmflow.data.clips import refuse_bad_clips

    kind = audio if data.kind == "audio" else video
    clips, bad, given = kind.read_clips(data, where)
    if data.bad_files == "fail":
        refuse_bad_clips(bad + kind.unreadable_clips(clips), where)
    features = audio.n_features(data) if data.kind == "audio" else math.prod(video.frame_shape(data, where))
    return features, _classes([clip.label for clip in clips], given, data, [c.name for c in clips], where)


def _classes(labels: list[str], given: Any, data: Any, names: list[str], where: str) -> int:
    """How many classes, after dividing the samples into parts as the data stage will (its errors raised here)."""
    from lstmflow.data.parts import assign_parts
    from lstmflow.data.sequences.prepare import check_classes

    if not labels:
        raise DataError(f"{where}.path: no samples found in {data.path}")
    parts = assign_parts(labels, data.split, given, where, names=names)
    check_classes(sorted(set(labels)), labels, parts, where)
    return len(set(labels))
