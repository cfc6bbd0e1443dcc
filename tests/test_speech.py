"""Clips with transcripts for speech recognition: both layouts, transcripts, the alphabet, clips left out, the cache,
the batch layout, and the espeak-ng demo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from lstmflow.config import SpeechSpec
from lstmflow.data.demo_speech import SPEECH_RATE, SPEECH_VARIANTS, build_speech_demo
from lstmflow.data.kinds import build_features, parse_data_spec
from lstmflow.data.speech import (
    ctc_frames,
    decode_ids,
    encode_text,
    load_speech,
    normalise_transcript,
    prepare_speech_features,
    read_speech,
    speech_model_io,
)
from lstmflow.errors import DataError

WHERE = "pipelines.speech.data"
RATE = 16000
ESPEAK = shutil.which("espeak-ng")
#: (path, transcript, seconds, part): a tone per clip, its pitch from its number; 0.3 s is 31 frames.
CLIPS = [
    ("a/0.wav", "one two", 0.3, "train"),
    ("a/1.wav", "Two  ONE", 0.4, "train"),
    ("a/2.wav", "three", 0.3, "train"),
    ("b/0.wav", "\tthree one ", 0.5, "train"),
    ("b/1.wav", "two", 0.3, "train"),
    ("b/2.wav", "one", 0.35, "train"),
    ("c/0.wav", "two one", 0.3, "val"),
    ("c/1.wav", "three", 0.45, "val"),
    ("d/0.wav", "one three", 0.3, "test"),
    ("d/1.wav", "two two", 0.4, "test"),
]


def speech_spec(path: Path, **fields: Any) -> SpeechSpec:
    return SpeechSpec.model_validate({"kind": "speech", "path": path, "workers": 1, **fields})


def write_clip(path: Path, seconds: float, number: int) -> None:
    """A tone with a little noise: real audio of a known length (speech itself is not needed here)."""
    t = np.arange(int(seconds * RATE)) / RATE
    noise = np.random.default_rng(number).normal(0.0, 0.01, len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, (0.5 * np.sin(2 * np.pi * (200 + 50 * number) * t) + noise).astype(np.float32), RATE)


def manifest(root: Path, clips: list[tuple[str, str, float, str]] = CLIPS) -> Path:
    for number, (path, _, seconds, _) in enumerate(clips):
        write_clip(root / path, seconds, number)
    rows = [(path, text, part) for path, text, _, part in clips]
    pd.DataFrame(rows, columns=["path", "text", "part"]).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def folder(root: Path, clips: list[tuple[str, str, float, str]] = CLIPS) -> Path:
    for number, (path, text, seconds, _) in enumerate(clips):
        write_clip(root / path, seconds, number)
        (root / path).with_suffix(".txt").write_text(text, encoding="utf-8")
    return root


def prepare(tmp_path: Path, data: SpeechSpec, out: str = "features") -> dict[str, Any]:
    return prepare_speech_features(data, tmp_path / out, WHERE, tmp_path / "cache")


# ------------------------------------------------------------------------------------------------ config


def test_speech_shares_the_audio_feature_keys() -> None:
    data = parse_data_spec({"kind": "speech", "path": "m.csv", "n_mels": 80, "deltas": True})
    assert isinstance(data, SpeechSpec)
    assert (data.n_mels, data.deltas, data.text_column, data.lowercase) == (80, True, "text", True)


# ------------------------------------------------------------------------------------------------ text


def test_transcripts_are_trimmed_spaced_and_lowercased() -> None:
    assert normalise_transcript("  Three\tOne \n Two ", lowercase=True) == "three one two"
    assert normalise_transcript(" Three  One", lowercase=False) == "Three One"
    assert normalise_transcript(" \t ", lowercase=True) == ""


def test_ids_are_one_based_and_the_blank_is_dropped() -> None:
    alphabet = [" ", "e", "n", "o"]
    assert encode_text(alphabet, "one") == [4, 3, 2]
    assert decode_ids(alphabet, [0, 4, 4, 0, 3, 2, 0]) == "oone"  # repeats are the decoder's to collapse
    assert decode_ids(alphabet, torch.tensor([4, 3, 2])) == "one"
    with pytest.raises(DataError, match=r"characters \['x'\] of 'ox' are not in the alphabet ' eno'"):
        encode_text(alphabet, "ox")
    with pytest.raises(ValueError, match=r"label id 5 is outside 0\.\.4"):
        decode_ids(alphabet, [5])


def test_ctc_needs_a_blank_between_repeated_characters() -> None:
    assert (ctc_frames("one"), ctc_frames("two two"), ctc_frames("hello"), ctc_frames("aaa")) == (3, 7, 6, 5)


# ------------------------------------------------------------------------------------------------ layouts


def test_manifest_and_folder_layouts_read_alike(tmp_path: Path) -> None:
    by_manifest = prepare(tmp_path, speech_spec(manifest(tmp_path / "m")), "from_manifest")
    by_folder = prepare(tmp_path, speech_spec(folder(tmp_path / "f")), "from_folder")
    for key in ("n_clips", "n_train", "n_val", "n_test", "n_outputs", "frames_max"):
        assert by_manifest[key] == by_folder[key]
    manifest_set, folder_set = load_speech(tmp_path / "from_manifest"), load_speech(tmp_path / "from_folder")
    assert manifest_set.alphabet == folder_set.alphabet
    assert manifest_set.texts["text"].tolist() == folder_set.texts["text"].tolist()
    assert folder_set.texts["name"].tolist()[:2] == ["a/0.wav", "a/1.wav"]
    assert manifest_set.texts["name"].tolist()[:2] == ["a/0.wav (line 2)", "a/1.wav (line 3)"]
    np.testing.assert_array_equal(manifest_set.store.values, folder_set.store.values)


def test_the_split_column_gives_the_parts_and_the_texts_are_normalised(tmp_path: Path) -> None:
    summary = prepare(tmp_path, speech_spec(manifest(tmp_path), split={"column": "part"}))
    assert (summary["n_train"], summary["n_val"], summary["n_test"], summary["split"]) == (6, 2, 2, "column")
    features = load_speech(tmp_path / "features")
    assert features.part("train").texts == ["one two", "two one", "three", "three one", "two", "one"]
    assert features.alphabet == [" ", "e", "h", "n", "o", "r", "t", "w"] and features.n_outputs == 9
    meta = json.loads((tmp_path / "features" / "meta.json").read_text())
    assert meta["counts"] == {"train": 6, "val": 2, "test": 2} and meta["extra_meta"]["skipped"] == 0
    assert meta["extra_meta"]["n_mels"] == 40 and features.preprocessing.scale == "standard"


def test_a_text_column_of_another_name_and_case_kept(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    pd.read_csv(path).rename(columns={"text": "sentence"}).to_csv(path, index=False)
    data = speech_spec(path, text_column="sentence", lowercase=False, split={"column": "part"})
    assert prepare(tmp_path, data)["n_clips"] == 10
    assert load_speech(tmp_path / "features").part("train").texts[1] == "Two ONE"


def test_given_folders_split_a_folder_layout(tmp_path: Path) -> None:
    for part in ("train", "val", "test"):
        folder(tmp_path / part, [clip for clip in CLIPS if clip[3] == part])
    data = speech_spec(tmp_path / "train", split={"files": {"val": tmp_path / "val", "test": tmp_path / "test"}})
    summary = prepare(tmp_path, data)
    assert (summary["n_train"], summary["n_val"], summary["n_test"], summary["split"]) == (6, 2, 2, "files")
    assert load_speech(tmp_path / "features").part("test").names == ["test/d/0.wav", "test/d/1.wav"]


def test_a_folder_names_clips_without_transcripts_and_ignores_other_files(tmp_path: Path) -> None:
    root = folder(tmp_path / "clips")
    write_clip(root / "a" / "lonely.wav", 0.3, 0)
    (root / "a" / "song.mp3").write_bytes(b"ID3")
    (root / "a" / "song.txt").write_text("la la")
    (root / "README.md").write_text("the clips")
    listing = read_speech(speech_spec(root), WHERE)
    assert len(listing.clips) == 10
    assert listing.bad[0] == ("a/lonely.wav", "no transcript lonely.txt beside it")
    assert listing.bad[1].name == "a/song.mp3" and listing.bad[1].reason.startswith("wrong extension '.mp3'")
    with pytest.raises(DataError, match=r"split\.column: 'part' needs a manifest CSV"):
        read_speech(speech_spec(root, split={"column": "part"}), WHERE)


def test_a_manifest_without_the_text_column_is_named(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    with pytest.raises(DataError, match=r"has no column\(s\) \['words'\]; available: path, text, part"):
        read_speech(speech_spec(path, text_column="words"), WHERE)


# ------------------------------------------------------------------------------------------------ left out


def clips_to_leave_out() -> list[tuple[str, str, float, str]]:
    """CLIPS plus an empty transcript, a test letter never trained on, and 0.1 s (11 frames) for a text that needs 14
    (13 characters, and a blank between the two e's)."""
    return CLIPS + [
        ("e/0.wav", "  ", 0.3, "train"),
        ("e/1.wav", "one zero", 0.3, "test"),
        ("e/2.wav", "three two one", 0.1, "val"),
    ]


def test_clips_that_cannot_be_learned_are_skipped_named_and_counted(tmp_path: Path) -> None:
    summary = prepare(tmp_path, speech_spec(manifest(tmp_path, clips_to_leave_out()), split={"column": "part"}))
    assert (summary["n_clips"], summary["skipped"]) == (10, 3)
    assert (summary["skipped_bad_files"], summary["skipped_outside_alphabet"]) == (1, 1)
    assert summary["skipped_too_short_for_text"] == 1
    meta = json.loads((tmp_path / "features" / "meta.json").read_text())
    assert meta["skipped_clips"] == {
        "bad_files": ["e/0.wav (line 12)"],
        "outside_alphabet": ["e/1.wav (line 13)"],
        "too_short_for_text": ["e/2.wav (line 14)"],
    }
    assert "z" not in meta["alphabet"] and meta["extra_meta"]["skipped"] == 3
    reasons = {entry["file"]: entry["reason"] for entry in json.loads((tmp_path / "features/skipped.json").read_text())}
    assert reasons["e/0.wav (line 12)"] == "empty transcript"
    assert reasons["e/1.wav (line 13)"] == "character(s) ['z'] in no training transcript"
    assert reasons["e/2.wav (line 14)"] == "11 frame(s), fewer than the 14 its 13-character text needs"


def test_bad_files_fail_names_the_clips(tmp_path: Path) -> None:
    clips = clips_to_leave_out()
    path = manifest(tmp_path, clips[:10] + clips[11:])  # no empty transcript: the stage gets to the alphabet
    with pytest.raises(DataError) as error:
        prepare(tmp_path, speech_spec(path, split={"column": "part"}, bad_files="fail"))
    assert str(error.value) == (
        f"{WHERE}.bad_files: 2 file(s) that cannot be used (set bad_files: skip to leave them out): "
        "e/1.wav (line 12): character(s) ['z'] in no training transcript, "
        "e/2.wav (line 13): 11 frame(s), fewer than the 14 its 13-character text needs"
    )
    with pytest.raises(DataError, match=r"bad_files: 1 file\(s\) .*: e/0\.wav \(line 12\): empty transcript$"):
        speech_model_io(speech_spec(manifest(tmp_path, clips), split={"column": "part"}, bad_files="fail"), WHERE)


def test_a_part_left_empty_is_refused_with_what_was_left_out(tmp_path: Path) -> None:
    clips = [clip for clip in CLIPS if clip[3] != "test"] + [("e/1.wav", "one zero", 0.3, "test")]
    with pytest.raises(DataError, match=r"no clips in the test part\(s\) \(train 6, val 2, test 0; 1 left out as "):
        prepare(tmp_path, speech_spec(manifest(tmp_path, clips), split={"column": "part"}))


# ------------------------------------------------------------------------------------------------ cache, model io


def test_a_second_prepare_computes_nothing_and_writes_the_same_bytes(tmp_path: Path) -> None:
    data = speech_spec(manifest(tmp_path / "m"), split={"column": "part"})
    first = prepare(tmp_path, data, "first")
    second = prepare(tmp_path, data, "second")
    assert (first["computed"], first["cached"], second["computed"], second["cached"]) == (10, 0, 0, 10)
    for file in sorted((tmp_path / "first").iterdir()):
        assert file.read_bytes() == (tmp_path / "second" / file.name).read_bytes(), file.name


def test_model_io_is_the_frame_width_and_the_alphabet_with_the_blank(tmp_path: Path) -> None:
    path = manifest(tmp_path, clips_to_leave_out())
    assert speech_model_io(speech_spec(path, split={"column": "part"}), WHERE) == (40, 9)
    assert speech_model_io(speech_spec(path, features="mfcc", deltas=True), WHERE)[0] == 39


def test_build_features_dispatches_the_speech_kind(tmp_path: Path) -> None:
    data = parse_data_spec({"kind": "speech", "path": str(manifest(tmp_path)), "workers": 1})
    summary = build_features(data, None, tmp_path / "out", WHERE, tmp_path / "cache")
    assert summary["n_clips"] == 10 and load_speech(tmp_path / "out").n_features == 40


# ------------------------------------------------------------------------------------------------ batches


def test_batches_pad_frames_and_targets(tmp_path: Path) -> None:
    prepare(tmp_path, speech_spec(manifest(tmp_path), split={"column": "part"}))
    features = load_speech(tmp_path / "features")
    train = features.part("train")
    assert len(train) == 6 and train.batch_count(4) == 2
    seen = []
    for batch in train.batches(4):
        size = len(batch.positions)
        assert batch.features.dtype == torch.float32 and batch.features.shape[::2] == (size, 40)
        assert batch.features.shape[1] == int(batch.lengths.max()) and batch.lengths.dtype == torch.int64
        assert batch.targets.dtype == torch.int64 and batch.targets.shape == (size, int(batch.target_lengths.max()))
        for row, position in enumerate(batch.positions.tolist()):
            length = int(batch.target_lengths[row])
            assert decode_ids(features.alphabet, batch.targets[row, :length]) == train.texts[position]
            assert (batch.targets[row, :length] >= 1).all() and (batch.targets[row, length:] == 0).all()
            assert (batch.features[row, int(batch.lengths[row]) :] == 0).all()
        seen += batch.positions.tolist()
    assert sorted(seen) == list(range(6))


def test_the_shuffled_order_depends_only_on_seed_and_epoch(tmp_path: Path) -> None:
    prepare(tmp_path, speech_spec(manifest(tmp_path), split={"column": "part"}))
    train = load_speech(tmp_path / "features").part("train")

    def order(seed: int, epoch: int) -> list[int]:
        return [p for batch in train.batches(2, shuffle=True, seed=seed, epoch=epoch) for p in batch.positions.tolist()]

    assert order(3, 1) == order(3, 1)
    assert len({tuple(order(3, epoch)) for epoch in range(6)}) > 1
    assert sorted(order(3, 1)) == list(range(6))


def test_train_and_val_together(tmp_path: Path) -> None:
    prepare(tmp_path, speech_spec(manifest(tmp_path), split={"column": "part"}))
    features = load_speech(tmp_path / "features")
    both = features.part("train+val")
    assert sorted(both.names) == sorted(features.part("train").names + features.part("val").names)
    assert sum(len(batch.positions) for batch in both.batches(3)) == 8
    with pytest.raises(ValueError, match="part must be train, val, test or train\\+val"):
        features.part("all")  # type: ignore[arg-type]


def test_a_folder_that_is_not_prepared_speech_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no prepared speech in .*: missing"):
        load_speech(tmp_path)


# ------------------------------------------------------------------------------------------------ the demo


@pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is missing (.ci/run and `make demo` install it with apt-get)")
def test_the_demo_speaks_unheard_voices_in_test_and_its_bytes_repeat(tmp_path: Path) -> None:
    build_speech_demo(tmp_path / "one", per_voice=1)
    build_speech_demo(tmp_path / "two", per_voice=1)
    table = pd.read_csv(tmp_path / "one" / "manifest.csv")
    assert list(table.columns) == ["path", "text", "voice", "part"] and len(table) == 40
    voices = {part: set(table.loc[table["part"] == part, "voice"]) for part in ("train", "val", "test")}
    assert not voices["test"] & voices["train"] and not voices["val"] & voices["train"]
    assert {voice.split("+")[1] for voice in voices["test"]} == set(SPEECH_VARIANTS["test"])
    assert table["text"].str.fullmatch(r"[a-z]+( [a-z]+)*").all()
    info = soundfile.info(str(tmp_path / "one" / table["path"][0]))
    assert (info.samplerate, info.channels, info.subtype) == (SPEECH_RATE, 1, "PCM_16")
    for path in table["path"]:
        assert (tmp_path / "one" / path).read_bytes() == (tmp_path / "two" / path).read_bytes()
    summary = prepare(tmp_path, speech_spec(tmp_path / "one" / "manifest.csv", split={"column": "part"}))
    assert summary["n_train"] == 24 and summary["skipped_bad_files"] == summary["skipped_too_short_for_text"] == 0
    assert summary["n_val"] + summary["n_test"] + summary["skipped_outside_alphabet"] == 16  # 24 clips miss letters


def test_the_demo_names_the_package_to_install_when_espeak_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH on which no espeak-ng is found
    with pytest.raises(DataError, match=r"install the Debian/Ubuntu package espeak-ng \(apt-get install espeak-ng"):
        build_speech_demo(tmp_path / "speech", per_voice=1)
