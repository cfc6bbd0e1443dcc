"""Video clips as sequences: each sampled frame is one time step, its pixels (height × width × channels) the features.

Clips are listed as audio clips are (:mod:`lstmflow.data.clips`): a folder with one subfolder of clips per label, or
a manifest CSV with ``path`` and ``label`` columns. They are decoded with PyAV, which carries FFmpeg's libraries and
codecs inside its wheel (mp4/h264, avi/mjpeg, webm/vp8/vp9, gif, ...), so a fresh machine needs no system FFmpeg:

1. frames are sampled by their timestamps, ``fps`` per second (every frame with ``fps: null``);
2. each is resized with FFmpeg's swscale (area averaging) to ``frame_size`` and converted to RGB or luma;
3. a clip giving more than ``max_frames`` keeps that many, evenly spaced over its whole length; fewer than
   ``min_frames`` makes it a bad clip.

A clip's steps are (T, H × W × C) float32 pixel values / 255 in [0, 1], each frame's (H, W, C) pixels flattened row
by row with the channels last: the model reshapes a step back to (H, W, C). A served model calls
:func:`clip_frames` on uploaded bytes, so training and serving see identical frames.

Decoding is the expensive part, so clips are decoded in worker processes and cached per clip as uint8 frames outside
the output folder (:mod:`lstmflow.data.clip_cache`, keyed by the file's bytes and :func:`video_params`); a clip
that cannot be used is named with the reason and skipped or makes the stage fail, as ``bad_files`` says. Every worker
process imports this module, so its top level stays light: PyAV is imported where a clip is opened, and the store's
helpers inside the parent-only functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from lstmflow.config import VideoSpec
from lstmflow.data import clips as labelled_clips
from lstmflow.data.clips import BadClip, Clip, ClipFiles, ClipListing, store_clips
from lstmflow.errors import DataError

if TYPE_CHECKING:  # PyAV is imported where a clip is opened
    from av import VideoFrame, VideoStream
    from av.container import InputContainer

#: File name endings read as video (compared lower-case); any other file is a bad file ("wrong extension").
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".webm", ".gif", ".mov", ".mkv", ".m4v"})
VIDEO_FILES = ClipFiles("video", VIDEO_SUFFIXES)
#: Bumped when decoding changes in a way :func:`video_params` does not show; part of every cache key.
FRAMES_VERSION = 1
#: A worker process costs about a second to start (Python, numpy, pydantic and PyAV's imports), while the demo's
#: clips (2.9 KB: 16 frames of 32x32 H.264) decode and cache in about 4.4 ms each here (~650 KB/s, mostly opening the
#: container and converting frames): a worker is started per this many bytes of clips to decode (about 3 s of work).
#: Larger frames decode more bytes per second, so ``workers`` is an upper bound that long high-resolution clips
#: reach sooner than they need.
BYTES_PER_PROCESS = 2_000_000
#: Sampled frames are binned by ``floor(seconds × fps + this)``: timestamps that land a rounding error short of a
#: bin's start (1/3 s in a 1/90000 time base) still open it.
_TIME_SLACK = 1e-6


def channels(spec: VideoSpec) -> int:
    """Values per pixel: 1 (luma) or 3 (RGB)."""
    return 1 if spec.grayscale else 3


def video_params(spec: VideoSpec) -> dict[str, Any]:
    """Every setting that changes a clip's frames: the cache key, and (with the store's frame size filled in where
    ``frame_size`` is null) the meta a served model decodes requests with."""
    height, width = spec.frame_size if spec.frame_size is not None else (None, None)
    return {
        "frame_height": height,
        "frame_width": width,
        "channels": channels(spec),
        "fps": spec.fps,
        "max_frames": spec.max_frames,
        "min_frames": spec.min_frames,
        "grayscale": spec.grayscale,
    }


# ------------------------------------------------------------------------------------------ decoding


def clip_frames(source: Path | BinaryIO, spec: VideoSpec) -> np.ndarray:
    """A clip's steps: (T, H × W × C) float32 in [0, 1], each frame's (H, W, C) pixels flattened row by row, channels
    last, from a file or its bytes (a served request's). A clip that cannot be used raises DataError with the
    reason (the caller adds which file)."""
    return frame_steps(decode_frames(source, spec))


def frame_steps(frames: np.ndarray) -> np.ndarray:
    """Decoded (T, H, W, C) uint8 frames → (T, H × W × C) float32 steps, pixel values / 255."""
    steps = frames.reshape(len(frames), -1).astype(np.float32)  # (T, H·W·C)
    steps /= 255
    return steps


def decode_frames(source: Path | BinaryIO, spec: VideoSpec) -> np.ndarray:
    """A clip's sampled frames as (T, H, W, C) uint8: what the cache keeps (a quarter of the float steps' bytes, and
    the frame size that the steps no longer show)."""
    import av  # imported here: worker processes and serving need it, the listing does not

    _refuse_empty(source)
    try:
        container = av.open(str(source) if isinstance(source, Path) else source, mode="r")
    except (av.error.FFmpegError, OSError) as exc:
        raise DataError(f"not readable as video ({_reason(exc)})") from None
    with container:
        if not container.streams.video:
            raise DataError("not readable as video (no video stream)")
        stream = container.streams.video[0]
        stream.thread_count = 1  # processes decode clips in parallel; threads per short clip cost more than they give
        frames = _sampled_frames(container, stream, spec)
    if len(frames) < spec.min_frames:
        sampled = f" at {spec.fps:g} fps" if spec.fps is not None else ""
        raise DataError(f"too few frames: {len(frames)} sampled{sampled}, fewer than min_frames {spec.min_frames}")
    if len(frames) > spec.max_frames:
        frames = [frames[i] for i in np.round(np.linspace(0, len(frames) - 1, spec.max_frames)).astype(int)]
    stacked = np.stack(frames)  # (T, H, W) for luma, (T, H, W, 3) for RGB
    return stacked[..., None] if stacked.ndim == 3 else stacked  # (T, H, W, C)


def _sampled_frames(container: InputContainer, stream: VideoStream, spec: VideoSpec) -> list[np.ndarray]:
    """Decode ``stream``, keeping the first frame of each 1/fps-second bin (all frames with fps null), each
    resized to ``frame_size`` (or to the first frame's size) and converted: (H, W, 3) RGB or (H, W) luma uint8.

    Every sampled frame is kept until the clip ends, since the frames that ``max_frames`` keeps depend on how many
    there are: memory grows with the clip's sampled frames at the output size.
    """
    import av
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()  # one per clip: it keeps FFmpeg's scaler between frames (twice as fast)
    size = spec.frame_size
    kept: list[np.ndarray] = []
    last_bin, start, decoded = -1, None, 0
    try:
        for frame in container.decode(stream):
            decoded += 1
            if spec.fps is not None:
                time = _frame_time(frame, decoded - 1, stream)
                start = time if start is None else start
                slot = math.floor((time - start) * spec.fps + _TIME_SLACK)
                if slot <= last_bin:
                    continue
                last_bin = slot
            height, width = size if size is not None else (frame.height, frame.width)
            size = [height, width]
            converted = reformatter.reformat(
                frame, width=width, height=height, format="gray" if spec.grayscale else "rgb24", interpolation="AREA"
            )
            kept.append(converted.to_ndarray())
    except (av.error.FFmpegError, ValueError) as exc:  # ValueError: a pixel format FFmpeg cannot convert
        raise DataError(f"decode error after {decoded} frame(s) ({_reason(exc)})") from None
    return kept


def _frame_time(frame: VideoFrame, index: int, stream: VideoStream) -> float:
    """A frame's presentation time in seconds; from its index and the stream's frame rate when it has none."""
    if frame.time is not None:
        return float(frame.time)
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise DataError("frames have no timestamps and the stream no frame rate, so fps cannot be sampled")
    return index / float(rate)


def _refuse_empty(source: Path | BinaryIO) -> None:
    """A zero-length file is named as such (FFmpeg would call it invalid data)."""
    if isinstance(source, Path):
        size = source.stat().st_size
    elif source.seekable():
        here = source.tell()
        size = source.seek(0, 2) - here
        source.seek(here)
    else:
        return
    if size == 0:
        raise DataError("empty file (0 bytes)")


def _reason(exc: BaseException) -> str:
    """FFmpeg's words for an error, without its error number and file name."""
    return str(getattr(exc, "strerror", None) or exc)


# ---------------------------------------------------------------------------------------- listing clips


def read_clips(spec: VideoSpec, where: str) -> ClipListing:
    """The clips ``spec.path`` names (and those of ``split.files``) in a deterministic order, with their given parts."""
    return labelled_clips.read_clips(spec, where, VIDEO_FILES)


def probe_clip(path: Path) -> None:
    """Open a clip's container only: DataError with the reason when it holds no video."""
    import av

    _refuse_empty(path)
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise DataError("not readable as video (no video stream)")
    except (av.error.FFmpegError, OSError) as exc:
        raise DataError(f"not readable as video ({_reason(exc)})") from None


def unreadable_clips(clips: Sequence[Clip]) -> list[BadClip]:
    """Those of the first clips whose container does not open as video
    (:func:`lstmflow.data.clips.unreadable_clips`)."""
    return labelled_clips.unreadable_clips(clips, probe_clip)


def frame_shape(spec: VideoSpec, where: str) -> tuple[int, int, int]:
    """(height, width, channels) of every frame the store holds: ``frame_size``, or with ``frame_size: null`` the size
    of the first clip that decodes into enough frames (the clip the data stage measures the others by)."""
    if spec.frame_size is not None:
        return spec.frame_size[0], spec.frame_size[1], channels(spec)
    listed = read_clips(spec, where)
    for clip in listed.clips:
        try:
            _, height, width, depth = decode_frames(clip.path, spec).shape
        except DataError:
            continue
        return height, width, depth
    raise DataError(
        f"{where}.path: none of the {len(listed.clips)} clip(s) in {spec.path} decodes, so frame_size: null has no "
        "size to keep"
    )


# ---------------------------------------------------------------------------------------- the stage


def _one_size(clips: Sequence[Clip], results: list[np.ndarray | str]) -> list[np.ndarray | str]:
    """With ``frame_size: null``: every clip whose frames differ in size from the first usable clip's becomes bad,
    named beside that clip (a store holds one frame size, the model's input)."""
    usable = [(i, result) for i, result in enumerate(results) if not isinstance(result, str)]
    if not usable:
        return results
    first, (height, width) = usable[0][0], usable[0][1].shape[1:3]
    checked: list[np.ndarray | str] = []
    for result in results:
        if isinstance(result, str) or result.shape[1:3] == (height, width):
            checked.append(result)
        else:
            checked.append(
                f"frames are {result.shape[1]}x{result.shape[2]} (height x width) but {clips[first].name}'s are "
                f"{height}x{width}; with frame_size: null every clip must have one size (set frame_size to resize)"
            )
    return checked


def prepare_video_features(spec: VideoSpec, out_dir: Path, where: str, cache_dir: Path) -> dict[str, Any]:
    """The data stage of a `video` pipeline: list, decode (cached, parallel), divide into parts, write the store.

    Returns write_sequences' summary plus ``skipped`` and ``skipped_files`` (bad files left out), ``computed`` and
    ``cached`` (clips decoded this run vs taken from ``cache_dir``). ``skipped.json`` in ``out_dir`` lists each
    skipped file and why; the store's extra meta holds :func:`video_params` with the frames' size.
    """
    import av

    from lstmflow.data import clip_cache

    found = read_clips(spec, where)
    decoding = clip_cache.Decoding(
        decode=partial(decode_frames, spec=spec),
        params={**video_params(spec), "version": FRAMES_VERSION, "decoder": f"PyAV {av.__version__}"},
        workers=spec.workers,
        bytes_per_process=BYTES_PER_PROCESS,
        description="video frames",
    )
    results, computed = clip_cache.decode_cached([clip.path for clip in found.clips], decoding, cache_dir)
    if spec.frame_size is None:
        results = _one_size(found.clips, results)
    extra = video_params(spec)
    sizes = [result.shape[1:3] for result in results if not isinstance(result, str)]
    if sizes:
        extra.update(frame_height=int(sizes[0][0]), frame_width=int(sizes[0][1]))
    steps = [result if isinstance(result, str) else frame_steps(result) for result in results]
    summary = store_clips(spec, found, steps, out_dir, where, extra)
    return {**summary, "computed": computed, "cached": len(found.clips) - computed}
