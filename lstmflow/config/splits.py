"""How each kind of data is divided into training, validation and test parts: chronological fractions of a series,
stratified fractions of labelled samples, stretches at the end of a corpus, or given files."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

from pydantic import Field, model_validator

from lstmflow.config.base import Strict


class SplitFilesSpec(Strict):
    """A given split as files: `data.path` then holds the training part only (and the validation part when no
    `val` file is given)."""

    val: Path | None = Field(
        None,
        description=(
            "File (or folder) of the same form as `data.path` holding the validation part, relative to the YAML file. "
            "Default: none; the validation part is then drawn from the training file (`split.val` of it: stratified "
            "and seeded for labelled samples, the last stretch for a series or a corpus)."
        ),
    )
    test: Path = Field(
        description="File (or folder) of the same form as `data.path` holding the test part, relative to the YAML file."
    )


class SplitSpec(Strict):
    """Chronological parts of a series: validation then test at its end, by fractions, a test start, a number of
    test points, or given files that continue it."""

    val: float = Field(
        0.15,
        ge=0.0,
        lt=1.0,
        description=(
            "Fraction of the series (by time) used for validation, just before the test part. With `test_start`, "
            "`test_points` or a `files` entry without `val`, the fraction of the rows before the test part."
        ),
    )
    test: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description=(
            "Fraction of the series (by time) used for the final test, at the end. Give this, `test_start` or "
            "`test_points`, not two of them; default 0.15 when none is given (ignored when `files` is given)."
        ),
    )
    test_start: int | float | datetime | date | str | None = Field(
        None,
        description=(
            "Where the test part begins, instead of the `test` fraction: a time in the time column's type (a date "
            "such as 2019-01-01, or a number such as a year), the test part then starting at the first row at or "
            "after it; without a time column, the 0-based row number of the first test row. Default: none."
        ),
    )
    test_points: int | None = Field(
        None,
        gt=0,
        description=(
            "Number of rows at the end of the series held out for the test, instead of the `test` fraction (a "
            "published split's test length). Default: none."
        ),
    )
    files: SplitFilesSpec | None = Field(
        None,
        description=(
            "Given split: `path` holds the training series, the `val` file continues it in time and the `test` file "
            "continues the `val` file (or `path` when no `val` file is given: the last `val` fraction of `path` "
            "validates), with the same columns. The files are read as one series and split at their boundaries "
            "(windows may reach back into the previous part, as with fractions); `test`, `test_start` and "
            "`test_points` do not apply."
        ),
    )

    @model_validator(mode="after")
    def _one_test_part(self) -> SplitSpec:
        given = [
            f"{key} {getattr(self, key)!r}"
            for key in ("test", "test_start", "test_points")
            if getattr(self, key) is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give the test part one way: test, test_start or test_points; got {', '.join(given)}")
        if self.files is not None and (self.test_start is not None or self.test_points is not None):
            raise ValueError(f"give the test part as files or as {given[0]}, not both")
        if (
            self.files is None
            and self.test_start is None
            and self.test_points is None
            and self.val + self.test_fraction >= 0.9
        ):
            raise ValueError(f"val + test must leave at least 10% for training, got {self.val} + {self.test_fraction}")
        return self

    @property
    def test_fraction(self) -> float:
        """The `test` fraction in force: as given, else 0.15 (0 when the test part is given another way)."""
        if self.test is not None:
            return self.test
        return 0.15 if self.test_by_fraction else 0.0

    @property
    def test_by_fraction(self) -> bool:
        """Whether the test part is a fraction of the series (no files, test start or test points)."""
        return self.files is None and self.test_start is None and self.test_points is None


class ClassSplitSpec(Strict):
    """How samples are divided for classification: given by a column or by files, or stratified seeded fractions."""

    val: float = Field(
        0.15,
        ge=0.0,
        lt=1.0,
        description=(
            "Fraction of each class held out for validation. With `files` that name no `val` file (or a "
            "keyword-spotting folder without `validation_list.txt`), the fraction of each class of the training "
            "samples drawn for validation (stratified, seeded by `seed`, the drawn samples listed in the features' "
            "meta.json). Ignored when `column` is given."
        ),
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
            "Given split: files (or folders of label folders) of the same form as `path` holding the test samples "
            "and optionally the validation samples; `path` then holds the training samples (a `val` fraction of "
            "them validates when no `val` file is given), and `test` is ignored. Not with `column`."
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
            "Fraction of the text (by characters, cut at a line break) after the training part, for validation. With "
            "`files` that name no `val` file, the fraction at the end of the training text."
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
            "Given split: text files (or folders) holding the test part and optionally the validation part; `path` "
            "is then the training part (its last `val` fraction validates when no `val` file is given) and `test` "
            "is ignored."
        ),
    )

    @model_validator(mode="after")
    def _leave_training_data(self) -> CorpusSplitSpec:
        if self.files is None and self.val + self.test >= 0.9:
            raise ValueError(f"val + test must leave at least 10% for training, got {self.val} + {self.test}")
        return self
