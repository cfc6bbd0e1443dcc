"""Labelled sequences of different lengths: read a table, divide it into parts, scale, store ragged, batch by length.

The data path, one module each:

- :mod:`~lstmflow.data.sequences.read`: a long or wide table (or three given files), every bad cell named;
- :mod:`~lstmflow.data.sequences.preprocessing`: truncation and per-feature scaling, fitted on the training part;
- :mod:`~lstmflow.data.sequences.prepare`: the ragged store, written (:func:`write_sequences`, also by the text,
  image and audio kinds) and loaded (:func:`load_sequences`);
- :mod:`~lstmflow.data.sequences.batches`: one part's batches, padded to their own longest sequence and bucketed
  by length.

Which part each sample belongs to is decided in :mod:`lstmflow.data.parts`, shared by every kind. The names other
packages use are importable from here; the batching ones load torch, so they are imported when first asked for: a
DVC stage's process that only builds features (a second of torch's import in a new project's first run) never does.
"""

from typing import TYPE_CHECKING, Any

from lstmflow.data.parts import PARTS, Part, assign_parts
from lstmflow.data.sequences.prepare import (
    SEQUENCES_FORMAT,
    SequenceFeatures,
    load_sequences,
    prepare_sequence_features,
    write_sequences,
)
from lstmflow.data.sequences.preprocessing import SequencePreprocessing
from lstmflow.data.sequences.read import SequenceTable, read_sequence_table

if TYPE_CHECKING:
    from lstmflow.data.sequences.batches import POOL_BATCHES, SequenceBatch, SequenceSet

_BATCHING = ("POOL_BATCHES", "SequenceBatch", "SequenceSet")


def __getattr__(name: str) -> Any:
    if name in _BATCHING:
        from lstmflow.data.sequences import batches

        return getattr(batches, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PARTS",
    "POOL_BATCHES",
    "SEQUENCES_FORMAT",
    "Part",
    "SequenceBatch",
    "SequenceFeatures",
    "SequencePreprocessing",
    "SequenceSet",
    "SequenceTable",
    "assign_parts",
    "load_sequences",
    "prepare_sequence_features",
    "read_sequence_table",
    "write_sequences",
]
