"""Models registered before the core moved into packages still load, with the current code, and answer the same.

The fixtures in ``tests/fixtures/old_models`` were trained, logged and registered by the lstmflow of commit bb9f6ce
(``make.py`` there remakes them): their python_model file imports ``lstmflow.tracking.serving.LstmflowModel``, their
bundles hold that code's spec and preprocessing, and ``expected.json`` its answer to the logged input example. The
copy of the old package MLflow logs beside a model is left out of them, so nothing but this checkout can serve them.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "old_models"
PACKAGE = Path(__file__).resolve().parents[1] / "lstmflow"


@pytest.mark.parametrize("name", ["forecaster", "classifier"])
def test_a_model_registered_before_the_move_loads_and_answers_as_it_did(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from lstmflow.tracking.serving import LstmflowModel

    monkeypatch.setattr(sys, "path", list(sys.path))  # MLflow puts the model's code folder first: undone after
    model_dir = Path(shutil.copytree(FIXTURES / name, tmp_path / name))  # loading may write beside the model
    assert "lstmflow.tracking.serving import LstmflowModel" in (model_dir / "pyfunc_model.py").read_text()
    assert not (model_dir / "code").exists(), "no copy of the old package: the current code must serve it"

    model = mlflow.pyfunc.load_model(str(model_dir))
    wrapper = model.unwrap_python_model()
    assert isinstance(wrapper, LstmflowModel)
    served_by = Path(sys.modules[type(wrapper.predictor).__module__].__file__ or "").resolve()
    assert served_by.is_relative_to(PACKAGE), f"served by {served_by}, not by this checkout's lstmflow"

    example = json.loads((model_dir / "input_example.json").read_text())
    answer = model.predict(pd.DataFrame(example["data"], columns=example["columns"]))
    expected = pd.read_json(model_dir / "expected.json", orient="split")
    pd.testing.assert_frame_equal(answer.reset_index(drop=True), expected, check_dtype=False, rtol=1e-5)
