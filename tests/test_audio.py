"""Audio clips as sequences: real audio files in label folders or a manifest become cached log-mel/MFCC frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from lstmflow.config import AudioSpec
from lstmflow.data import audio_cache
from lstmflow.data.audio import clip_features, list_clips, n_features, prepare_audio_features
from lstmflow.data.sequences import load_sequences
from lstmflow.errors import ConfigError, DataError

WHERE = "pipelines.chirps.data"
RATE = 16000


def audio_spec(path: Path, **fields: object) -> AudioSpec:
    return AudioSpec.model_validate({"kind": "audio", "path": path, "workers": 1, **fields})


def tone(seconds: float, frequency: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """A sine with a little noise, amplitude about 0.5."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0.0, 0.01, len(t))
    return (0.5 * np.sin(2 * np.pi * frequency * t) + noise).astype(np.float32)


def write_clip(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, rate)
    return path


def make_folder(root: Path, per_label: int = 4) -> Path:
    """Two labels of short tones: 'low' at 300 Hz and 'high' at 2 kHz, 0.2-0.35 s each, as wav and flac."""
    for label, frequency in (("low", 300.0), ("high", 2000.0)):
        for i in range(per_label):
            suffix = ".flac" if i % 2 else ".wav"
            write_clip(root / label / f"clip{i}{suffix}", tone(0.2 + 0.05 * i, frequency, seed=i))
    return root


def frames(samples: int, hop: int = 160) -> int:
    """librosa's frame count with centred frames."""
    return 1 + samples // hop


# ------------------------------------------------------------------------------------------- features


def test_logmel_shape_is_one_frame_per_hop() -> None:
    spec = audio_spec(Path("unused"))
    features = clip_features(tone(0.5, 440.0), RATE, spec)
    assert features.shape == (frames(8000), 40)
    assert features.dtype == np.float32


def test_mfcc_shape_and_deltas_triple_the_features() -> None:
    samples = tone(0.5, 440.0)
    mfcc = clip_features(samples, RATE, audio_spec(Path("unused"), features="mfcc", n_mfcc=13))
    assert mfcc.shape == (frames(8000), 13)
    with_deltas = clip_features(samples, RATE, audio_spec(Path("unused"), features="mfcc", n_mfcc=13, deltas=True))
    assert with_deltas.shape == (frames(8000), 39)
    np.testing.assert_array_equal(with_deltas[:, :13], mfcc)
    assert n_features(audio_spec(Path("unused"), deltas=True)) == 120


def test_resampling_gives_the_target_rate_frames() -> None:
    spec = audio_spec(Path("unused"))
    native = clip_features(tone(1.0, 440.0, rate=RATE), RATE, spec)
    resampled = clip_features(tone(1.0, 440.0, rate=22050), 22050, spec)
    assert resampled.shape == native.shape == (frames(RATE), 40)
    # The same tone at another rate lands in the same mel band after resampling.
    assert np.argmax(resampled.mean(axis=0)) == np.argmax(native.mean(axis=0))


def test_stereo_is_mixed_down_to_mono() -> None:
    spec = audio_spec(Path("unused"))
    left, right = tone(0.3, 440.0, seed=1), tone(0.3, 880.0, seed=2)
    stereo = clip_features(np.stack([left, right], axis=1), RATE, spec)
    np.testing.assert_array_equal(stereo, clip_features((left + right) / 2, RATE, spec))


def test_max_seconds_keeps_the_start_of_longer_clips() -> None:
    samples = tone(2.0, 440.0)
    cut = clip_features(samples, RATE, audio_spec(Path("unused"), max_seconds=0.5))
    assert cut.shape == (frames(8000), 40)
    short = clip_features(tone(0.3, 440.0), RATE, audio_spec(Path("unused"), max_seconds=0.5))
    assert short.shape == (frames(4800), 40)


# ------------------------------------------------------------------------------------------- layouts


def test_folder_of_label_folders(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "clips")
    write_clip(root / "high" / "LOUD.WAV", tone(0.3, 2000.0))  # upper-case ending counts
    summary = prepare_audio_features(audio_spec(root), tmp_path / "out", WHERE, tmp_path / "cache")
    assert summary["n_sequences"] == 9 and summary["n_classes"] == 2 and summary["n_features"] == 40
    assert summary["skipped"] == 0 and summary["computed"] == 9
    loaded = load_sequences(tmp_path / "out")
    assert loaded.classes == ["high", "low"]
    assert sorted(loaded.meta["extra_meta"]) == sorted(
        ["sample_rate", "features", "n_mels", "n_mfcc", "deltas", "n_fft", "hop_length", "max_seconds", "skipped"]
    )
    clips, bad = list_clips(audio_spec(root), WHERE)
    assert [clip.name for clip in clips][:2] == ["high/LOUD.WAV", "high/clip0.wav"] and bad == []


def test_manifest_with_relative_paths_and_a_given_split(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data" / "clips")
    rows = [
        {"path": f"clips/{label}/clip{i}{'.flac' if i % 2 else '.wav'}", "label": label, "part": part}
        for label in ("low", "high")
        for i, part in enumerate(["train", "train", "val", "test"])
    ]
    manifest = tmp_path / "data" / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    spec = audio_spec(manifest, split={"column": "part"})
    summary = prepare_audio_features(spec, tmp_path / "out", WHERE, tmp_path / "cache")
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (4, 2, 2)
    assert root.is_dir()


def test_manifest_path_that_does_not_exist_names_its_line(tmp_path: Path) -> None:
    make_folder(tmp_path / "clips")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\nclips/low/clip0.wav,low\nclips/low/gone.wav,low\n")
    with pytest.raises(DataError) as error:
        prepare_audio_features(audio_spec(manifest), tmp_path / "out", WHERE, tmp_path / "cache")
    assert str(error.value) == (
        f"{WHERE}.path: {manifest} lists 1 file(s) that do not exist (paths are relative to {tmp_path}): "
        "line 3: 'clips/low/gone.wav'"
    )


def test_split_column_needs_a_manifest(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "clips")
    with pytest.raises(DataError, match=r"split\.column: 'part' needs a manifest CSV"):
        prepare_audio_features(audio_spec(root, split={"column": "part"}), tmp_path / "out", WHERE, tmp_path / "c")


def test_more_mfccs_than_mel_bands_is_a_config_error(tmp_path: Path) -> None:
    spec = audio_spec(make_folder(tmp_path / "clips"), features="mfcc", n_mfcc=50, n_mels=40)
    with pytest.raises(ConfigError, match=r"n_mfcc: 50 MFCCs need at least as many mel bands, got n_mels 40"):
        prepare_audio_features(spec, tmp_path / "out", WHERE, tmp_path / "cache")


# ------------------------------------------------------------------------------------------- bad files

#: Each bad file, how it is made, and the reason it is reported with.
BAD_FILES = {
    "low/corrupt.wav": "not readable as audio (Format not recognised.)",
    "low/empty.wav": "empty file (0 bytes)",
    "low/notes.txt": "wrong extension '.txt'; audio files end in .flac, .ogg, .wav",
    "low/click.wav": "too short: 160 samples at 16000 Hz (0.010 s); one frame needs n_fft = 400 samples (0.025 s)",
    "high/silence.wav": "silent (peak amplitude 0.0e+00 < 1e-04, i.e. below -80 dBFS)",
}


def make_bad_files(root: Path) -> None:
    (root / "low" / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage that is not a wave file" * 10)
    (root / "low" / "empty.wav").write_bytes(b"")
    (root / "low" / "notes.txt").write_text("recorded on tuesday\n")
    write_clip(root / "low" / "click.wav", tone(0.01, 300.0))
    write_clip(root / "high" / "silence.wav", np.zeros(RATE // 2, dtype=np.float32))


def test_bad_files_are_skipped_named_and_counted(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "clips")
    make_bad_files(root)
    summary = prepare_audio_features(audio_spec(root), tmp_path / "out", WHERE, tmp_path / "cache")
    assert summary["n_sequences"] == 8 and summary["skipped"] == 5
    assert sorted(summary["skipped_files"]) == sorted(BAD_FILES)
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert {entry["file"]: entry["reason"] for entry in skipped} == BAD_FILES
    assert load_sequences(tmp_path / "out").meta["extra_meta"]["skipped"] == 5


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_each_bad_file_fails_with_its_reason_and_keeps_the_good_features(tmp_path: Path, name: str) -> None:
    root = make_folder(tmp_path / "clips")
    make_bad_files(root)
    for other in BAD_FILES:
        if other != name:
            (root / other).unlink()
    spec = audio_spec(root, bad_files="fail")
    with pytest.raises(DataError) as error:
        prepare_audio_features(spec, tmp_path / "out", WHERE, tmp_path / "cache")
    assert str(error.value) == (
        f"{WHERE}.bad_files: 1 file(s) that cannot be used (set bad_files: skip to leave them out): "
        f"{name}: {BAD_FILES[name]}"
    )
    # Every good clip was computed and cached before the failure: fixing the file recomputes nothing.
    (root / name).unlink()
    summary = prepare_audio_features(spec, tmp_path / "out", WHERE, tmp_path / "cache")
    assert (summary["computed"], summary["cached"]) == (0, 8)


def test_clip_features_refuses_empty_and_silent_samples() -> None:
    spec = audio_spec(Path("unused"))
    with pytest.raises(DataError, match=r"^no samples \(empty clip\)$"):
        clip_features(np.zeros(0, dtype=np.float32), RATE, spec)
    with pytest.raises(DataError, match=r"^silent \(peak amplitude 5\.0e-05"):
        clip_features(np.full(RATE, 5e-5, dtype=np.float32), RATE, spec)


# ------------------------------------------------------------------------------------------- the cache


def test_cache_computes_only_what_is_new(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "clips")
    cache = tmp_path / "project" / ".lstmflow" / "audio-cache"
    spec = audio_spec(root)
    first = prepare_audio_features(spec, tmp_path / "out", WHERE, cache)
    values = (tmp_path / "out" / "values.npy").read_bytes()
    assert (first["computed"], first["cached"]) == (8, 0)

    again = prepare_audio_features(spec, tmp_path / "out", WHERE, cache)
    assert (again["computed"], again["cached"]) == (0, 8)
    assert (tmp_path / "out" / "values.npy").read_bytes() == values

    write_clip(root / "low" / "clip9.wav", tone(0.4, 310.0, seed=9))
    added = prepare_audio_features(spec, tmp_path / "out", WHERE, cache)
    assert (added["computed"], added["cached"]) == (1, 8)

    changed = prepare_audio_features(audio_spec(root, n_mels=32), tmp_path / "out", WHERE, cache)
    assert (changed["computed"], changed["cached"]) == (9, 0)
    assert not list(cache.glob("*.tmp"))


def test_two_workers_write_the_same_bytes_as_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio_cache, "BYTES_PER_PROCESS", 1)  # start both processes even for this handful of clips
    root = make_folder(tmp_path / "clips", per_label=6)
    make_bad_files(root)
    for workers in (1, 2):
        spec = audio_spec(root, workers=workers, deltas=True)
        summary = prepare_audio_features(spec, tmp_path / f"out{workers}", WHERE, tmp_path / f"cache{workers}")
        assert summary["computed"] == 16
    for name in ("values.npy", "offsets.npy", "labels.npy", "parts.npy", "meta.json", "skipped.json"):
        assert (tmp_path / "out1" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes(), name


# ---------------------------------------------------------------------------------- keyword-spotting layout


PARTS_BY_CODE = {0: "train", 1: "val", 2: "test"}


def speech_commands_folder(root: Path, lists: tuple[str, ...] = ("validation_list.txt", "testing_list.txt")) -> Path:
    """The Speech Commands layout: label folders of `<speaker>_nohash_<n>.wav`, a `_background_noise_` folder, a
    README, and list files naming the validation (speaker b) and test (speaker c) clips."""
    for label, frequency in (("yes", 300.0), ("no", 2000.0)):
        for speaker in "abcd":
            for n in range(2):
                write_clip(root / label / f"{speaker}_nohash_{n}.wav", tone(0.2, frequency + 50 * n, seed=n))
    write_clip(root / "_background_noise_" / "white_noise.wav", np.random.default_rng(0).normal(0, 0.3, RATE))
    (root / "README.md").write_text("Speech Commands, a tiny copy\n")
    named = {"validation_list.txt": "b", "testing_list.txt": "c"}
    for name in lists:
        lines = [f"{label}/{named[name]}_nohash_{n}.wav" for label in ("yes", "no") for n in range(2)]
        (root / name).write_text(
            "\n".join([*lines, f"left/{named[name]}_nohash_0.wav"]) + "\n"
        )  # a class this copy lacks
    return root


def test_keyword_spotting_layout_uses_the_list_files_and_ignores_the_noise_folder(tmp_path: Path) -> None:
    root = speech_commands_folder(tmp_path / "speech")
    summary = prepare_audio_features(audio_spec(root), tmp_path / "out", WHERE, tmp_path / "cache")
    assert summary["n_classes"] == 2 and summary["skipped"] == 0  # noise is no class; README and lists no bad file
    assert (summary["n_train"], summary["n_val"], summary["n_test"], summary["split"]) == (8, 4, 4, "lists")
    features = load_sequences(tmp_path / "out")
    assert features.classes == ["no", "yes"] and features.meta["split"] == {"by": "lists"}
    clips, _ = list_clips(audio_spec(root), WHERE)
    speakers = {
        PARTS_BY_CODE[part]: {clip.path.name[0] for clip, p in zip(clips, features.parts) if p == part}
        for part in (0, 1, 2)
    }
    assert speakers == {"train": {"a", "d"}, "val": {"b"}, "test": {"c"}}  # no speaker in two parts


def test_keyword_spotting_layout_without_a_validation_list_draws_it_from_training(tmp_path: Path) -> None:
    root = speech_commands_folder(tmp_path / "speech", lists=("testing_list.txt",))
    summary = prepare_audio_features(audio_spec(root, split={"val": 0.2}), tmp_path / "out", WHERE, tmp_path / "c")
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (10, 2, 4)
    drawn = load_sequences(tmp_path / "out").meta["split"]["val_drawn_from_train"]
    assert len(drawn["samples"]) == 2 and not any(name.split("/")[1].startswith("c") for name in drawn["samples"])


def test_keyword_spotting_list_files_are_checked(tmp_path: Path) -> None:
    root = speech_commands_folder(tmp_path / "speech", lists=("validation_list.txt",))
    with pytest.raises(
        DataError, match=r"validation_list.txt names the validation clips but .*testing_list.txt is missing"
    ):
        list_clips(audio_spec(root), WHERE)
    (root / "testing_list.txt").write_text("yes/b_nohash_0.wav\n")
    with pytest.raises(DataError, match=r"1 clip\(s\) in both list files, yes/b_nohash_0.wav"):
        list_clips(audio_spec(root), WHERE)
    given = audio_spec(root, split={"files": {"test": str(root / "yes")}})
    with pytest.raises(DataError, match=r"split.files: .* holds testing_list.txt and validation_list.txt"):
        list_clips(given, WHERE)
