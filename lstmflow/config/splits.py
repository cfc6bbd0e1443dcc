"""How each kind of data is divided into training, validation and test parts: chronological fractions of a series,
stratified fractions of labelled samples, stretches at the end of a corpus, or given files."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from lstmflow.config.base import Strict


class SplitFilesSpec(Strict):
    """A given split as files: `data.path` then holds the training part only."""

    val: Path = Field(
        description=(
            "File (or folder) of the same form as `data.path` holding the validation part, relative to the YAML file."
        )
    )
    test: Path = Field(
        description="File (or folder) of the same form as `data.path` holding the test part, relative to the YAML file."
    )


class SplitSpec(Strict):
    """Chronological fractions of the series held out for validation and test, or given files that continue it."""

    val: float = Field(
        0.15,
        ge=0.0,
        lt=1.0,
        description=(
            "Fraction of the series (by time) used for validation, after the training part (ignored when `files` is "
            "given)."
        ),
    )
    test: float = Field(
        0.15,
        ge=0.0,
        lt=1.0,
        description=(
            "Fraction of the series (by time) used for the final test, at the end (ignored when `files` is given)."
        ),
    )
    files: SplitFilesSpec | None = Field(
        None,
        description=(
            "Given split: `path` holds the training series, the `val` file continues it in time and the `test` file "
            "continues the `val` file, with the same columns. The three are read as one series and split at the file "
            "boundaries (windows may reach back into the previous part, as with fractions); the fractions are then "
            "ignored."
        ),
    )

    @model_validator(mode="after")
    def _leave_training_data(self) -> SplitSpec:
        if self.files is None and self.val + self.test >= 0.9:
            raise ValueError(f"val + test must leave at least 10% for training, got {self.val} + {self.test}")
        return self


class ClassSplitSpec(Strict):
    """How samples are divided for classification: given by a column or by files, or stratified seeded fractions."""

    val: float = Field(
        0.15,
        ge=0.0,
        lt=1.0,
        description="Fraction of each class held out for validation (ignored when `column` or `files` is given).",
    )
    test: float = Field(
        0.15,
        ge=0.0,
        lt=1.0,
        description="Fraction of each class held out for the final test (ignored when `column` or `files` is given).",
    )
    column: str | None = Field(
        None,
        description=(
            "A column that names each sample's part: `train`, `val` or `test` (a given split). Tables only; not with "
            "`files`."
        ),
    )
    files: SplitFilesSpec | None = Field(
        None,
        description=(
            "Given split: files (or folders of label folders) of the same form as `path` holding the validation and "
            "test samples; `path` then holds the training samples only, and the fractions are ignored. Not with "
            "`column`."
        ),
    )
    seed: int = Field(0, ge=0, description="Seed of the stratified shuffle that draws the fractions.")

    @model_validator(mode="after")
    def _leave_training_data(self) -> ClassSplitSpec:
        if self.column is not None and self.files is not None:
            raise ValueError(f"give the split as column or as files, not both; got column {self.column!r} and files")
        if self.column is None and self.files is None and self.val + self.test >= 0.9:
            raise ValueError(f"val + test must leave at least 10% for training, got {self.val} + {self.test}")
        return self


class CorpusSplitSpec(Strict):
    """How a corpus is divided for language modelling: contiguous stretches at its end, or given files."""

    val: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description=(
            "Fraction of the text (by characters, cut at a line break) after the training part, for validation."
        ),
    )
    test: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Fraction of the text (by characters, cut at a line break) at the end, for the final test.",
    )
    files: SplitFilesSpec | None = Field(
        None,
        description=(
            "Given split: text files (or folders) holding the validation and test parts; `path` is then the training "
            "part and the fractions are ignored."
        ),
    )

    @model_validator(mode="after")
    def _leave_training_data(self) -> CorpusSplitSpec:
        if self.files is None and self.val + self.test >= 0.9:
            raise ValueError(f"val + test must leave at least 10% for training, got {self.val} + {self.test}")
        return self
