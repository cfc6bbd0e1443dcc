"""A catalogue of bad input: every case exits 2 with one message naming the key, path or value, and no traceback.

Each case writes a small project holding good data of every kind, spoils one thing (the config, a ``--set``, a data
file, the model's shapes) and runs a command in this process through the typer app, the way ``lstmflow`` runs it;
the project's files must be the same afterwards (no MLflow store, no features, no runs). The served model's request
checks are called directly. A hypothesis fuzzer then throws generated ``pipelines.yaml`` contents and ``--set``
values at loading and the probe: anything but lstmflow's own errors fails it. ``HYPOTHESIS_PROFILE=thorough`` runs
thousands of examples instead of the default suite's few hundred.
"""

from __future__ import annotations

import os
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile
import yaml
from conftest import REPO, run_lstmflow, write_sine_csv
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from lstmflow.errors import LstmflowError

settings.register_profile(
    "default-suite", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.register_profile(
    "thorough", max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default-suite"))

#: One pipeline per data kind, each valid on the data that :func:`write_data` writes.
PIPELINES: dict[str, Any] = {
    "defaults": {"train": {"epochs": 1, "batch_size": 8, "seed": 0}},
    "pipelines": {
        "series": {
            "data": {"path": "data/tiny.csv", "time_column": "month", "target": "value", "window": 24, "horizon": 6},
            "model": {"layers": [{"lstm": {"units": 4}}, {"dense": {}}]},
            "evaluate": {"season": 12},
        },
        "seq": {
            "task": "classify",
            "data": {"kind": "sequences", "path": "data/seq.csv", "format": "wide"},
            "model": {"layers": [{"lstm": {"units": 4}}, {"dense": {"activation": "softmax"}}]},
        },
        "texts": {
            "task": "classify",
            "data": {"kind": "text", "path": "data/texts.csv"},
            "model": {
                "layers": [{"embedding": {"dim": 4}}, {"lstm": {"units": 4}}, {"dense": {"activation": "softmax"}}]
            },
        },
        "lm": {
            "task": "language_model",
            "data": {"kind": "corpus", "path": "data/corpus.txt", "sequence_length": 8},
            "model": {
                "layers": [
                    {"embedding": {"dim": 4}},
                    {"lstm": {"units": 4, "return_sequences": True}},
                    {"dense": {"activation": "softmax"}},
                ]
            },
        },
        "clips": {
            "task": "classify",
            "data": {"kind": "audio", "path": "data/clips", "n_mels": 8, "workers": 1},
            "model": {"layers": [{"lstm": {"units": 4}}, {"dense": {"activation": "softmax"}}]},
        },
        "pics": {
            "task": "classify",
            "data": {"kind": "images", "path": "data/pics"},
            "model": {"layers": [{"lstm": {"units": 4}}, {"dense": {"activation": "softmax"}}]},
        },
    },
}
KINDS = {
    "series": "timeseries",
    "seq": "sequences",
    "texts": "text",
    "lm": "corpus",
    "clips": "audio",
    "pics": "images",
}


def write_data(root: Path) -> None:
    """Small good data of every kind under ``root / "data"``."""
    data = root / "data"
    write_sine_csv(data / "tiny.csv")
    rng = np.random.default_rng(0)
    rows = [[label, *(np.cumsum(rng.normal(sign, 1, 6)).round(3))] for label, sign in [("up", 1), ("down", -1)] * 8]
    pd.DataFrame(rows, columns=["label", *(f"t{i}" for i in range(6))]).to_csv(data / "seq.csv", index=False)
    texts = [(f"the {w} cat sat on the mat", label) for w, label in [("red", "a"), ("blue", "b")] * 8]
    pd.DataFrame(texts, columns=["text", "label"]).to_csv(data / "texts.csv", index=False)
    (data / "corpus.txt").write_text("the cat sat on the mat. a dog ran to the log.\n" * 20)
    t = np.arange(3200) / 16000
    for label, hz in (("low", 300.0), ("high", 2000.0)):
        for i in range(3):
            (data / "clips" / label).mkdir(parents=True, exist_ok=True)
            soundfile.write(
                data / "clips" / label / f"c{i}.wav", (0.5 * np.sin(2 * np.pi * hz * t)).astype("f4"), 16000
            )
            (data / "pics" / label).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (5, 6)).astype(np.uint8)
            Image.fromarray(pixels).save(data / "pics" / label / f"p{i}.png")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-input") / "template"
    root.mkdir()
    write_data(root)
    (root / "pipelines.yaml").write_text(yaml.safe_dump(PIPELINES, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    return root


@pytest.fixture
def project(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "project"))


def edit_pipelines(root: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Rewrite pipelines.yaml after ``change`` edited its mapping in place."""
    tree = yaml.safe_load((root / "pipelines.yaml").read_text())
    change(tree)
    (root / "pipelines.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))


def pipeline(tree: dict[str, Any], name: str) -> dict[str, Any]:
    return tree["pipelines"][name]


def snapshot(root: Path) -> dict[str, Any]:
    """Every file under ``root`` with its size and modification time (logs aside), and the MLflow runs and model
    versions (a command that only reads the store may create its empty database)."""
    files = {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("mlflow.db") and p.suffix != ".log"
    }
    if not (root / "mlflow.db").exists():
        return {**files, "runs": [], "versions": 0}
    from conftest import mlflow_client

    client = mlflow_client(root)
    runs = [run.info.run_id for run in client.search_runs(client.search_experiments()[0].experiment_id)]
    return {**files, "runs": runs, "versions": len(client.search_model_versions())}


@dataclass(frozen=True)
class Outcome:
    code: int
    output: str
    traceback: str | None


def invoke(root: Path, *args: str) -> Outcome:
    """``lstmflow ARGS --config root/pipelines.yaml`` in this process, with the exit codes of ``lstmflow.cli.main``;
    ``run`` in a process of its own, since it sets Prefect's environment up for the process before it probes."""
    from typer.testing import CliRunner

    if args[0] == "run":
        done = run_lstmflow(root, *args, "--config", str(root / "pipelines.yaml"))
        return Outcome(done.returncode, done.stdout + done.stderr, done.stderr if "Traceback" in done.stderr else None)

    from lstmflow.cli import app

    result = CliRunner().invoke(app, [*args, "--config", str(root / "pipelines.yaml")])
    exc = result.exception
    if isinstance(exc, LstmflowError):
        return Outcome(exc.exit_code, result.output + f"error: {exc}", None)
    if exc is not None and not isinstance(exc, SystemExit):
        return Outcome(1, result.output, "".join(traceback.format_exception(exc)))
    return Outcome(result.exit_code, result.output, None)


# ------------------------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Case:
    """A spoilt project: ``spoil`` edits it, ``args`` is the command, ``named`` what the one message must say."""

    spoil: Callable[[Path], Any]
    named: tuple[str, ...]
    args: tuple[str, ...] = ("validate",)
    code: int = 2
    marks: tuple[Any, ...] = field(default=())


def config(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    return lambda root: edit_pipelines(root, change)


def text(path: str, content: str | bytes) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)

    return write


def both(*spoils: Callable[[Path], Any]) -> Callable[[Path], None]:
    def spoil(root: Path) -> None:
        for one in spoils:
            one(root)

    return spoil


def set_data(name: str, **keys: Any) -> Callable[[Path], None]:
    return config(lambda tree: pipeline(tree, name)["data"].update(keys))


def set_layers(name: str, *layers: dict[str, Any]) -> Callable[[Path], None]:
    return config(lambda tree: pipeline(tree, name)["model"].__setitem__("layers", list(layers)))


def noop(root: Path) -> None:
    """Nothing spoilt: the command's arguments are the bad input."""


def sequences_with(column: str, values: list[str]) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        table = pd.read_csv(root / "data" / "seq.csv")
        table[column] = (values * len(table))[: len(table)]
        table.to_csv(root / "data" / "seq.csv", index=False)

    return write


def series_value(row: int, value: str) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        lines = (root / "data" / "tiny.csv").read_text().splitlines()
        month = lines[row].split(",")[0]
        lines[row] = f"{month},{value}"
        (root / "data" / "tiny.csv").write_text("\n".join(lines) + "\n")

    return write


def manifest(rows: list[tuple[str, str, str]]) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        frame = pd.DataFrame(rows, columns=["path", "label", "part"])
        frame.to_csv(root / "data" / "clips.csv", index=False)
        edit_pipelines(
            root, lambda tree: pipeline(tree, "clips")["data"].update(path="data/clips.csv", split={"column": "part"})
        )

    return write


#: `run` starts in a process of its own, a few seconds.
SLOW = (pytest.mark.slow,)
LSTM, SOFTMAX = {"lstm": {"units": 4}}, {"dense": {"activation": "softmax"}}
CLIPS = [(f"clips/{label}/c{i}.wav", label) for label in ("low", "high") for i in range(3)]

CASES: dict[str, Case] = {
    # ----- the file
    "yaml syntax": Case(text("pipelines.yaml", "pipelines: {series: [\n"), ("not valid YAML",)),
    "top level a list": Case(text("pipelines.yaml", "- a\n- b\n"), ("top level must be a mapping",)),
    "no pipelines": Case(text("pipelines.yaml", "defaults: {}\n"), ("pipelines",)),
    "empty pipelines": Case(text("pipelines.yaml", "pipelines: {}\n"), ("pipelines",)),
    "unknown top-level key": Case(config(lambda t: t.update(pipeline={})), ("pipeline", "unknown key")),
    "duplicate pipeline name": Case(
        lambda root: (root / "pipelines.yaml").write_text(
            (root / "pipelines.yaml").read_text() + "  series:\n    data: {path: data/tiny.csv, target: value}\n"
        ),
        ("duplicate key 'series'", "line"),
    ),
    "duplicate key in a pipeline": Case(
        text(
            "pipelines.yaml",
            "pipelines:\n  s:\n    data: {path: data/tiny.csv, target: value}\n"
            "    model: {layers: [lstm: {units: 4}, dense: {}]}\n    data: {path: data/other.csv, target: value}\n",
        ),
        ("duplicate key 'data'", "line 3", "line 5"),
    ),
    "yaml anchors to nowhere": Case(text("pipelines.yaml", "pipelines: {a: *nothing}\n"), ("not valid YAML",)),
    "pipeline not a mapping": Case(config(lambda t: t["pipelines"].update(series=[1, 2])), ("pipelines.series",)),
    "defaults not a mapping": Case(config(lambda t: t.update(defaults=[1])), ("defaults",)),
    "no config file": Case(lambda root: (root / "pipelines.yaml").unlink(), ("no pipelines file",)),
    "unknown pipeline": Case(noop, ("no pipeline named 'serie'", "did you mean 'series'"), ("validate", "serie")),
    # ----- keys and values
    "unknown key with a hint": Case(
        config(lambda t: pipeline(t, "series").update(trian={})), ("pipelines.series.trian", "did you mean 'train'")
    ),
    "negative units": Case(
        set_layers("series", {"lstm": {"units": -4}}, {"dense": {}}),
        ("pipelines.series.model.layers[0].lstm.units", "got -4"),
    ),
    "epochs a word": Case(config(lambda t: t["defaults"]["train"].update(epochs="ten")), ("train.epochs", "'ten'")),
    "unknown task": Case(
        config(lambda t: pipeline(t, "seq").update(task="classification")), ("did you mean 'classify'",)
    ),
    "bad transform": Case(set_data("series", transform="log+log"), ("data.transform", "'log+log'")),
    "no layers": Case(set_layers("series"), ("model.layers",)),
    "unknown layer": Case(set_layers("series", {"gru": {"units": 4}}, {"dense": {}}), ("model.layers[0]", "gru")),
    "split fractions too big": Case(
        set_data("series", split={"val": 0.6, "test": 0.6}), ("pipelines.series.data.split",)
    ),
    "kind image": Case(set_data("pics", kind="image"), ("pipelines.pics.data", "'image'", "did you mean 'images'")),
    "keys of another kind": Case(
        config(lambda t: pipeline(t, "seq")["data"].pop("kind")),
        ("pipelines.seq.data", "belong to kind: sequences"),
    ),
    "long sequences without ids": Case(set_data("seq", format="long"), ("id_column", "value_columns")),
    "negative window": Case(set_data("series", window=-3), ("data.window", "got -3")),
    "lr a list": Case(
        config(lambda t: pipeline(t, "series").update(train={"optimizer": {"lr": [1, 2]}})), ("train.optimizer.lr",)
    ),
    # ----- --set
    "set unparsable value": Case(
        noop, ("--set train.epochs=[1,", "not valid YAML"), ("validate", "series", "--set", "train.epochs=[1,")
    ),
    "set python tag": Case(
        noop,
        ("--set train.epochs=!!python/name:os.system",),
        ("validate", "series", "--set", "train.epochs=!!python/name:os.system"),
    ),
    "set reserved character": Case(
        noop, ("--set train.epochs=@5",), ("validate", "series", "--set", "train.epochs=@5")
    ),
    "set without equals": Case(noop, ("bad override 'train.epochs'",), ("validate", "series", "--set", "train.epochs")),
    "set bad key": Case(noop, ("bad key 'train..epochs'",), ("validate", "series", "--set", "train..epochs=3")),
    "set missing item": Case(
        noop,
        ("--set model.layers[7].lstm.units=3", "no item [7]"),
        ("validate", "series", "--set", "model.layers[7].lstm.units=3"),
    ),
    "set negative epochs": Case(
        noop, ("train.epochs", "got -1", "--set train.epochs=-1"), ("validate", "series", "--set", "train.epochs=-1")
    ),
    "set into a number": Case(noop, ("--set train.epochs.x=1",), ("validate", "series", "--set", "train.epochs.x=1")),
    "set a section to a number": Case(
        noop, ("pipelines.series.train", "--set train=5"), ("validate", "series", "--set", "train=5")
    ),
    "set kind image": Case(noop, ("did you mean 'images'",), ("validate", "pics", "--set", "data.kind=image")),
    "set on run": Case(noop, ("--set train.epochs={a",), ("run", "series", "--set", "train.epochs={a"), marks=SLOW),
    "set on summary": Case(noop, ("--set train.epochs=-2",), ("summary", "series", "--set", "train.epochs=-2")),
    # ----- series
    "zero-byte csv": Case(text("data/tiny.csv", b""), ("pipelines.series.data.path", "tiny.csv", "empty")),
    "header only": Case(text("data/tiny.csv", "month,value\n"), ("tiny.csv", "no data rows")),
    "corrupt parquet": Case(
        both(text("data/tiny.parquet", b"PAR1 this is not parquet"), set_data("series", path="data/tiny.parquet")),
        ("pipelines.series.data.path", "tiny.parquet", "not a readable Parquet file"),
    ),
    "binary csv": Case(text("data/tiny.csv", bytes(range(256)) * 4), ("pipelines.series.data.path", "tiny.csv")),
    "ragged csv": Case(
        text("data/tiny.csv", "month,value\n2000-01,1\n2000-02,2,3,4\n"), ("pipelines.series.data.path", "line 3")
    ),
    "wrong suffix": Case(set_data("series", path="data/corpus.txt"), ("must be a .csv or .parquet",)),
    "missing file": Case(set_data("series", path="data/tinny.csv"), ("pipelines.series.data.path", "tinny.csv")),
    "missing column": Case(set_data("series", target="price"), ("no column(s) ['price']",)),
    "word in a value": Case(series_value(5, "abc"), ("line 6", "'abc'")),
    "infinite value": Case(series_value(5, "inf"), ("line 6", "'inf'")),
    "absurd value": Case(series_value(5, "1e300"), ("line 6", "1e+300", "max_abs_value")),
    "duplicate time": Case(
        text("data/tiny.csv", "month,value\n2000-01,1\n2000-01,2\n2000-02,3\n"), ("duplicate timestamp",)
    ),
    "time going back": Case(
        text("data/tiny.csv", "month,value\n2000-02,1\n2000-01,2\n2000-03,3\n"), ("strictly increasing",)
    ),
    "leading empty cells": Case(series_value(1, ""), ("starts with 1 empty cell",)),
    "series too short": Case(
        lambda root: write_sine_csv(root / "data" / "tiny.csv", rows=20), ("pipelines.series.data",)
    ),
    "typo inside the DVC-built folder": Case(
        both(text("data/raw/sunspots.csv", "a\n"), set_data("series", path="data/raw/sunspot.csv")),
        ("data/raw/sunspot.csv", "stage 'demo_data'", "not in it", "did you mean 'sunspots.csv'"),
    ),
    "validation file missing": Case(
        set_data("series", split={"files": {"test": "data/nothere.csv"}}), ("split.files.test", "nothere.csv")
    ),
    # ----- sequences
    "sequences zero-byte": Case(text("data/seq.csv", ""), ("pipelines.seq.data.path", "seq.csv", "empty")),
    "sequences missing label column": Case(set_data("seq", label_column="class"), ("no column(s) ['class']",)),
    "sequences word in a step": Case(
        lambda root: (root / "data" / "seq.csv").write_text(
            (root / "data" / "seq.csv").read_text().replace("\nup,", "\nup,oops", 1)
        ),
        ("pipelines.seq.data", "oops"),
    ),
    "sequences split values unknown": Case(
        both(sequences_with("part", ["train", "holdout"]), set_data("seq", split={"column": "part"})),
        ("split.column", "'holdout'", "train, val or test"),
    ),
    "sequences corrupt parquet": Case(
        both(text("data/seq.parquet", b"\x00" * 64), set_data("seq", path="data/seq.parquet")),
        ("pipelines.seq.data.path", "seq.parquet"),
    ),
    "sequences one class": Case(sequences_with("label", ["up"]), ("pipelines.seq.data", "class")),
    # ----- text
    "text zero-byte": Case(text("data/texts.csv", ""), ("pipelines.texts.data.path", "texts.csv")),
    "text not utf-8": Case(text("data/texts.csv", b"text,label\n\xff\xfe oops,a\n"), ("not UTF-8",)),
    "text ragged row": Case(text("data/texts.csv", "text,label\nhello, world,a\n"), ("line 2", "quote texts")),
    "text missing column": Case(set_data("texts", text_column="body"), ("pipelines.texts.data", "'body'")),
    "text bad jsonl": Case(
        both(
            text("data/texts.jsonl", '{"text": "a", "label": "x"}\n{oops\n'), set_data("texts", path="data/texts.jsonl")
        ),
        ("texts.jsonl", "line 2"),
    ),
    # ----- corpus
    "corpus empty": Case(text("data/corpus.txt", ""), ("pipelines.lm.data", "corpus.txt")),
    "corpus not utf-8": Case(text("data/corpus.txt", b"\xff\xfe\xfa"), ("pipelines.lm.data", "UTF-8")),
    "corpus folder without txt": Case(
        both(text("data/books/readme.md", "x"), set_data("lm", path="data/books")), ("pipelines.lm.data", "books")
    ),
    # ----- audio
    "audio empty folder": Case(
        both(lambda root: (root / "data" / "noclips").mkdir(), set_data("clips", path="data/noclips")),
        ("pipelines.clips.data.path", "noclips"),
        ("validate", "clips"),
    ),
    "audio missing folder": Case(set_data("clips", path="data/clip"), ("pipelines.clips.data.path", "clip")),
    "audio manifest split unknown": Case(
        manifest([(p, label, "holdout") for p, label in CLIPS]), ("split.column", "'holdout'")
    ),
    "audio manifest missing file": Case(
        both(
            manifest([(p, label, "train") for p, label in CLIPS] + [("clips/x.wav", "low", "test")]),
            set_data("clips", bad_files="fail"),
        ),
        ("x.wav",),
    ),
    "audio not audio": Case(
        both(text("data/clips/low/c0.wav", "not a wave"), set_data("clips", bad_files="fail")), ("c0.wav",)
    ),
    # ----- images
    "images not images": Case(
        both(text("data/pics/low/p0.png", "not a png"), text("data/pics/low/p1.png", "nor this")), ("p0.png",)
    ),
    "images of two sizes": Case(
        lambda root: Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "data" / "pics" / "low" / "p0.png"),
        ("pipelines.pics.data", "p0.png"),
    ),
    "images table without shape": Case(
        both(text("data/pixels.csv", "label,p0,p1\na,1,2\nb,3,4\n"), set_data("pics", path="data/pixels.csv")),
        ("pipelines.pics.data.shape",),
    ),
    "images one label": Case(
        lambda root: shutil.rmtree(root / "data" / "pics" / "high"), ("pipelines.pics.data", "class")
    ),
    # ----- the model's shapes, on the prepared data
    "last dense of the wrong size": Case(
        set_layers("series", LSTM, {"dense": {"units": 3}}), ("pipelines.series.model.layers[1]", "6")
    ),
    "lstm after an lstm without return_sequences": Case(
        set_layers("series", LSTM, LSTM, {"dense": {}}), ("pipelines.series.model.layers[1]", "return_sequences")
    ),
    "classifier's dense of the wrong size": Case(
        set_layers("seq", LSTM, {"dense": {"units": 5, "activation": "softmax"}}),
        ("pipelines.seq.model.layers[1]", "2"),
    ),
    "language model without return_sequences": Case(
        set_layers("lm", {"embedding": {"dim": 4}}, LSTM, SOFTMAX), ("pipelines.lm.model", "return_sequences")
    ),
    "shape error on run": Case(
        set_layers("series", LSTM, {"dense": {"units": 3}}),
        ("pipelines.series.model.layers[1]",),
        ("run", "series"),
        marks=SLOW,
    ),
    "shape error on images": Case(
        set_layers("pics", LSTM, LSTM, SOFTMAX), ("pipelines.pics.model.layers[1]", "return_sequences")
    ),
    # ----- predict
    "predict an unknown pipeline": Case(noop, ("no registered model 'nothing'",), ("predict", "nothing", "1")),
    "predict before any run": Case(
        noop, ("no registered model 'series'", "lstmflow run series"), ("predict", "series", "1")
    ),
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=case.marks) for name, case in CASES.items()])
def test_bad_input_is_named_once_and_changes_nothing(project: Path, name: str) -> None:
    case = CASES[name]
    case.spoil(project)
    before = snapshot(project)
    outcome = invoke(project, *case.args)
    assert outcome.traceback is None, outcome.traceback
    assert "Traceback" not in outcome.output, outcome.output
    assert outcome.code == case.code, outcome.output
    message = outcome.output[outcome.output.index("error: ") :]
    for part in case.named:
        assert part in message, (part, message)
    assert message.count("error: ") == 1, message
    assert snapshot(project) == before


#: Bad requests to the served model, checked before anything reads them: (the check, its input, what it must name).
REQUESTS: dict[str, tuple[str, Any, str]] = {
    "body too large": ("check_body", b" " * (16 * 1024 * 1024 + 1), "LSTMFLOW_SERVE_MAX_BYTES"),
    "nested too deep": ("check_body", b"[" * 100_000, "levels deep"),
    "too many rows": ("check_rows", 10**9, "rows"),
    "a boolean value": ("check_no_booleans", b'{"dataframe_records": [{"value": true}]}', "'value'"),
    "a NaN value": ("numbers", pd.DataFrame({"value": [1.0, float("nan")]}), "'value'"),
    "a word value": ("numbers", pd.DataFrame({"value": [1.0, "one"]}), "'one'"),
    "an infinite value": ("numbers", pd.DataFrame({"value": [float("inf")]}), "finite"),
    "a missing column": ("require_columns", pd.DataFrame({"other": [1]}), "'value'"),
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_bad_requests_are_refused_with_one_line(name: str) -> None:
    from lstmflow.serving import limits, request_checks

    check, value, named = REQUESTS[name]
    function = getattr(limits, check, None) or getattr(request_checks, check)
    with pytest.raises(request_checks.BadRequest) as caught:
        function(value, ["value"]) if check in ("numbers", "require_columns") else function(value)
    assert named in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        (["abc"], "'abc'"),
        (["1", "{table}"], "mix tables"),
        ([], "at least one INPUT"),
        (["missing.csv"], "missing.csv"),
    ],
)
def test_bad_predict_inputs_are_named(template: Path, inputs: list[str], named: str) -> None:
    from lstmflow.config import Config
    from lstmflow.errors import DataError
    from lstmflow.serving.predict import request_table

    spec = Config.load(template / "pipelines.yaml").pipeline("series")
    with pytest.raises(DataError, match=named):
        request_table(spec, [text.format(table=template / "data" / "tiny.csv") for text in inputs], ["value"])


# ------------------------------------------------------------------------------ what must not be refused


def test_validate_of_one_pipeline_ignores_problems_in_another(project: Path) -> None:
    edit_pipelines(project, lambda tree: pipeline(tree, "seq").update(trian={}))
    assert invoke(project, "validate", "series").code == 0
    everything = invoke(project, "validate")
    assert everything.code == 2 and "pipelines.seq.trian" in everything.output


def test_validate_applies_set_and_builds_the_model_on_the_data(project: Path) -> None:
    assert invoke(project, "validate", "series", "--set", "model.layers[0].lstm.units=100000").code == 0
    wrong = invoke(project, "validate", "--set", "train.epochs=0")
    assert wrong.code == 2 and "(from --set train.epochs=0)" in wrong.output


def test_a_text_longer_than_the_csv_field_limit_is_read(project: Path) -> None:
    table = pd.read_csv(project / "data" / "texts.csv")
    table.loc[0, "text"] = "word " * 60_000  # 300 KB in one cell; Python's csv module stops at 128 KB by default
    table.to_csv(project / "data" / "texts.csv", index=False)
    outcome = invoke(project, "validate", "texts")
    assert outcome.code == 0, outcome.output


def test_a_manifest_may_spell_its_parts_out(project: Path) -> None:
    parts = ["training", "training", "validation", "testing"] * 2
    manifest([(path, label, part) for (path, label), part in zip(CLIPS, parts)])(project)
    outcome = invoke(project, "validate", "clips")
    assert outcome.code == 0, outcome.output


def test_a_large_value_passes_once_the_bound_is_raised(project: Path) -> None:
    series_value(5, "5e13")(project)
    assert invoke(project, "validate", "series").code == 2
    set_data("series", max_abs_value=1e14)(project)
    assert invoke(project, "validate", "series").code == 0


# ------------------------------------------------------------------------------------------- the fuzzer

#: Keys the fuzzer sets, in every section and at the edges of lists; a few that do not exist.
KEYS = [
    "task", "description", "data", "data.kind", "data.path", "data.target", "data.window", "data.horizon",
    "data.time_column", "data.split", "data.split.val", "data.split.test", "data.split.column", "data.split.files",
    "data.split.files.test", "data.scale", "data.transform", "data.max_abs_value", "data.format", "data.label_column",
    "data.tokenizer", "data.tokenizer.kind", "data.tokenizer.vocab_size", "data.sequence_length", "data.n_mels",
    "data.shape", "data.max_length", "model", "model.layers", "model.layers[0]", "model.layers[0].lstm",
    "model.layers[0].lstm.units", "model.layers[0].lstm.return_sequences", "model.layers[1]",
    "model.layers[1].dense.units", "model.l2", "train", "train.epochs", "train.batch_size", "train.optimizer.lr",
    "train.seed", "train.workers", "train.early_stopping.patience", "evaluate.season", "search", "promote",
    "schedule", "nothing", "data.nothing",
]  # fmt: skip

#: Text values near the ones pipelines.yaml takes, and some that go where they should not.
WORDS = [
    "",
    "auto",
    "none",
    "images",
    "image",
    "sequences",
    "log+difference",
    "data/tiny.csv",
    "../../etc/passwd",
    "softmax",
    "train",
    "1e300",
    "nan",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["units", "lstm", "dense", "kind", "x"]), inner, max_size=3),
    ),
    max_leaves=6,
)
PLAUSIBLE_WORDS = [
    "timeseries",
    "sequences",
    "text",
    "corpus",
    "audio",
    "images",
    "classify",
    "forecast",
    "language_model",
    "wide",
    "long",
    "label",
    "value",
    "month",
    "char",
    "bpe",
    "word",
]
#: Values a user might well write: most pass the config and reach the data and the model's shapes.
PLAUSIBLE = st.one_of(
    st.integers(min_value=-2, max_value=40),
    st.floats(min_value=0.0, max_value=1.0),
    st.sampled_from(PLAUSIBLE_WORDS),
    st.booleans(),
)


def checked(root: Path, text: str, name: str | None, overrides: list[str]) -> None:
    """Load ``text`` as pipelines.yaml, apply ``overrides`` and probe: only lstmflow's own errors may come out."""
    from lstmflow.config import Config
    from lstmflow.ops.probe import probe

    path = root / "fuzz.yaml"
    path.write_text(text)
    try:
        config = Config.load(path)
        for one in [name] if name else config.names:
            probe(config.pipeline(one, overrides), root)
        event("accepted")
    except LstmflowError as exc:
        event(f"refused: {type(exc).__name__}")


@given(
    name=st.sampled_from(list(KINDS)),
    changes=st.lists(st.tuples(st.sampled_from(KEYS), st.one_of(PLAUSIBLE, VALUES)), min_size=1, max_size=3),
)
def test_fuzzed_pipelines_raise_only_lstmflow_errors(template: Path, name: str, changes: list[Any]) -> None:
    from lstmflow.config import set_key

    tree = {**PIPELINES, "pipelines": {name: PIPELINES["pipelines"][name]}}
    for key, value in changes:
        try:
            tree["pipelines"][name] = set_key(tree["pipelines"][name], key, value, "fuzz")
        except LstmflowError:
            pass
    checked(template, yaml.safe_dump(tree, allow_unicode=True), name, [])


@given(name=st.sampled_from(list(KINDS)), key=st.sampled_from(KEYS), value=st.text(max_size=20))
def test_fuzzed_set_values_raise_only_lstmflow_errors(template: Path, name: str, key: str, value: str) -> None:
    checked(template, yaml.safe_dump(PIPELINES), name, [f"{key}={value}"])


@given(text=st.text(alphabet=st.sampled_from(list("pipelines:defaults {}[]-,&*!|>'\"#\n\t 0123:?%@`")), max_size=60))
@example(text="? -")  # a list as a mapping's key: once a TypeError of the duplicate-key check
def test_fuzzed_yaml_text_raises_only_lstmflow_errors(template: Path, text: str) -> None:
    checked(template, text, None, [])


#: Cells of a fuzzed CSV: numbers of every size, dates, words, quotes and separators.
CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.sampled_from(["", "2000-01", "2000-13", "up", "down", "train", "testing", '"', ",", "nan", "1e400", " "]),
    st.text(max_size=6),
)


@given(
    name=st.sampled_from(["series", "seq"]),
    rows=st.lists(st.lists(CELLS, min_size=1, max_size=8), min_size=0, max_size=40),
    header=st.sampled_from(["month,value", "label,t0,t1,t2,t3,t4,t5", "value", ""]),
)
def test_fuzzed_tables_raise_only_lstmflow_errors(
    template: Path, name: str, rows: list[list[str]], header: str
) -> None:
    table = template / "data" / "fuzz.csv"
    table.write_text(header + "\n" + "".join(",".join(row) + "\n" for row in rows))
    checked(template, yaml.safe_dump(PIPELINES), name, ["data.path=data/fuzz.csv"])
