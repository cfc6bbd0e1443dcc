"""The speech demo's clips (``data/raw/speech``, see :mod:`lstmflow.data.demo`): digit strings and short commands
spoken by espeak-ng in several accents and voices, with seeded noise; its validation and test voices are never
heard in training."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from lstmflow.errors import DataError

#: The speech demo's voices are espeak-ng accents × variants, the parts split by variant: the validation and test
#: voices are never heard in training (their accents are, with other variants' pitch and timbre).
SPEECH_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029")
SPEECH_VARIANTS = {"train": ("m1", "m2", "m3", "f1", "f2", "f3"), "val": ("m4", "f4"), "test": ("m5", "f5")}
SPEECH_PER_VOICE = 24
SPEECH_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPEECH_COMMANDS = (
    "stop", "go", "go back", "turn left", "turn right", "lights on", "lights off", "volume up", "volume down",
    "next song", "play music", "open the door", "close the door", "yes", "no",
)  # fmt: skip
#: espeak-ng writes 22,050 Hz; the clips are resampled by 320/441 to this rate.
SPEECH_RATE = 16000


class Utterance(NamedTuple):
    """One clip to synthesise: the words, the voice (accent+variant) and how it is said."""

    text: str
    voice: str
    part: str
    speed: int
    pitch: int
    snr_db: float


def _utterances(seed: int, per_voice: int) -> list[Utterance]:
    """Every clip's words and delivery, drawn in a fixed order: two thirds digit strings, one third commands."""
    rng = np.random.default_rng(seed)
    drawn = []
    for part, variants in SPEECH_VARIANTS.items():
        for accent in SPEECH_ACCENTS:
            for variant in variants:
                for _ in range(per_voice):
                    if rng.random() < 2 / 3:
                        text = " ".join(SPEECH_DIGITS[d] for d in rng.integers(0, 10, size=rng.integers(2, 5)))
                    else:
                        text = str(SPEECH_COMMANDS[rng.integers(len(SPEECH_COMMANDS))])
                    speed, pitch, snr = int(rng.integers(130, 191)), int(rng.integers(30, 71)), rng.uniform(10, 30)
                    drawn.append(Utterance(text, f"{accent}+{variant}", part, speed, pitch, float(snr)))
    return drawn


def _espeak() -> str:
    """The espeak-ng program; a DataError naming the package when it is missing."""
    found = shutil.which("espeak-ng")
    if found is None:
        raise DataError(
            "the speech demo (data/raw/speech) is synthesised with espeak-ng, which is not installed: install the "
            "Debian/Ubuntu package espeak-ng (apt-get install espeak-ng; `make demo` does so as root)"
        )
    return found


def _write_clip(program: str, utterance: Utterance, path: Path, noise_seed: list[int]) -> None:
    """espeak-ng's 22,050 Hz speech for one utterance, resampled to 16 kHz, with seeded noise, as 16-bit WAV."""
    import soundfile
    from scipy.signal import resample_poly

    voice = ["-v", utterance.voice, "-s", str(utterance.speed), "-p", str(utterance.pitch)]
    wav = subprocess.run([program, *voice, "--stdout", utterance.text], capture_output=True, check=True).stdout
    samples, _ = soundfile.read(io.BytesIO(wav), dtype="float32")
    clean = resample_poly(samples, 320, 441)  # 22,050 Hz → 16 kHz
    rms = float(np.sqrt(np.mean(clean**2)))
    noise = np.random.default_rng(noise_seed).normal(0.0, rms * 10 ** (-utterance.snr_db / 20), len(clean))
    soundfile.write(path, np.clip(clean + noise, -1.0, 1.0), SPEECH_RATE, subtype="PCM_16")


def build_speech_demo(out_dir: Path, seed: int = 20266, per_voice: int = SPEECH_PER_VOICE) -> Path:
    """Write ``per_voice`` clips per voice as ``<out_dir>/<voice>/<nn>.wav`` (16 kHz, 16-bit mono) and
    ``manifest.csv``; return the manifest.

    Each clip is espeak-ng's speech resampled to 16 kHz plus white noise at a seeded signal-to-noise ratio of
    10-30 dB (against the speech's RMS). espeak-ng's output is the same bytes on every run of one version and
    the noise is seeded by the clip's number, so the same seed writes the same bytes although the clips are
    written by a few threads (synthesis and disk writes overlap; each clip depends on nothing but its row).
    """
    program = _espeak()
    utterances = _utterances(seed, per_voice)
    out_dir = Path(out_dir)
    paths, numbers = [], dict.fromkeys((u.voice for u in utterances), 0)
    for utterance in utterances:
        paths.append(Path(utterance.voice) / f"{numbers[utterance.voice]:02d}.wav")
        numbers[utterance.voice] += 1
    for voice in numbers:
        (out_dir / voice).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(min(8, 2 * (os.cpu_count() or 1))) as pool:
        jobs = [
            pool.submit(_write_clip, program, utterance, out_dir / path, [seed, index])
            for index, (utterance, path) in enumerate(zip(utterances, paths))
        ]
        for job in jobs:
            job.result()  # raises the first failure
    rows = [(path.as_posix(), u.text, u.voice, u.part) for path, u in zip(paths, utterances)]
    manifest = out_dir / "manifest.csv"
    pd.DataFrame(rows, columns=["path", "text", "voice", "part"]).to_csv(manifest, index=False, lineterminator="\n")
    return manifest
