"""Video clips as sequences: tiny real clips written with PyAV in several containers, decoded into cached frames."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest

from lstmflow.config import VideoSpec, validate_pipeline
from lstmflow.data import video
from lstmflow.data.demo import SHAPE_DIRECTIONS, _moving_shape, build_video_demo, write_video
from lstmflow.data.kinds import model_io
from lstmflow.data.sequences import load_sequences
from lstmflow.data.video import clip_frames, frame_shape, prepare_video_features
from lstmflow.errors import ConfigError, DataError

WHERE = "pipelines.clips.data"
#: Frame i of a test clip is one grey level, so that which frames were kept can be read back from their brightness
#: through lossy codecs (each level is within about 1.5 of the written one after decoding).
LEVEL_START, LEVEL_STEP = 20, 10


def video_spec(path: Path | str, **fields: object) -> VideoSpec:
    return VideoSpec.model_validate({"kind": "video", "path": path, "workers": 1, **fields})


def grey_frames(n: int, height: int = 24, width: int = 32, start: int = LEVEL_START) -> np.ndarray:
    """(n, H, W, 3) uint8 frames, frame i all at grey level start + LEVEL_STEP × i."""
    levels = start + LEVEL_STEP * np.arange(n)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).astype(np.uint8)


def frame_indices(steps: np.ndarray) -> list[int]:
    """Which written grey frame each decoded step is, from its mean brightness."""
    return [round((float(mean) * 255 - LEVEL_START) / LEVEL_STEP) for mean in steps.mean(axis=1)]


def write_grey(path: Path, n: int, fps: int = 8, height: int = 24, width: int = 32, start: int = LEVEL_START) -> Path:
    return write_video(path, grey_frames(n, height, width, start), fps)


def make_folder(root: Path, per_label: int = 3, frames: int = 6) -> Path:
    """Two labels of short grey clips, 24x32, alternating mp4 and avi: `dark` ones start at a lower grey level."""
    for label, start in (("dark", 10), ("light", 60)):
        for i in range(per_label):
            write_grey(root / label / f"clip{i}{'.avi' if i % 2 else '.mp4'}", frames + i, start=start)
    return root


# ------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".webm", ".gif"])
def test_each_container_decodes_every_frame_in_order(tmp_path: Path, suffix: str) -> None:
    clip = write_grey(tmp_path / f"clip{suffix}", 6)
    steps = clip_frames(clip, video_spec(tmp_path, frame_size=None))
    assert steps.shape == (6, 24 * 32 * 3) and steps.dtype == np.float32
    assert 0.0 <= steps.min() and steps.max() <= 1.0
    assert frame_indices(steps) == list(range(6))


def test_fps_samples_by_timestamps(tmp_path: Path) -> None:
    clip = write_grey(tmp_path / "clip.mp4", 20, fps=20)
    sampled = clip_frames(clip, video_spec(tmp_path, fps=5, max_frames=100))
    assert frame_indices(sampled) == [0, 4, 8, 12, 16]  # a quarter of a 20-fps clip's frames
    every = clip_frames(clip, video_spec(tmp_path, fps=None, max_frames=100))
    assert len(every) == 20
    faster = clip_frames(clip, video_spec(tmp_path, fps=50, max_frames=100))
    assert len(faster) == 20  # a clip with fewer frames per second keeps them all, none repeated


def test_max_frames_keeps_frames_evenly_spaced_over_the_whole_clip(tmp_path: Path) -> None:
    clip = write_grey(tmp_path / "clip.avi", 20)
    kept = clip_frames(clip, video_spec(tmp_path, max_frames=5))
    assert frame_indices(kept) == [0, 5, 10, 14, 19]  # first and last included


def test_frame_size_grayscale_and_the_step_layout(tmp_path: Path) -> None:
    halves = np.zeros((4, 16, 24, 3), dtype=np.uint8)
    halves[:, :, :12] = (230, 20, 20)  # left half red
    halves[:, :, 12:] = (20, 20, 230)  # right half blue
    clip = write_video(tmp_path / "halves.avi", halves, 8)
    colour = clip_frames(clip, video_spec(tmp_path, frame_size=[8, 12]))
    assert colour.shape == (4, 8 * 12 * 3)
    frame = colour[0].reshape(8, 12, 3)  # (H, W, C): rows of pixels, channels last
    assert frame[:, :4, 0].mean() > 0.7 and frame[:, :4, 2].mean() < 0.3
    assert frame[:, -4:, 2].mean() > 0.7 and frame[:, -4:, 0].mean() < 0.3
    grey = clip_frames(clip, video_spec(tmp_path, frame_size=[8, 12], grayscale=True))
    assert grey.shape == (4, 8 * 12)
    assert frame_shape(video_spec(tmp_path, frame_size=[8, 12], grayscale=True), WHERE) == (8, 12, 1)


def test_bytes_decode_as_the_file_does(tmp_path: Path) -> None:
    clip = write_grey(tmp_path / "clip.webm", 7)
    spec = video_spec(tmp_path, frame_size=[12, 16], fps=4)
    np.testing.assert_array_equal(clip_frames(io.BytesIO(clip.read_bytes()), spec), clip_frames(clip, spec))
    with pytest.raises(DataError, match=r"^empty file \(0 bytes\)$"):
        clip_frames(io.BytesIO(b""), spec)


# ------------------------------------------------------------------------------------------- the stage


def test_folder_of_label_folders_and_the_meta_a_served_model_needs(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "clips")
    (root / "README.md").write_text("tiny clips\n")  # a loose file that is not a clip: ignored
    spec = video_spec(root, frame_size=[12, 16], max_frames=6)
    summary = prepare_video_features(spec, tmp_path / "out", WHERE, tmp_path / "cache")
    assert (summary["n_sequences"], summary["n_classes"], summary["n_features"]) == (6, 2, 12 * 16 * 3)
    assert (summary["skipped"], summary["computed"], summary["cached"]) == (0, 6, 0)
    loaded = load_sequences(tmp_path / "out")
    assert loaded.classes == ["dark", "light"]
    assert loaded.meta["extra_meta"] == {
        "frame_height": 12, "frame_width": 16, "channels": 3, "fps": None, "max_frames": 6, "min_frames": 2,
        "grayscale": False, "skipped": 0,
    }  # fmt: skip


def test_frame_size_null_keeps_and_records_the_clips_own_size(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "clips")
    spec = video_spec(root, frame_size=None, grayscale=True)
    assert frame_shape(spec, WHERE) == (24, 32, 1)
    summary = prepare_video_features(spec, tmp_path / "out", WHERE, tmp_path / "cache")
    assert summary["n_features"] == 24 * 32
    extra = load_sequences(tmp_path / "out").meta["extra_meta"]
    assert (extra["frame_height"], extra["frame_width"], extra["channels"]) == (24, 32, 1)


def test_manifest_with_a_given_split(tmp_path: Path) -> None:
    make_folder(tmp_path / "data" / "clips", per_label=2)
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_text(
        "path,label,part\n"
        "clips/dark/clip0.mp4,dark,train\nclips/dark/clip1.avi,dark,test\nclips/light/clip0.mp4,NA,train\n"
        "clips/light/clip1.avi,NA,val\n"  # a label such as NA stays text
    )
    spec = video_spec(manifest, frame_size=[8, 8], split={"column": "part"})
    summary = prepare_video_features(spec, tmp_path / "out", WHERE, tmp_path / "cache")
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (2, 1, 1)
    assert load_sequences(tmp_path / "out").classes == ["NA", "dark"]


def test_model_io_reads_frame_features_and_classes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "clips", per_label=4)
    raw = {"task": "classify", "data": {"kind": "video", "path": str(root), "frame_size": [8, 10], "grayscale": True}}
    assert model_io(validate_pipeline("clips", raw, tmp_path)) == (8 * 10, 2)
    (root / "dark" / "notes.mp4").write_text("not a video\n")
    failing = {**raw, "data": {**raw["data"], "bad_files": "fail"}}
    with pytest.raises(DataError, match=r"dark/notes.mp4: not readable as video"):
        model_io(validate_pipeline("clips", failing, tmp_path))


# ------------------------------------------------------------------------------------------- the cache


def test_cache_decodes_only_what_is_new(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "clips")
    cache, values = tmp_path / "project" / ".lstmflow" / "cache", tmp_path / "out" / "values.npy"

    def decoded_and_cached(frame_size: list[int]) -> tuple[int, int]:
        summary = prepare_video_features(video_spec(root, frame_size=frame_size), tmp_path / "out", WHERE, cache)
        return summary["computed"], summary["cached"]

    assert decoded_and_cached([8, 8]) == (6, 0)
    first = values.read_bytes()
    assert decoded_and_cached([8, 8]) == (0, 6) and values.read_bytes() == first
    write_grey(root / "light" / "clip9.mp4", 9)
    assert decoded_and_cached([8, 8]) == (1, 6)  # only the new clip
    assert decoded_and_cached([8, 12]) == (7, 0)  # another frame size: other keys
    assert len(list(cache.glob("*.npy"))) == 14 and not list(cache.glob("*.tmp"))


def test_two_workers_write_the_same_bytes_as_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video, "BYTES_PER_PROCESS", 1)  # start both processes even for this handful of clips
    root = make_folder(tmp_path / "clips", per_label=5)
    make_bad_files(root)
    for workers in (1, 2):
        spec = video_spec(root, workers=workers, frame_size=[8, 8])
        summary = prepare_video_features(spec, tmp_path / f"out{workers}", WHERE, tmp_path / f"cache{workers}")
        assert summary["computed"] == 15  # the .txt file is never decoded
    for name in ("values.npy", "offsets.npy", "labels.npy", "parts.npy", "meta.json", "skipped.json"):
        assert (tmp_path / "out1" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes(), name


# ------------------------------------------------------------------------------------------- bad files


def cut_clip(path: Path) -> None:
    """An avi whose last frame and index are cut off: FFmpeg stops decoding it with an error."""
    whole = write_grey(path, 8).read_bytes()
    path.write_bytes(whole[: int(len(whole) * 0.9)])


def audio_only(path: Path) -> None:
    """A wav file under a video's name: a container FFmpeg opens, without a video stream."""
    import soundfile

    with open(path, "wb") as handle:
        soundfile.write(handle, np.zeros(1600, dtype=np.float32), 16000, format="WAV")


#: Each bad file: the reason it is reported with (a regular expression: FFmpeg words the decode error), and how to
#: write it.
BAD_FILES: dict[str, tuple[str, Callable[[Path], object]]] = {
    "dark/notes.mp4": (
        r"not readable as video \(Invalid data found when processing input\)",
        lambda path: path.write_text("recorded on tuesday, not a video\n"),
    ),
    "dark/empty.avi": (r"empty file \(0 bytes\)", lambda path: path.write_bytes(b"")),
    "dark/readme.txt": (
        r"wrong extension '\.txt'; video files end in \.avi, \.gif, \.m4v, \.mkv, \.mov, \.mp4, \.webm",
        lambda path: path.write_text("clips of grey frames\n"),
    ),
    "light/still.gif": (r"too few frames: 1 sampled, fewer than min_frames 2", lambda path: write_grey(path, 1)),
    "light/cut.avi": (r"decode error after \d+ frame\(s\) \(Invalid data found when processing input\)", cut_clip),
    "light/sound.mp4": (r"not readable as video \(no video stream\)", audio_only),
}


def make_bad_files(root: Path, names: Iterable[str] = tuple(BAD_FILES)) -> None:
    for name in names:
        BAD_FILES[name][1](root / name)


def test_bad_files_are_skipped_named_and_counted_and_never_cached_as_good(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "clips")
    make_bad_files(root)
    cache = tmp_path / "cache"
    summary = prepare_video_features(video_spec(root, frame_size=[8, 8]), tmp_path / "out", WHERE, cache)
    assert summary["n_sequences"] == 6 and summary["skipped"] == len(BAD_FILES)
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert sorted(entry["file"] for entry in skipped) == sorted(BAD_FILES)
    for entry in skipped:
        assert re.fullmatch(BAD_FILES[entry["file"]][0], entry["reason"]), entry
    assert load_sequences(tmp_path / "out").meta["extra_meta"]["skipped"] == len(BAD_FILES)
    # The good clips' frames are cached, the decoded bad ones only as their reason (the .txt is never decoded).
    assert len(list(cache.glob("*.npy"))) == 6 and len(list(cache.glob("*.bad"))) == len(BAD_FILES) - 1


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_each_bad_file_fails_with_its_name_and_reason(tmp_path: Path, name: str) -> None:
    root = make_folder(tmp_path / "clips")
    make_bad_files(root, [name])
    spec = video_spec(root, frame_size=[8, 8], bad_files="fail")
    prefix = f"{WHERE}.bad_files: 1 file(s) that cannot be used (set bad_files: skip to leave them out): "
    with pytest.raises(DataError, match="^" + re.escape(f"{prefix}{name}: ") + BAD_FILES[name][0] + "$"):
        prepare_video_features(spec, tmp_path / "out", WHERE, tmp_path / "cache")


def test_mixed_frame_sizes_without_frame_size_are_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "clips")
    write_grey(root / "light" / "small.mp4", 6, height=16, width=16)
    reason = (
        "light/small.mp4: frames are 16x16 (height x width) but dark/clip0.mp4's are 24x32; with frame_size: null "
        "every clip must have one size (set frame_size to resize)"
    )
    with pytest.raises(DataError) as error:
        prepare_video_features(video_spec(root, frame_size=None, bad_files="fail"), tmp_path / "o", WHERE, tmp_path)
    assert str(error.value).endswith(reason)
    summary = prepare_video_features(video_spec(root, frame_size=None), tmp_path / "out", WHERE, tmp_path / "cache")
    assert summary["skipped_files"] == ["light/small.mp4"] and summary["n_sequences"] == 6


def test_frame_shape_without_frame_size_skips_clips_that_do_not_decode(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    (root / "a").mkdir(parents=True)
    (root / "a" / "0.mp4").write_text("not a video\n")
    write_grey(root / "a" / "1.mp4", 3, height=10, width=14)
    assert frame_shape(video_spec(root, frame_size=None), WHERE) == (10, 14, 3)
    (root / "a" / "1.mp4").unlink()
    with pytest.raises(DataError, match=r"path: none of the 1 clip\(s\) in .* decodes, so frame_size: null has no"):
        frame_shape(video_spec(root, frame_size=None), WHERE)


# ------------------------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"frame_size": [0, 8]}, r"data\.frame_size\[0\]: must be > 0, got 0"),
        ({"frame_size": [8]}, r"data\.frame_size: must have at least 2 item"),
        ({"fps": 0}, r"data\.fps: must be > 0, got 0"),
        ({"max_frames": 0}, r"data\.max_frames: must be > 0, got 0"),
        ({"min_frames": 20}, r"data\.min_frames: must be at most max_frames \(16\), got 20"),
        ({"scale": "minmax"}, r"data\.scale: must be one of 'none' or 'standard', got 'minmax'"),
        ({"bad_files": "ignore"}, r"data\.bad_files: must be one of"),
    ],
)
def test_spec_errors_name_the_key(tmp_path: Path, data: dict[str, object], message: str) -> None:
    raw = {"task": "classify", "data": {"kind": "video", "path": str(tmp_path), **data}}
    with pytest.raises(ConfigError, match=r"pipelines\.clips\." + message):
        validate_pipeline("clips", raw, tmp_path)


# ------------------------------------------------------------------------------------------- the demo


def test_demo_clips_decode_with_four_labels(tmp_path: Path) -> None:
    folders = build_video_demo(tmp_path / "shapes", per_class=2)
    assert [folder.name for folder in folders] == list(SHAPE_DIRECTIONS) == ["left", "right", "up", "down"]
    spec = video_spec(tmp_path / "shapes", frame_size=[32, 32])
    clips = video.read_clips(spec, WHERE).clips
    assert len(clips) == 8 and {clip.label for clip in clips} == set(SHAPE_DIRECTIONS)
    assert all(clip_frames(clip.path, spec).shape == (16, 32 * 32 * 3) for clip in clips)


def test_demo_directions_need_the_order_of_frames() -> None:
    """A linear model of the mean frame cannot tell left from right, nor up from down; where the shape is in the
    last frame against the first can."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    rng = np.random.default_rng(0)
    clips = {name: np.stack([_moving_shape(rng, step) for _ in range(40)]) for name, step in SHAPE_DIRECTIONS.items()}

    def mean_frame_accuracy(first: str, second: str) -> float:
        means = np.concatenate([clips[name].mean(axis=(1, 4)).reshape(40, -1) for name in (first, second)])
        labels = [name for name in (first, second) for _ in range(40)]
        return float(cross_val_score(LogisticRegression(max_iter=500), means, labels, cv=4).mean())

    assert mean_frame_accuracy("left", "right") < 0.7 and mean_frame_accuracy("up", "down") < 0.7

    def shift(name: str, axis: int) -> np.ndarray:
        """How far the bright pixels' centre moves from the first frame to the last, along rows (0) or columns (1)."""
        bright = clips[name].mean(axis=4)  # (clips, T, H, W)
        weights = np.clip(bright - np.median(bright, axis=(2, 3), keepdims=True), 0, None)
        where = np.arange(weights.shape[2 + axis]).reshape((-1, 1) if axis == 0 else (1, -1))
        centre = (weights * where).sum(axis=(2, 3)) / weights.sum(axis=(2, 3))  # (clips, T)
        return centre[:, -1] - centre[:, 0]

    assert (shift("right", 1) > 5).all() and (shift("left", 1) < -5).all()
    assert (shift("down", 0) > 5).all() and (shift("up", 0) < -5).all()
