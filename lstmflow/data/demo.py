"""The demo data sets, written from copies shipped inside the statsmodels wheel: nothing is downloaded.

- ``sunspots.csv``: yearly mean sunspot numbers 1700-2008 (``year``, ``sunactivity``), 309 rows.
- ``co2.csv``: Mauna Loa CO2 (ppm) as monthly means of the weekly flask samples (``date``, ``co2``),
  1958-03 to 2001-12, 526 rows. Five months have no sample at all and stay empty, so the gap interpolation of
  the data stage is exercised on real gaps. Monthly rather than weekly because the weekly default (season 52,
  so horizon 52 and window 208) makes an epoch about 18 times the work of a monthly one
  (season 12, horizon 12, window 48): monthly, 20 epochs of an LSTM of 64 units took under a second on one
  CPU thread here.

For classification:

- ``order_sequences.csv``: generated, seeded. Time series whose class is the ORDER of the same three events
  (two bumps and a dip): ``bump-bump-dip``, ``bump-dip-bump`` or ``dip-bump-bump``, at random positions in
  series of 40-120 steps, with noise. Every class holds the same shapes, so per-series statistics (mean, deviation,
  length) do not tell the classes apart: a model must read the sequence. Long format
  (``series_id``, ``step``, ``x``, ``label``), 600 series, 200 per class.
- ``digits/<label>/<index>.png``: the 1797 8×8 handwritten digits shipped inside scikit-learn, as 8-bit
  grayscale PNGs (pixels 0..16 scaled ×15 to 0..240), one folder per digit.
- ``shapes/<direction>/<index>.mp4``: generated, seeded. 80 H.264 clips per class of a square or disc moving
  ``left``, ``right``, ``up`` or ``down`` (32×32, 16 frames at 8 fps), real video files that the data stage decodes
  as a user's clips. The mean frame of a clip moving left is the same streak as one moving right: a model must read
  the frames in order.

For translation:

- ``numbers_en_fr.csv``: generated. Whole numbers written out in English (``source``) and French (``target``) by
  num2words: all of 0-999 and a seeded sample of 2,500 up to 99,999 (about 260 KB).

For speech recognition:

- ``speech/<voice>/<nn>.wav`` and ``speech/manifest.csv`` (``path``, ``text``, ``voice``, ``part``): generated.
  Digit strings of 2-4 digits spoken as words ("three one four") and short commands ("turn left"), synthesised by
  espeak-ng in 4 accents × 10 voice variants, each utterance at a seeded speed and pitch with seeded background
  noise, as 16 kHz 16-bit mono WAV. Split by voice (``part``): the validation and test voices use variants that no
  training voice uses, so both measure how a model copes with voices it never heard. The bytes depend on the
  espeak-ng version as well as the seed.

For language modelling:

- ``python_docs.txt``: the Python language reference's topics as plain text (``pydoc_data.topics``, shipped with
  every CPython), the first ``PYTHON_DOCS_CHARACTERS`` characters of the topics in name order: real English prose
  mixed with grammar rules and code, a classic kind of character-model corpus. It depends on the Python version
  (3.11 here), which DVC records by hash like any other data.

Run as ``python -m lstmflow.data.demo OUT_DIR`` (the first DVC stage; the speech demo needs the espeak-ng
program, Debian's package of that name). The bytes written depend only on the
shipped data and the fixed seed, so DVC sees an unchanged output when nothing changed.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from lstmflow.errors import DataError

LICENSE_TEXT = """\
# Data sources and licences

Every file here is written by `python -m lstmflow.data.demo`. sunspots.csv and co2.csv come from copies of the
data that ship inside the statsmodels package (BSD-3-Clause), which states their sources and licences as follows.

## sunspots.csv

Yearly (1700-2008) mean sunspot numbers, from `statsmodels.datasets.sunspots`.
Source: NOAA National Geophysical Data Center, http://www.ngdc.noaa.gov/stp/solar/solarda3.html
Licence: public domain ("This data is public domain.", statsmodels' dataset notes).
Columns renamed from YEAR, SUNACTIVITY to year, sunactivity.

## co2.csv

Atmospheric CO2 (ppm) from continuous air samples at Mauna Loa Observatory, Hawaii, U.S.A.,
weekly 1958-03-29 to 2001-12-29, from `statsmodels.datasets.co2`, here averaged per calendar month
(rounded to 0.001 ppm); months without any sample are left empty.
Source: http://cdiac.ornl.gov/trends/co2/sio-keel-flask/sio-keel-flaskmlo_c.html
Citation: Keeling, C.D. and T.P. Whorf. 2004. Atmospheric CO2 concentrations derived from flask air samples
at sites in the SIO network. In Trends: A Compendium of Data on Global Change. Carbon Dioxide Information
Analysis Center, Oak Ridge National Laboratory, U.S. Department of Energy, Oak Ridge, Tennessee, U.S.A.
Licence: public domain ("This is public domain.", statsmodels' dataset notes).

## order_sequences.csv

Generated by lstmflow with a fixed seed (no outside source); MIT, like lstmflow.

## digits/

The 1797 8x8 images of handwritten digits that ship inside scikit-learn (BSD-3-Clause) as
`sklearn.datasets.load_digits`, written as 8-bit grayscale PNGs (pixel counts 0..16 multiplied by 15),
`digits/<digit>/<index>.png` where index is the row in `load_digits()`.
Source: "Optical Recognition of Handwritten Digits", E. Alpaydin and C. Kaynak, 1998, UCI Machine Learning
Repository, https://archive.ics.uci.edu/dataset/80, https://doi.org/10.24432/C50P49.
Licence: Creative Commons Attribution 4.0 International (CC BY 4.0), as listed by the UCI repository.

## python_docs.txt

The topics of the Python Language Reference as CPython ships them for `help()` (`pydoc_data.topics`), in name
order, each preceded by its name; cut after 200,000 characters.
Source: the Python documentation, https://docs.python.org/3/reference/, copyright Python Software Foundation.
Licence: Python Software Foundation License Version 2 (the documentation's licence, https://docs.python.org/3/license.html).

## numbers_en_fr.csv

English and French words for 3,500 whole numbers (`source`, `target`): every number 0-999 and 2,500 more drawn
with a fixed seed from 1,000-99,999, in increasing order. Generated by lstmflow from the spelling rules of the
num2words package (https://github.com/savoirfairelinux/num2words, LGPL-2.1), `num2words(n, lang="en")` and
`num2words(n, lang="fr")`; the rules are num2words' work, the file holds their output only, no code of it.

## speech/

960 short English utterances (digit strings spoken as words, and short commands) with their transcripts in
`speech/manifest.csv`. Generated by lstmflow with a fixed seed: the speech is synthesised by the espeak-ng program
(https://github.com/espeak-ng/espeak-ng, GPL-3+, Debian's `espeak-ng` package), then resampled to 16 kHz and mixed
with seeded noise; the clips are espeak-ng's output, no code or voice data of it. MIT, like lstmflow.

## shapes/

320 short videos, `shapes/<direction>/<index>.mp4` (H.264, 32x32 pixels, 16 frames at 8 frames per second), 80 per
direction: a filled square or disc moving left, right, up or down over a dark, faintly noisy background. Generated by
lstmflow with a fixed seed (no outside source) and encoded by FFmpeg's libx264 as shipped in the PyAV package; MIT,
like lstmflow.
"""


def _sunspots() -> pd.DataFrame:
    from statsmodels.datasets import sunspots

    data = sunspots.load_pandas().data
    return pd.DataFrame({"year": data["YEAR"].astype(int), "sunactivity": data["SUNACTIVITY"]})


def _co2_monthly() -> pd.DataFrame:
    """Calendar-month means of the weekly series; a month with no sample at all stays NaN (a real gap)."""
    from statsmodels.datasets import co2

    monthly = co2.load_pandas().data["co2"].resample("MS").mean()
    return pd.DataFrame({"date": monthly.index.strftime("%Y-%m-%d"), "co2": monthly.round(3).to_numpy()})


#: The three classes of order_sequences.csv: the same two bumps and one dip, in three orders (+1 bump, -1 dip).
ORDER_CLASSES = {"bump-bump-dip": (1, 1, -1), "bump-dip-bump": (1, -1, 1), "dip-bump-bump": (-1, 1, 1)}


def _order_sequences(series_per_class: int = 200, seed: int = 20261) -> pd.DataFrame:
    """Series of 40-120 steps holding three Gaussian events in the order of their class, plus noise.

    Amplitudes, widths, positions and the length are drawn independently of the class, so the distribution of
    any order-free statistic (mean, deviation, length, minimum, maximum) is the same for every class.
    """
    rng = np.random.default_rng(seed)
    names = np.repeat(list(ORDER_CLASSES), series_per_class)[rng.permutation(len(ORDER_CLASSES) * series_per_class)]
    margin, gap = 6.0, 10.0  # no event is cut off at an edge; events never overlap much
    frames = []
    for number, name in enumerate(names):
        length = int(rng.integers(40, 121))
        slack = np.sort(rng.uniform(0.0, length - 2 * margin - 2 * gap, size=3))
        centres = margin + slack + gap * np.arange(3)
        widths, amplitudes = rng.uniform(1.5, 3.0, size=3), rng.uniform(1.0, 1.5, size=3)
        t = np.arange(length)
        events = (
            np.array(ORDER_CLASSES[name])[:, None]
            * amplitudes[:, None]
            * np.exp(-0.5 * ((t[None, :] - centres[:, None]) / widths[:, None]) ** 2)
        )  # (3, length)
        x = events.sum(axis=0) + rng.normal(0.0, 0.25, size=length)
        frames.append(pd.DataFrame({"series_id": f"s{number:04d}", "step": t, "x": x, "label": name}))
    return pd.concat(frames, ignore_index=True)


def _write_digits(out_dir: Path) -> Path:
    """scikit-learn's digits as ``digits/<label>/<index>.png``, 8-bit grayscale; PNG bytes carry no timestamp."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = out_dir / "digits"
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 15).astype(np.uint8)).save(folder / f"{index:04d}.png")
    return root


#: The audio demo's classes: the pitch contour of each clip, as (start, middle, end) on a 0 (low) .. 1 (high) scale.
CHIRP_CLASSES = {"rising": (0.0, 0.5, 1.0), "falling": (1.0, 0.5, 0.0), "rise-fall": (0.0, 1.0, 0.0)}
AUDIO_DEMO_RATE = 16000


def build_audio_demo(
    out_dir: Path, clips_per_class: int = 100, seed: int = 20263, seconds: tuple[float, float] = (0.5, 1.0)
) -> list[Path]:
    """Write seeded synthetic chirps as ``<out_dir>/<class>/<index>.wav`` (16 kHz, 16-bit mono); return the folders.

    Every clip sweeps between a random low pitch (200-600 Hz) and a random high one (1-3 kHz), ``seconds`` long
    (drawn uniformly), with a random loudness and noise. The classes differ only in the ORDER of the pitches (rising,
    falling, rising then falling, the turn at a random point), so the overall spectrum does not tell them apart: a
    model must follow the frames in time. WAV bytes carry no timestamp, so the same seed writes the same bytes.
    """
    import soundfile

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    folders = []
    for name, (start, middle, end) in CHIRP_CLASSES.items():
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(clips_per_class):
            n = int(rng.uniform(*seconds) * AUDIO_DEMO_RATE)
            low, high = rng.uniform(200.0, 600.0), rng.uniform(1000.0, 3000.0)
            turn = rng.uniform(0.35, 0.65)
            contour = np.interp(np.linspace(0.0, 1.0, n), [0.0, turn, 1.0], [start, middle, end])  # (n,) in 0..1
            frequency = low * (high / low) ** contour  # geometric: equal steps in pitch
            phase = 2 * np.pi * np.cumsum(frequency) / AUDIO_DEMO_RATE + rng.uniform(0, 2 * np.pi)
            fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * AUDIO_DEMO_RATE))
            wave = rng.uniform(0.3, 0.8) * fade * np.sin(phase) + rng.normal(0.0, rng.uniform(0.01, 0.05), n)
            soundfile.write(folder / f"{index:03d}.wav", np.clip(wave, -1.0, 1.0), AUDIO_DEMO_RATE, subtype="PCM_16")
        folders.append(folder)
    return folders


#: The video demo's classes: the direction a shape moves in, as (rows, columns) per frame. The mean frame of a `left`
#: clip is the same streak as a `right` one's, so only the order of the frames tells them apart.
SHAPE_DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
#: Side of the video demo's square frames (pixels), frames per clip, and frames per second.
SHAPE_FRAME, SHAPE_FRAMES, SHAPE_FPS = 32, 16, 8
#: Codec and pixel format written per container, by file ending: what FFmpeg (PyAV's wheel) encodes each with.
VIDEO_CODECS = {
    ".mp4": ("libx264", "yuv420p"),
    ".avi": ("mjpeg", "yuvj420p"),
    ".webm": ("libvpx", "yuv420p"),
    ".gif": ("gif", "rgb8"),
}


def write_video(path: Path, frames: np.ndarray, fps: int) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames as a video file, its container and codec chosen by the file's ending
    (:data:`VIDEO_CODECS`). One encoder thread: x264's output then depends on the frames alone."""
    import av

    codec, pixel_format = VIDEO_CODECS[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        if not isinstance(stream, av.VideoStream):  # every codec of VIDEO_CODECS encodes video
            raise TypeError(f"{codec} is not a video codec")
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pixel_format
        stream.thread_count = 1
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")))
        container.mux(stream.encode())  # flush the frames the encoder holds back
    return path


def _moving_shape(rng: np.random.Generator, direction: tuple[int, int]) -> np.ndarray:
    """One clip's (T, H, W, 3) frames: a filled square or disc of a random colour and size moving at a random speed
    from a random start in ``direction``, over faint noise on a random dark background."""
    size, frames = int(rng.integers(5, 10)), SHAPE_FRAMES
    speed = rng.uniform(0.7, (SHAPE_FRAME - size) / (frames - 1))  # pixels per frame; the path stays in the frame
    travel = speed * (frames - 1)
    along = rng.uniform(0.0, SHAPE_FRAME - size - travel)  # the start, counted from the side the shape leaves
    across = rng.uniform(0.0, SHAPE_FRAME - size)
    disc, colour = rng.random() < 0.5, rng.integers(120, 256, size=3)
    background = rng.integers(0, 60, size=3)
    rows, columns = np.mgrid[0:SHAPE_FRAME, 0:SHAPE_FRAME] + 0.5  # pixel centres
    clip = np.empty((frames, SHAPE_FRAME, SHAPE_FRAME, 3), dtype=np.uint8)
    for t in range(frames):
        step = along + speed * t
        low = step if sum(direction) > 0 else SHAPE_FRAME - size - step  # top or left edge along the motion
        top, left = (low, across) if direction[0] else (across, low)
        if disc:
            centre, radius = (top + size / 2, left + size / 2), size / 2
            inside = (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2
        else:
            inside = (rows >= top) & (rows < top + size) & (columns >= left) & (columns < left + size)
        noise = rng.normal(0.0, 4.0, size=(SHAPE_FRAME, SHAPE_FRAME, 3))
        clip[t] = np.clip(np.where(inside[..., None], colour, background) + noise, 0, 255).astype(np.uint8)
    return clip


def build_video_demo(out_dir: Path, seed: int = 20267, per_class: int = 80) -> list[Path]:
    """Write seeded clips of a moving shape as ``<out_dir>/<direction>/<index>.mp4`` (H.264, 32x32, 16 frames at 8
    fps); return the folders. The label is the direction of motion, which the mean frame does not show: a model must
    read the frames in order. The same seed writes the same bytes (one x264 thread, no timestamp in the file)."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    folders = []
    for name, direction in SHAPE_DIRECTIONS.items():
        for index in range(per_class):
            write_video(out_dir / name / f"{index:03d}.mp4", _moving_shape(rng, direction), SHAPE_FPS)
        folders.append(out_dir / name)
    return folders


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


AGENT_ANIMALS = ("cat", "dog", "fox")
AGENT_TEMPLATES = (  # every sentence names all three animals once, {a} being the one that acts: only order tells
    "the {adj} {a} {verb} the {b} near the {c}",
    "the {b} was {verb} by the {adj} {a} near the {c}",
    "near the {c} , the {adj} {a} {verb} the {b}",
    "the {c} watched as the {a} {verb} the {b}",
)
AGENT_VERBS = ("chased", "followed", "startled", "greeted", "ignored")
AGENT_ADJECTIVES = ("quick", "sleepy", "old", "young", "grey", "small")


def _agent_texts(texts_per_class: int = 250, seed: int = 20264) -> pd.DataFrame:
    """Generated sentences labelled with the animal that acts; a bag of words cannot tell (all three always appear)."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in AGENT_ANIMALS:
        others = [animal for animal in AGENT_ANIMALS if animal != label]
        for _ in range(texts_per_class):
            b, c = rng.permutation(others)
            text = AGENT_TEMPLATES[rng.integers(len(AGENT_TEMPLATES))].format(
                a=label,
                b=b,
                c=c,
                verb=AGENT_VERBS[rng.integers(len(AGENT_VERBS))],
                adj=AGENT_ADJECTIVES[rng.integers(len(AGENT_ADJECTIVES))],
            )
            rows.append((text.capitalize(), label))
    order = rng.permutation(len(rows))
    return pd.DataFrame([rows[i] for i in order], columns=["text", "label"])


#: The translation demo's numbers: all of 0-999 (every word a larger number is made of) and a seeded sample above.
NUMBERS_SMALL, NUMBERS_SAMPLED, NUMBERS_LARGEST = 1000, 2500, 99_999


def _numbers_en_fr(seed: int = 20265) -> pd.DataFrame:
    """Numbers written out in English (source) and French (target): a translation whose rules (French's
    vingt/soixante-dix/quatre-vingts, "et un", plurals of cent) a model must learn from examples."""
    from num2words import num2words

    rng = np.random.default_rng(seed)
    larger = rng.choice(np.arange(NUMBERS_SMALL, NUMBERS_LARGEST + 1), size=NUMBERS_SAMPLED, replace=False)
    numbers = [*range(NUMBERS_SMALL), *sorted(int(n) for n in larger)]
    return pd.DataFrame(
        {"source": [num2words(n, lang="en") for n in numbers], "target": [num2words(n, lang="fr") for n in numbers]}
    )


#: Enough text for a character model to learn words and syntax, small enough to train in under a minute on 2 cores.
PYTHON_DOCS_CHARACTERS = 200_000


def _python_docs() -> str:
    """The reference topics in name order, each under its name, cut at a line break after the limit."""
    from pydoc_data.topics import topics

    text = "".join(f"{name}\n\n{topics[name].strip()}\n\n" for name in sorted(topics))
    end = text.find("\n", PYTHON_DOCS_CHARACTERS)
    return text[: end + 1] if end != -1 else text


def build_demo_data(out_dir: Path) -> list[Path]:
    """Write the demo tables, the digits, chirps, speech and shapes folders and LICENSE-DATA.md into ``out_dir``;
    return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame, decimals in (
        ("sunspots.csv", _sunspots(), "%.1f"),
        ("co2.csv", _co2_monthly(), "%.3f"),
        ("order_sequences.csv", _order_sequences(), "%.4f"),
        ("agents.csv", _agent_texts(), None),
        ("numbers_en_fr.csv", _numbers_en_fr(), None),
    ):
        path = out_dir / name
        frame.to_csv(path, index=False, float_format=decimals, na_rep="", lineterminator="\n")
        written.append(path)
    docs = out_dir / "python_docs.txt"
    docs.write_text(_python_docs(), encoding="utf-8")
    written.append(docs)
    written.append(_write_digits(out_dir))
    build_audio_demo(out_dir / "chirps")
    written.append(out_dir / "chirps")
    build_speech_demo(out_dir / "speech")
    written.append(out_dir / "speech")
    build_video_demo(out_dir / "shapes")
    written.append(out_dir / "shapes")
    licence = out_dir / "LICENSE-DATA.md"
    licence.write_text(LICENSE_TEXT)
    return [*written, licence]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lstmflow.data.demo OUT_DIR", file=sys.stderr)
        return 2
    for path in build_demo_data(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
