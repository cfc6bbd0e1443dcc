"""Time series: read a table, check it, fit the preprocessing, and cut windows without look-ahead.

The data path, one module each:

- :mod:`~lstmflow.data.timeseries.read`: the table (or the three given files), checked cell by cell, and its season;
- :mod:`~lstmflow.data.timeseries.preprocessing`: the transform and scaler, fitted on the training rows only;
- :mod:`~lstmflow.data.timeseries.prepare`: the window, horizon and season resolved from the data, the split by
  time, and the feature folder written (:func:`prepare_features`) and loaded (:func:`load_features`);
- :mod:`~lstmflow.data.timeseries.windows`: the windows of each part as views of the series, batched in a seeded
  order.

The names other packages use are importable from here.
"""

from lstmflow.data.timeseries.prepare import (
    FEATURES_FORMAT,
    Features,
    load_features,
    part_ends,
    prepare_features,
    resolve_data,
    split_boundaries,
)
from lstmflow.data.timeseries.preprocessing import Preprocessing, auto_transform
from lstmflow.data.timeseries.read import infer_season, read_series
from lstmflow.data.timeseries.windows import EpochOrder, WindowSet

__all__ = [
    "FEATURES_FORMAT",
    "EpochOrder",
    "Features",
    "Preprocessing",
    "WindowSet",
    "auto_transform",
    "infer_season",
    "load_features",
    "part_ends",
    "prepare_features",
    "read_series",
    "resolve_data",
    "split_boundaries",
]
