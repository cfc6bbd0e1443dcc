"""The served model under bad and hostile requests: every one is refused with its status and one named line.

One project holds a forecast, a text, an audio and an image pipeline, each prepared, fitted for one epoch and saved
as the pyfunc that registration logs (without the tracking store: what is served is the same). Requests go through
MLflow's own scoring-server app in this process (FastAPI's test client; ``mlflow models serve`` runs this app), so
each case costs milliseconds; tests/test_serve.py sends a few of them to real servers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import make_project
from PIL import Image
from test_serve import PIPELINES as SERVED_PIPELINES

PIPELINES = (
    SERVED_PIPELINES
    + """\
  digits:
    task: classify
    data: {kind: images, path: data/digits, grayscale: true}
    model: {layers: [{lstm: {units: 8}}, {dense: {activation: softmax}}]}
"""
)
NAMES = ("tiny", "agents", "chirps", "digits")


@dataclass
class Served:
    """A saved pyfunc, loaded, and MLflow's scoring app around it."""

    model: Any
    client: Any

    def post(self, body: Any, content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        answer = self.client.post("/invocations", content=data, headers={"Content-Type": content_type})
        try:
            return answer.status_code, answer.json()
        except ValueError:
            return answer.status_code, {"message": answer.text}


def save_pyfunc(root: Path, name: str) -> Path:
    """Features, a one-epoch fit and the bundle as the flow writes them, saved as the pyfunc registration logs."""
    import mlflow
    from mlflow.models import infer_signature

    from lstmflow.config import Config
    from lstmflow.data.kinds import build_features
    from lstmflow.ops.probe import probe
    from lstmflow.serving.predictors import write_bundle
    from lstmflow.training.fit import fit
    from lstmflow.training.loggers import ListLogger

    spec = probe(Config.load(root / "pipelines.yaml").pipeline(name, []), root)
    features = root / "features" / name
    build_features(
        spec.data, spec.evaluate.season, features, f"pipelines.{name}.data", cache_dir=root / ".lstmflow" / "cache"
    )
    result = fit(spec, features, root / "runs" / name, ListLogger(), progress=False)
    bundle = root / "runs" / name / "bundle"
    predictor, example = write_bundle(spec.model_dump(mode="json"), features, Path(result.model_path), bundle)
    package = Path(__import__("lstmflow").__file__).parent
    mlflow.pyfunc.save_model(
        str(root / "models" / name),
        python_model=str(package / "tracking" / "pyfunc_model.py"),
        artifacts={"bundle": str(bundle)},
        signature=infer_signature(example, predictor.predict(example)),
    )
    return root / "models" / name


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lstmflow.data.demo import _agent_texts, build_audio_demo

    root = make_project(tmp_path_factory.mktemp("hardening") / "project", PIPELINES)
    _agent_texts(texts_per_class=12).to_csv(root / "data" / "agents.csv", index=False)
    build_audio_demo(root / "data" / "chirps", clips_per_class=6, seconds=(0.3, 0.5))
    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        (root / "data" / "digits" / label).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 255, (8, 8)).astype(np.uint8)
            Image.fromarray(pixels).save(root / "data" / "digits" / label / f"{i}.png")
    for name in NAMES:
        save_pyfunc(root, name)
    return root


@pytest.fixture(scope="module")
def served(project: Path) -> Iterator[dict[str, Served]]:
    import mlflow
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    servers = {}
    for name in NAMES:
        model = mlflow.pyfunc.load_model(str(project / "models" / name))
        servers[name] = Served(model, TestClient(scoring_server.init(model), raise_server_exceptions=False))
    yield servers


def refused(answer: dict[str, Any], status: int, expected: int, *messages: str) -> None:
    """A refusal: its status, one line naming the problem, no stack trace and not the request echoed back."""
    assert status == expected, (status, answer)
    message = answer["message"]
    assert "stack_trace" not in answer and "Traceback" not in message, answer
    assert "\n" not in message and "Failed to predict data" not in message, message
    for text in messages:
        assert text in message, (text, message)


def records(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"dataframe_records": list(rows)}


def series(value: Any, at: int = 23) -> dict[str, Any]:
    return records(*({"value": value if i == at else 10.0 + i % 12} for i in range(24)))


def pixels(**changed: Any) -> dict[str, Any]:
    return {**{f"pixel_{i}": float(i) for i in range(64)}, **changed}


# ------------------------------------------------------------- the body, before MLflow parses it


def test_a_deeply_nested_body_is_a_400_not_a_crash(served: dict[str, Served]) -> None:
    status, answer = served["tiny"].post(b"[" * 100_000)
    refused(answer, status, 400, "nests 100000 levels deep", "at most 16", "LSTMFLOW_SERVE_MAX_DEPTH")
    status, answer = served["agents"].post(b'{"dataframe_records": [{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}]}")
    refused(answer, status, 400, "nests 5003 levels deep")
    assert served["tiny"].post(series(12.0))[0] == 200, "the server keeps serving"


def test_the_bounds_are_set_by_environment_variables(
    served: dict[str, Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LSTMFLOW_SERVE_MAX_DEPTH", "3")
    assert served["tiny"].post(series(12.0))[0] == 200, "a table of records nests 3 deep"
    status, answer = served["agents"].post(records({"text": ["the cat"]}))
    refused(answer, status, 400, "nests 4 levels deep", "at most 3")
    monkeypatch.setenv("LSTMFLOW_SERVE_MAX_BYTES", "100")
    status, answer = served["tiny"].post(series(12.0))
    refused(answer, status, 413, "bytes; this server takes at most 100 (LSTMFLOW_SERVE_MAX_BYTES)")
    monkeypatch.delenv("LSTMFLOW_SERVE_MAX_BYTES")
    monkeypatch.setenv("LSTMFLOW_SERVE_MAX_ROWS", "5")
    status, answer = served["tiny"].post(series(12.0))
    refused(answer, status, 400, "has 24 rows; this model takes at most 5", "LSTMFLOW_SERVE_MAX_ROWS")


def test_a_bad_bound_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from lstmflow.errors import ConfigError
    from lstmflow.serving.limits import limits

    for value in ("lots", "0", "-3"):
        monkeypatch.setenv("LSTMFLOW_SERVE_MAX_BYTES", value)
        with pytest.raises(ConfigError, match=f"LSTMFLOW_SERVE_MAX_BYTES={value!r}: give a positive whole number"):
            limits()
    monkeypatch.setenv("LSTMFLOW_SERVE_MAX_BYTES", "1_000_000")
    assert limits().max_bytes == 1_000_000


def test_nesting_is_read_without_parsing() -> None:
    from lstmflow.serving.limits import json_depth

    assert json_depth(b"[]") == 1 and json_depth(b"{}") == 1 and json_depth(b"7") == 0
    assert json_depth(b'{"dataframe_split": {"data": [[1, 2]]}}') == 4
    assert json_depth(b'{"text": "[[[[{{{{ \\" [[[["}') == 1, (
        "brackets inside strings (escaped quotes too) do not count"
    )


# ------------------------------------------------------------- values


SERIES_VALUES = {  # value sent in the last row, what the message says
    "infinity": (float("inf"), "column 'value', row 23: inf (not finite)"),
    "minus infinity": (float("-inf"), "column 'value', row 23: -inf (not finite)"),
    "NaN": (float("nan"), "column 'value', row 23: a missing value (NaN)"),
    "null": (None, "column 'value', row 23: a missing value (NaN)"),
    "true": (True, "column 'value', row 23: true is not a value this model takes"),
    "false": (False, "column 'value', row 23: false is not a value this model takes"),
    "too large for the scaler": (1e308, "cannot take (too large"),
    "text": ("n/a", "could not convert string to float: 'n/a'"),
}


@pytest.mark.parametrize("case", list(SERIES_VALUES))
def test_a_series_value_that_is_not_a_finite_number_is_refused(served: dict[str, Served], case: str) -> None:
    value, message = SERIES_VALUES[case]
    status, answer = served["tiny"].post(series(value))
    refused(answer, status, 400, message)


def test_true_false_is_named_in_a_split_table_too(served: dict[str, Served]) -> None:
    body = {"dataframe_split": {"columns": ["value"], "data": [[1.0]] * 23 + [[True]]}}
    refused(*reversed(served["tiny"].post(body)), 400, "column 'value', row 23: true")


PIXELS = {
    "NaN pixel": (pixels(pixel_3=float("nan")), "column 'pixel_3', row 0: a missing value (NaN)"),
    "null pixel": (pixels(pixel_5=None), "column 'pixel_5', row 0: a missing value (NaN)"),
    "infinite pixel": (pixels(pixel_0=float("inf")), "column 'pixel_0', row 0: inf (not finite)"),
    "true/false pixel": (pixels(pixel_9=True), "column 'pixel_9', row 0: true"),
    "missing pixel column": ({k: v for k, v in pixels().items() if k != "pixel_63"}, "lacks column(s) ['pixel_63']"),
}


@pytest.mark.parametrize("case", list(PIXELS))
def test_a_pixel_that_is_not_a_finite_number_is_refused(served: dict[str, Served], case: str) -> None:
    row, message = PIXELS[case]
    rows = [row] if case == "missing pixel column" else [pixels(), row]  # else a missing cell of row 1
    status, answer = served["digits"].post(records(*rows))
    refused(answer, status, 400, message.replace("row 0", "row 1"))


TEXTS = {
    "a list": ([1, 2], "must hold text in every sample; got 0: list"),
    "a mapping": ({"a": 1}, "got 0: dict"),
    "a number": (5, "got 0: int"),
    "null": (None, "got 0: a missing value"),
}


@pytest.mark.parametrize("case", list(TEXTS))
def test_a_text_of_the_wrong_type_gets_one_line_not_a_stack_trace(served: dict[str, Served], case: str) -> None:
    value, message = TEXTS[case]
    refused(*reversed(served["agents"].post(records({"text": value}))), 400, message)


def test_mlflow_s_own_refusals_are_one_line_without_the_request(served: dict[str, Served]) -> None:
    cases = [
        ("tiny", records(*[{"sales": 1.0}] * 36), 400, "missing inputs ['value']"),
        ("tiny", {"rows": [1.0]}, 400, "exactly one of the input fields"),
        ("agents", b"the cat chased the dog", 400, "valid JSON"),
        ("tiny", {"dataframe_split": {"columns": ["value"], "data": [[1.0, 2.0]] * 36}}, 400, "1 columns passed"),
    ]
    for name, body, expected, message in cases:
        refused(*reversed(served[name].post(body)), expected, message)
        assert "IMPORTANT" not in served[name].post(body)[1]["message"]


def test_a_failure_inside_the_model_is_a_one_line_500(
    served: dict[str, Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = served["tiny"].model.unwrap_python_model().predictor

    def broken(frame: pd.DataFrame) -> pd.DataFrame:
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(predictor, "predict", broken)
    status, answer = served["tiny"].post(series(12.0))
    refused(answer, status, 500, "the model failed on this request (RuntimeError: a bug over two lines)")


def test_generation_settings_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from lstmflow.serving.predictors import BadRequest, Generator

    generator = Generator.__new__(Generator)  # the checks run before the model: no model needed
    for row, message in (
        ({"prompt": 5}, "column 'prompt', row 0: an int is not text"),
        ({"prompt": "a", "tokens": 10**9}, "column 'tokens', row 0: 1000000000; give a whole number from 0 to 10000"),
        ({"prompt": "a", "tokens": -1}, "from 0 to 10000"),
        ({"prompt": "a", "tokens": 2.5}, "column 'tokens', row 0: 2.5"),
        ({"prompt": "a", "tokens": "many"}, "column 'tokens', row 0: a str is not a number"),
        ({"prompt": "a", "temperature": float("inf")}, "column 'temperature', row 0: inf is not a finite number"),
        ({"prompt": "a", "temperature": -1.0}, "give a number >= 0"),
        ({"prompt": "a", "seed": -4}, "column 'seed', row 0: -4"),
    ):
        with pytest.raises(BadRequest, match=message.replace("(", r"\(")):
            generator.predict(pd.DataFrame([row]))
    monkeypatch.setenv("LSTMFLOW_SERVE_MAX_TOKENS", "50")
    with pytest.raises(BadRequest, match="from 0 to 50"):
        generator.predict(pd.DataFrame([{"prompt": "a", "tokens": 51}]))


def test_wide_sequences_allow_empty_cells_but_not_infinity() -> None:
    from lstmflow.serving.predictors import BadRequest
    from lstmflow.serving.request_checks import numbers

    frame = pd.DataFrame({"step_0": [1.0, 2.0], "step_1": [3.0, None]})
    assert np.isnan(numbers(frame, ["step_0", "step_1"], allow_missing=True)[1, 1])
    with pytest.raises(BadRequest, match="column 'step_1', row 1: a missing value"):
        numbers(frame, ["step_0", "step_1"])
    with pytest.raises(BadRequest, match="column 'step_0', row 1: inf"):
        numbers(frame.assign(step_0=[1.0, float("inf")]), ["step_0", "step_1"], allow_missing=True)
    with pytest.raises(BadRequest, match="column 'step_1', row 0: 'x' is not a number"):
        numbers(pd.DataFrame({"step_1": ["x"]}), ["step_1"])


# ------------------------------------------------------------- files: images by path, and only inside the data


def test_the_image_model_takes_paths_as_documented(served: dict[str, Served], project: Path) -> None:
    image = project / "data" / "digits" / "b" / "3.png"
    status, answer = served["digits"].post(records({"path": str(image)}))
    assert status == 200, answer
    assert answer["predictions"][0]["label"] in {"a", "b", "c"}
    flat = np.asarray(Image.open(image), dtype=np.float64).reshape(-1)
    by_pixels = {f"pixel_{i}": v for i, v in enumerate(flat)}
    status, mixed = served["digits"].post(records({"path": str(image)}, by_pixels))  # a path and pixels, row by row
    assert status == 200, mixed
    assert mixed["predictions"][0]["prob_a"] == pytest.approx(mixed["predictions"][1]["prob_a"], abs=1e-6)
    wrong = project / "data" / "digits" / "wrong-size.png"
    Image.fromarray(np.zeros((9, 8), dtype=np.uint8)).save(wrong)
    refused(*reversed(served["digits"].post(records({"path": str(wrong)}))), 400, "is 8x9 pixels; this model reads 8x8")


OUTSIDE = ["/etc/passwd", "/etc/shadow", "/no/such/file.wav", "../../../../../../etc/hostname", "~/x.wav", "/"]


@pytest.mark.parametrize("kind", ["chirps", "digits"])
def test_a_path_outside_the_data_folder_is_refused_alike_whether_it_exists_or_not(
    served: dict[str, Served], project: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    opened: list[str] = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, *a, **k: opened.append(str(file)) or real_open(file, *a, **k))
    link = project / "data" / kind / "link.wav"
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/passwd")
    messages = set()
    for path in [*OUTSIDE, str(link), str(project / "pipelines.yaml")]:
        status, answer = served[kind].post(records({"path": path}))
        refused(answer, status, 400, "is not a file this model may read", "LSTMFLOW_SERVE_ROOTS")
        messages.add(answer["message"].replace(repr(path), "PATH"))
    link.unlink()
    assert len(messages) == 1, messages
    assert not [name for name in opened if name.startswith("/etc")], opened


def test_inside_the_data_folder_a_missing_or_undecodable_file_is_named(
    served: dict[str, Served], project: Path
) -> None:
    folder = project / "data" / "chirps"
    (folder / "noise.wav").write_bytes(b"RIFF not a wave file" * 20)
    cases = {
        str(folder / "noise.wav"): "noise.wav': not readable as audio",
        str(folder / "nope.wav"): "nope.wav': no such file",
        str(folder / "rising"): "is not a regular file",
        "": "a str is not a file path",
    }
    for path, message in cases.items():
        refused(*reversed(served["chirps"].post(records({"path": path}))), 400, message)
    (folder / "noise.wav").unlink()
    status, answer = served["chirps"].post(records({"path": str(folder / "rising" / "000.wav")}))
    assert status == 200, answer


def test_the_allowed_folders_are_configurable_and_old_bundles_still_load(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from lstmflow.serving.files import ROOTS_KEY
    from lstmflow.serving.predictors import BadRequest, load_predictor

    clip = project / "data" / "chirps" / "rising" / "001.wav"
    elsewhere = tmp_path / "uploads"
    elsewhere.mkdir()
    shutil.copy(clip, elsewhere / "clip.wav")
    request = pd.DataFrame({"path": [str(elsewhere / "clip.wav")]})
    bundle = project / "runs" / "chirps" / "bundle"
    assert json.loads((bundle / "features.json").read_text())[ROOTS_KEY] == [
        os.path.realpath(project / "data" / "chirps")
    ]

    monkeypatch.setenv("LSTMFLOW_SERVE_ROOTS", f"{tmp_path / 'nothing'}{os.pathsep}{elsewhere}")
    predictor = load_predictor(bundle)
    assert len(predictor.predict(request)) == 1
    with pytest.raises(BadRequest, match="is not a file this model may read; .*set by LSTMFLOW_SERVE_ROOTS"):
        predictor.predict(pd.DataFrame({"path": [str(clip)]}))  # the variable replaces the recorded folder
    monkeypatch.setenv("LSTMFLOW_SERVE_ROOTS", "")
    with pytest.raises(BadRequest, match="not a file this model may read"):
        load_predictor(bundle).predict(request)

    monkeypatch.delenv("LSTMFLOW_SERVE_ROOTS")
    old = Path(shutil.copytree(bundle, tmp_path / "old-bundle"))
    info = json.loads((old / "features.json").read_text())
    del info[ROOTS_KEY]  # as bundles registered before the folder was recorded
    (old / "features.json").write_text(json.dumps(info))
    predictor = load_predictor(old)
    with pytest.raises(BadRequest, match="this model recorded none: set LSTMFLOW_SERVE_ROOTS to the folders"):
        predictor.predict(pd.DataFrame({"path": [str(clip)]}))
    predictor.allow_files_under(elsewhere)  # as `lstmflow predict` adds the current directory
    assert len(predictor.predict(request)) == 1
    monkeypatch.setenv("LSTMFLOW_SERVE_ROOTS", str(project / "data"))
    assert len(load_predictor(old).predict(pd.DataFrame({"path": [str(clip)]}))) == 1

    from lstmflow.serving.predictors import Classifier

    monkeypatch.setenv("LSTMFLOW_SERVE_ROOTS", "")  # nothing allowed to requests, yet the gate scores an old champion
    predictor = load_predictor(old)
    requests = Classifier.requests(predictor.spec, project / "features" / "chirps", "test")
    assert len(predictor.predict(requests.frame)) == len(requests.keys) > 0


def test_predict_s_request_of_image_files_is_answered(
    served: dict[str, Served], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lstmflow.serving.predict import request_table
    from lstmflow.tracking import runs

    monkeypatch.chdir(project / "data" / "digits")
    model = served["digits"].model
    request = request_table(runs.served_predictor(model).spec, ["a/1.png", "c/2.png"])
    answer = runs.predict(model, request, "models:/digits/1")
    assert len(answer) == 2 and set(answer["label"]) <= {"a", "b", "c"}
