"""The `data` section: one spec per data kind (its file, columns and tokenizer), and their union by `kind`.

How each kind is split into parts is in :mod:`lstmflow.config.splits`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator, model_validator

from lstmflow.config.base import Strict
from lstmflow.config.clips import AudioSpec, SpeechSpec, VideoSpec
from lstmflow.config.splits import ClassSplitSpec, CorpusSplitSpec, SplitSpec


class TimeSeriesDataSpec(Strict):
    """A table of one or more numeric series indexed by time (CSV or Parquet)."""

    kind: Literal["timeseries"] = Field(
        "timeseries",
        description=(
            "Kind of data: `timeseries` (forecasting; the default), `sequences`, `images`, `text`, `audio` and "
            "`video` (classification), `corpus` (language modelling), `pairs` (translation) or `speech` "
            "(transcription): each kind's keys are in its own table."
        ),
    )
    path: Path = Field(description="CSV or Parquet file, relative to the YAML file that declares it.")
    time_column: str | None = Field(
        None,
        description=(
            "Column holding the timestamps (dates or numbers); rows must be strictly increasing. Omit to use row order."
        ),
    )
    target: list[str] = Field(min_length=1, description="Column(s) to forecast; a single name is accepted too.")
    features: list[str] = Field(
        default_factory=list,
        description="Extra input columns (covariates) fed to the model beside the targets; not forecast.",
    )
    window: int | None = Field(
        None,
        gt=0,
        description=(
            "Past steps the model sees. Default: max(2 × season, 4 × horizon, 8), the 2 × season term at most a "
            "third of the training rows, and capped so the training part holds at least 8 windows."
        ),
    )
    horizon: int | None = Field(
        None,
        gt=0,
        description=(
            "Future steps forecast at once. Default: the season when the calendar or `evaluate.season` gives one > "
            "1, else 1 (a cycle inferred from the data's autocorrelation sets the window, not the horizon)."
        ),
    )
    stride: int = Field(1, gt=0, description="Steps between the starts of consecutive training windows.")
    split: SplitSpec = Field(default_factory=SplitSpec, description="Chronological train/validation/test split.")
    scale: Literal["standard", "minmax", "none"] = Field(
        "standard",
        description=(
            "Per-column scaling fitted on the training part only: `standard` (zero mean, unit variance), `minmax` (to "
            "[0, 1]) or `none`."
        ),
    )
    transform: str = Field(
        "auto",
        description=(
            "Transform of the targets before scaling, undone exactly for evaluation and serving: `none`, or steps "
            "joined by `+` in the order `log`, `seasonal_difference` (minus the value a season earlier) or "
            "`seasonal_mean_difference` (minus the mean of the values 1, 2 and 3 seasons earlier: a smoothed seasonal "
            "profile that carries less of one year's noise, at the cost of 3 seasons of rows), `difference` (minus "
            "the previous value), e.g. `log+seasonal_difference`. `auto` tests the training part only, each "
            "test on the result of the steps before it: `log` when every value is > 0 and the seasonal (or, without "
            "a season, local) spread grows with the level (a Guerrero-style regression, slope > 0.5, p < 0.05) or "
            "max/min exceeds 10; `seasonal_difference` when the calendar (or `evaluate.season`) gives a season and "
            "STL's seasonal strength exceeds 0.64 (R's nsdiffs rule) and the level moves (a straight line explains "
            "more than 80% of the variance, or the level is not found stationary: the KPSS test rejects it at 5%, "
            "R's ndiffs rule, or the ADF test cannot reject a unit root at 5%), "
            "smoothed to `seasonal_mean_difference` when 30 training windows or more remain after it; "
            "`difference` when a straight line explains more than 80% of what is left or, with no seasonal "
            "difference taken, when the level is not found stationary. One step ahead (`horizon: 1`) a target "
            "left undifferenced by these tests is differenced too (`none` becomes `difference`, `log` "
            "`log+difference`)."
        ),
    )
    gaps: Literal["interpolate", "error"] = Field(
        "interpolate",
        description="Missing values inside the series: `interpolate` linearly (and count them in the run) or `error`.",
    )
    max_abs_value: float = Field(
        1e12,
        gt=0,
        description=(
            "Largest magnitude accepted in a target or feature cell; a larger value is refused as a likely unit or "
            "parsing error (squared while scaling, values near 1e154 overflow). Raise it for data that are that large."
        ),
    )

    @field_validator("target", "features", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("transform")
    @classmethod
    def _known_steps_in_order(cls, value: str) -> str:
        if value in ("auto", "none"):
            return value
        steps = value.split("+")
        known = ("log", "seasonal_difference", "seasonal_mean_difference", "difference")
        if (
            any(step not in known for step in steps)
            or sorted(steps, key=known.index) != steps
            or len(set(steps)) < len(steps)
            or {"seasonal_difference", "seasonal_mean_difference"} <= set(steps)
        ):
            raise ValueError(
                "must be auto, none, or steps joined by + in the order log, seasonal_difference or "
                f"seasonal_mean_difference (one of the two), difference (each at most once), got {value!r}"
            )
        return value


class SequenceTableSpec(Strict):
    """Labelled sequences in a table (CSV or Parquet), one sequence per label: time-series classification."""

    kind: Literal["sequences"] = Field(description="Kind of data; `sequences` for time-series classification.")
    path: Path = Field(description="CSV or Parquet file, relative to the YAML file that declares it.")
    format: Literal["long", "wide"] = Field(
        "long",
        description=(
            "`long`: one row per time step, with `id_column` naming the sequence; `wide`: one row per sequence, one "
            "column per step (univariate)."
        ),
    )
    label_column: str = Field(
        "label", description="Column holding each sequence's class (constant within a sequence in long format)."
    )
    id_column: str | None = Field(
        None, description="Long format: column naming the sequence each row belongs to (required there)."
    )
    time_column: str | None = Field(
        None, description="Long format: column ordering the steps within a sequence. Default: row order."
    )
    value_columns: list[str] = Field(
        default_factory=list,
        description=(
            "Long format: the numeric columns, one feature each (required there). Wide format: the step columns, in "
            "order; default: every column but the label, id and split columns."
        ),
    )
    max_length: int | None = Field(
        None,
        gt=0,
        description=(
            "Keep only the last `max_length` steps of longer sequences (explicit truncation); default: keep all."
        ),
    )
    scale: Literal["standard", "none"] = Field(
        "standard", description="Per-feature standardisation fitted on the training sequences only."
    )
    split: ClassSplitSpec = Field(default_factory=ClassSplitSpec, description="Train/validation/test division.")

    @field_validator("value_columns", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _long_format_needs_ids_and_values(self) -> SequenceTableSpec:
        if self.format == "long" and (self.id_column is None or not self.value_columns):
            raise ValueError("format: long needs id_column and value_columns")
        return self


class ImagesSpec(Strict):
    """Labelled images read as sequences of pixel rows: each row is one time step."""

    kind: Literal["images"] = Field(description="Kind of data; `images` for image classification by rows.")
    path: Path = Field(
        description=(
            "A folder with one subfolder of image files per label, or a CSV/Parquet table of pixels (one row per "
            "image)."
        )
    )
    label_column: str = Field("label", description="Table only: the column holding each image's class.")
    shape: list[int] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="Table only: `[height, width]` of the images; the pixel columns are read row by row.",
    )
    grayscale: bool = Field(
        True, description="Convert images to one channel; otherwise each step has width × 3 features (RGB)."
    )
    scale: Literal["standard", "none"] = Field(
        "standard", description="Per-feature standardisation fitted on the training images only."
    )
    split: ClassSplitSpec = Field(default_factory=ClassSplitSpec, description="Train/validation/test division.")


#: Text classification's default `tokenizer.min_frequency`: words seen once in training become the unknown token.
TEXT_MIN_FREQUENCY = 2
#: Text classification's default `tokenizer.kind`: subwords, so a word unseen in training is read as known pieces
#: (language and morphology cues that a word vocabulary maps to `<unk>`).
TEXT_TOKENIZER_KIND = "bpe"


class TokenizerSpec(Strict):
    """How text becomes token ids; fitted on the training texts only and saved beside the model."""

    kind: Literal["word", "char", "bpe"] = Field(
        "word",
        description=(
            "`word`: runs of letters/digits and single punctuation marks; `char`: characters; `bpe`: subword byte-pair "
            "encoding (the `tokenizers` library)."
        ),
    )
    vocab_size: int = Field(
        20000,
        gt=2,
        description="Largest vocabulary, padding and unknown tokens included; the most frequent tokens are kept.",
    )
    min_frequency: int = Field(
        1,
        ge=1,
        description=(
            "Tokens seen fewer times in the training texts become the unknown token (for `bpe`: the fewest times a "
            "pair must occur to be merged). Default 1, but 2 for text classification (`kind: text`): a word (or pair) "
            "seen once could only be memorised, and mapping it to the unknown token teaches the model what an "
            "unknown word means in context."
        ),
    )
    lowercase: bool = Field(True, description="Lowercase the text before tokenizing.")
    unknown_token: str = Field("<unk>", min_length=1, description="The token for anything outside the vocabulary.")
    padding_token: str = Field("<pad>", min_length=1, description="The token (id 0) that pads batches.")


class TextSpec(Strict):
    """Labelled texts in a table (CSV, Parquet or JSONL): text classification."""

    kind: Literal["text"] = Field(description="Kind of data; `text` for text classification.")
    path: Path = Field(description="CSV, Parquet or JSON Lines file, relative to the YAML file that declares it.")
    text_column: str = Field("text", description="Column holding each text.")
    label_column: str = Field("label", description="Column holding each text's class.")
    tokenizer: TokenizerSpec = Field(
        default_factory=lambda: TokenizerSpec(kind=TEXT_TOKENIZER_KIND, min_frequency=TEXT_MIN_FREQUENCY),
        description="Tokenization; `kind` defaults to `bpe` and `min_frequency` to 2 here.",
    )
    max_length: int | None = Field(
        256,
        gt=0,
        description=(
            "Keep only the first `max_length` tokens of longer texts (explicit truncation; counted); null keeps all."
        ),
    )
    split: ClassSplitSpec = Field(default_factory=ClassSplitSpec, description="Train/validation/test division.")

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _rare_words_are_unknown(cls, value: Any) -> Any:
        """Unset `kind` and `min_frequency` take the classifier's defaults (`bpe`, 2), not the tokenizer's."""
        defaults = {"kind": TEXT_TOKENIZER_KIND, "min_frequency": TEXT_MIN_FREQUENCY}
        return {**defaults, **value} if isinstance(value, dict) else value


class CorpusSpec(Strict):
    """Plain UTF-8 text for language modelling: the model learns to predict each next token."""

    kind: Literal["corpus"] = Field(description="Kind of data; `corpus` for language modelling.")
    path: Path = Field(
        description=(
            "A UTF-8 text file, or a folder whose `*.txt` files are read in name order and joined by line breaks; "
            "relative to the YAML file."
        )
    )
    tokenizer: TokenizerSpec = Field(
        default_factory=lambda: TokenizerSpec(kind="char", lowercase=False),
        description=(
            "Tokenization, fitted on the training part. For a corpus `kind` defaults to `char` and `lowercase` to "
            "false (a character model also reports bits per character)."
        ),
    )
    sequence_length: int = Field(
        100,
        ge=2,
        description=(
            "Tokens per training sequence: the span of truncated back-propagation through time. A `stateful` lstm "
            "carries its state from one such span to the next."
        ),
    )
    split: CorpusSplitSpec = Field(default_factory=CorpusSplitSpec, description="Train/validation/test division.")

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _character_defaults(cls, value: Any) -> Any:
        """Unset tokenizer keys take the corpus defaults (characters, case kept), not the classifier's."""
        return {"kind": "char", "lowercase": False, **value} if isinstance(value, dict) else value


#: Translation's default tokenizer, on both sides: characters with their case, like a corpus (no unknown words, and
#: a small data set of pairs rarely repeats a word often enough to learn it).
PAIRS_TOKENIZER: dict[str, Any] = {"kind": "char", "lowercase": False, "min_frequency": 1}


class PairsSpec(Strict):
    """Paired texts for translation: a source text and its target text, as one table or as two aligned text files."""

    kind: Literal["pairs"] = Field(description="Kind of data; `pairs` for translation (sequence to sequence).")
    path: Path = Field(
        description=(
            "CSV, Parquet or JSON Lines file with a source and a target column, relative to the YAML file; or, with "
            "`target_path`, a UTF-8 text file of source sentences, one per line."
        ),
    )
    source_column: str = Field("source", description="Table only: the column holding each source text.")
    target_column: str = Field("target", description="Table only: the column holding each text's translation.")
    target_path: Path | None = Field(
        None,
        description=(
            "Aligned text files: a UTF-8 text file of target sentences, one per line, relative to the YAML file; "
            "line n is the translation of line n of `path`. Null (default): `path` is a table."
        ),
    )
    source_tokenizer: TokenizerSpec = Field(
        default_factory=lambda: TokenizerSpec.model_validate(PAIRS_TOKENIZER),
        description=(
            "Tokenization of the source texts, fitted on the training pairs. Here `kind` defaults to `char`, "
            "`lowercase` to false and `min_frequency` to 1."
        ),
    )
    target_tokenizer: TokenizerSpec = Field(
        default_factory=lambda: TokenizerSpec.model_validate(PAIRS_TOKENIZER),
        description=(
            "Tokenization of the target texts, fitted on the training pairs, with the same defaults as "
            "`source_tokenizer`; the decoder writes its tokens plus a start and an end token."
        ),
    )
    max_length: int = Field(
        100,
        gt=0,
        description=(
            "Most tokens on either side of a pair; longer pairs are left out and counted (`too_long`), never "
            "truncated: a cut target would teach a wrong translation."
        ),
    )
    bad_pairs: Literal["fail", "skip"] = Field(
        "fail",
        description=(
            "A pair with an empty source or target: `fail` (naming the rows) or `skip` it (counted as `skipped_pairs`)."
        ),
    )
    split: ClassSplitSpec = Field(
        default_factory=ClassSplitSpec,
        description=(
            "Train/validation/test division: seeded random fractions of the pairs (not stratified: pairs have no "
            "labels), a split column or given files (both for a table only). Every part must hold a pair."
        ),
    )

    @field_validator("source_tokenizer", "target_tokenizer", mode="before")
    @classmethod
    def _translation_defaults(cls, value: Any) -> Any:
        """Unset tokenizer keys take the translation defaults (characters, case kept, every token), not the
        classifier's."""
        return {**PAIRS_TOKENIZER, **value} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _aligned_files_split_by_fractions(self) -> PairsSpec:
        if self.target_path is not None and (self.split.column is not None or self.split.files is not None):
            key = "split.column" if self.split.column is not None else "split.files"
            raise ValueError(f"{key} needs a table in path; aligned text files (target_path) are split by fractions")
        return self


def _data_kind(value: Any) -> str:
    """The data spec's `kind`; `timeseries` when omitted (forecasting is the original task)."""
    return value.get("kind", "timeseries") if isinstance(value, dict) else getattr(value, "kind", "timeseries")


#: The data spec model of each `data.kind`.
DATA_SPECS: dict[str, type[BaseModel]] = {
    "timeseries": TimeSeriesDataSpec,
    "sequences": SequenceTableSpec,
    "images": ImagesSpec,
    "text": TextSpec,
    "audio": AudioSpec,
    "corpus": CorpusSpec,
    "pairs": PairsSpec,
    "speech": SpeechSpec,
    "video": VideoSpec,
}
DATA_KINDS = tuple(DATA_SPECS)
DataSpec = Annotated[
    Annotated[TimeSeriesDataSpec, Tag("timeseries")]
    | Annotated[SequenceTableSpec, Tag("sequences")]
    | Annotated[ImagesSpec, Tag("images")]
    | Annotated[TextSpec, Tag("text")]
    | Annotated[AudioSpec, Tag("audio")]
    | Annotated[CorpusSpec, Tag("corpus")]
    | Annotated[PairsSpec, Tag("pairs")]
    | Annotated[SpeechSpec, Tag("speech")]
    | Annotated[VideoSpec, Tag("video")],
    Discriminator(_data_kind),
]
