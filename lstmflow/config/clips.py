"""The `data` sections of the kinds read as media files, one clip per sample (`audio`, `speech`, `video`): what they
share (bad files, decoding processes; for audio the per-frame features) and each kind's own keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from lstmflow.config.base import Strict
from lstmflow.config.splits import ClassSplitSpec


class ClipFilesSpec(Strict):
    """The keys of every kind read as media files, one file per sample, each decoded once in worker processes and
    cached (`audio`, `speech`, `video`): which files are bad, and how many processes decode."""

    # Declared first, and narrowed and described by each kind, so that every kind's keys read kind, path, ...
    kind: str
    path: Path
    bad_files: Literal["skip", "fail"] = Field(
        "skip",
        description=(
            "A clip that cannot be used: `skip` it (named and counted in the run) or `fail`. Unusable is an "
            "unreadable or empty file, or one of another type; for `audio` and `speech` also a silent or too-short "
            "clip (for `speech` also one with an empty or missing transcript, a character that no training "
            "transcript holds, or fewer frames than its transcript needs); for `video` a clip that does not decode, "
            "gives fewer than `min_frames` frames or, with `frame_size: null`, has another frame size than the first "
            "usable clip."
        ),
    )
    workers: int | None = Field(
        None,
        ge=1,
        description=(
            "Most processes decoding clips; since a process costs seconds to start, one more starts only per so much "
            "to decode (~100 MB of audio, ~2 MB of video). Default: the CPU count."
        ),
    )


class AudioFeaturesSpec(ClipFilesSpec):
    """The keys of the per-frame features computed from audio clips, shared by every audio kind (`audio`, `speech`),
    so that a clip's features, and their cache, are the same whatever task reads them."""

    sample_rate: int = Field(
        16000, gt=0, description="Clips are resampled to this rate (Hz) before features are computed."
    )
    features: Literal["logmel", "mfcc"] = Field("logmel", description="Per-frame features: log-mel energies or MFCCs.")
    n_mels: int = Field(40, gt=0, description="Mel bands (for both kinds of features).")
    n_mfcc: int = Field(13, gt=0, description="MFCC coefficients, for `features: mfcc`.")
    deltas: bool = Field(False, description="Append first and second time derivatives of the features.")
    n_fft: int = Field(400, gt=0, description="FFT window in samples (400 = 25 ms at 16 kHz).")
    hop_length: int = Field(
        160, gt=0, description="Samples between frames (160 = 10 ms at 16 kHz): one frame is one time step."
    )
    max_seconds: float | None = Field(
        None,
        gt=0,
        description=(
            "Keep only the first `max_seconds` of longer clips; null keeps all. A transcript is never cut with its "
            "clip (`speech`): leave it null there unless clips end in silence."
        ),
    )
    scale: Literal["standard", "none"] = Field(
        "standard", description="Per-feature standardisation fitted on the training clips only."
    )


#: Where labelled clips are (`audio`, `video`), as both kinds read them.
LABELLED_CLIPS = (
    "A folder with one subfolder of clips per label, or a manifest CSV with `path` and `label` columns (and optionally "
    "the split column); paths in a manifest are relative to it."
)


class AudioSpec(AudioFeaturesSpec):
    """Labelled audio clips: audio classification on log-mel or MFCC frames, computed with librosa."""

    kind: Literal["audio"] = Field(description="Kind of data; `audio` for audio classification.")
    path: Path = Field(description=LABELLED_CLIPS)
    split: ClassSplitSpec = Field(default_factory=ClassSplitSpec, description="Train/validation/test division.")


class SpeechSpec(AudioFeaturesSpec):
    """Audio clips with their transcripts: speech recognition (CTC over characters) on log-mel or MFCC frames."""

    kind: Literal["speech"] = Field(description="Kind of data; `speech` for speech recognition (transcription).")
    path: Path = Field(
        description=(
            "A manifest CSV with `path` and `text` columns (and optionally the split column), paths relative to it; "
            "or a folder (subfolders too, walked in name order) where each clip `x.wav` (`.flac`, `.ogg`) has its "
            "transcript in the UTF-8 file `x.txt` beside it."
        )
    )
    text_column: str = Field("text", description="Manifest only: the column holding each clip's transcript.")
    lowercase: bool = Field(
        True,
        description=(
            "Lowercase the transcripts (after trimming them and making each run of spaces one space), so the model "
            "spells with one case of each letter."
        ),
    )
    split: ClassSplitSpec = Field(
        default_factory=ClassSplitSpec,
        description=(
            "Train/validation/test division: seeded random fractions of the clips, a split column (manifest only; "
            "e.g. by speaker, so that the test voices are never heard in training) or given files. The alphabet is "
            "the training transcripts' characters; every part must hold a clip."
        ),
    )


class VideoSpec(ClipFilesSpec):
    """Labelled video clips: classification on sequences of frames, decoded with PyAV (FFmpeg's decoders)."""

    kind: Literal["video"] = Field(description="Kind of data; `video` for video classification.")
    path: Path = Field(description=f"{LABELLED_CLIPS} Clips end in .mp4, .avi, .webm, .gif, .mov, .mkv or .m4v.")
    fps: float | None = Field(
        None,
        gt=0,
        description=(
            "Frames per second sampled from each clip, by the frames' timestamps (a clip with fewer per second keeps "
            "every frame); null: every frame."
        ),
    )
    max_frames: int = Field(
        16,
        gt=0,
        description=(
            "A clip giving more sampled frames keeps this many, evenly spaced over its whole length (the first and "
            "last frames included), so that a long clip is seen whole, not cut."
        ),
    )
    min_frames: int = Field(2, gt=0, description="A clip giving fewer sampled frames is a bad file (see `bad_files`).")
    frame_size: list[Annotated[int, Field(gt=0)]] | None = Field(
        [64, 64],
        min_length=2,
        max_length=2,
        description=(
            "`[height, width]` every frame is resized to. Null keeps the clips' own size, which must then be the "
            "same for every clip (a clip of another size is a bad file)."
        ),
    )
    grayscale: bool = Field(False, description="One channel (luma) per pixel instead of three (RGB).")
    scale: Literal["none", "standard"] = Field(
        "none",
        description=(
            "Frames are stored as pixel values / 255, in [0, 1] (`none`); `standard` also standardises each feature "
            "(one pixel's channel) on the training clips."
        ),
    )
    split: ClassSplitSpec = Field(default_factory=ClassSplitSpec, description="Train/validation/test division.")

    @field_validator("min_frames")
    @classmethod
    def _at_most_max_frames(cls, value: int, info: ValidationInfo) -> int:
        """A clip is thinned to `max_frames`, so a larger minimum would refuse every clip it keeps."""
        most = info.data.get("max_frames")
        if most is not None and value > most:
            raise ValueError(f"must be at most max_frames ({most}), got {value}")
        return value
