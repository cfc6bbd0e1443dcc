"""The train step's cache key follows the code that decides what trains: a CLI-only change keeps every cached
training, a change to data preparation, the models or the training retrains.

Each test hashes a copy of the package with one file changed, so nothing here touches the real source.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from lstmflow.ops import steps
from tasks.policy import step_cache_key


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package as it is."""
    return _copy(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def edited(pristine: Path, tmp_path: Path) -> Path:
    """A copy of that copy, for a test to change."""
    return _copy(tmp_path, pristine)


def _copy(folder: Path, package: Path = steps.PACKAGE) -> Path:
    return Path(shutil.copytree(package, folder / "lstmflow", ignore=shutil.ignore_patterns("__pycache__")))


def _change_a_help_string(package: Path) -> Path:
    """Reword the first ``help=`` text of the CLI; returns the file changed."""
    for path in sorted((package / "cli").rglob("*.py")):
        source = path.read_text()
        if 'help="' in source:
            _write(path, source.replace('help="', 'help="Reworded: ', 1))
            return path
    raise AssertionError(f"no help string in {package / 'cli'}")


def _append_comment(path: Path) -> None:
    _write(path, path.read_text() + "\n# a changed line\n")


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    steps.source_hash.cache_clear()  # computed once per process and package: start afresh after an edit


def test_a_cli_help_string_keeps_the_code_version(pristine: Path, edited: Path) -> None:
    changed = _change_a_help_string(edited)
    assert changed.read_bytes() != (pristine / changed.relative_to(edited)).read_bytes()
    assert steps.code_version(edited) == steps.code_version(pristine)


@pytest.mark.parametrize(
    "module",
    [
        "ops/steps.py",  # operations
        "evaluation/__init__.py",
        "serving/__init__.py",
        "tracking/__init__.py",
        "config/__init__.py",  # what the config resolves to is in the spec hash
        "data/demo.py",  # the demo data builder: DVC hashes the data it writes
        "training/search.py",  # chooses a trial's values, which its spec holds
        "training/loggers.py",  # where metrics go
        "errors.py",
    ],
)
def test_code_that_does_not_decide_what_trains_keeps_the_code_version(
    pristine: Path, edited: Path, module: str
) -> None:
    _append_comment(edited / module)
    assert steps.code_version(edited) == steps.code_version(pristine)


@pytest.mark.parametrize(
    "module",
    [
        "training/fit.py",
        "training/checkpoint.py",
        "training/objectives.py",
        "training/launch.py",
        "training/distributed.py",
        "models/__init__.py",
        "data/__init__.py",  # data preparation
    ],
)
def test_a_change_to_what_trains_changes_the_code_version(pristine: Path, edited: Path, module: str) -> None:
    _append_comment(edited / module)
    assert steps.code_version(edited) != steps.code_version(pristine)


def test_the_compiled_lstm_source_and_a_new_training_module_change_the_code_version(
    pristine: Path, edited: Path
) -> None:
    _append_comment(edited / "models" / "csrc" / "lstm_cpu.cpp")
    with_kernel_change = steps.code_version(edited)
    assert with_kernel_change != steps.code_version(pristine)
    _write(edited / "training" / "schedules.py", '"""A new training module."""\n')
    assert steps.code_version(edited) != with_kernel_change


def test_the_data_stages_keep_their_own_versions(pristine: Path, edited: Path) -> None:
    """The features stage follows data preparation (the demo builder aside), the demo data stage its builder."""

    def features_version(package: Path) -> str:
        return steps.source_hash(("data",), ("data/demo.py",), package)

    def demo_version(package: Path) -> str:
        return steps.source_hash(("data/demo.py",), (), package)

    _append_comment(edited / "data" / "demo.py")
    assert features_version(edited) == features_version(pristine)
    assert demo_version(edited) != demo_version(pristine)
    _append_comment(edited / "data" / "__init__.py")
    assert features_version(edited) != features_version(pristine)


def test_the_train_steps_cache_key_survives_a_cli_change_and_not_a_training_change(
    pristine: Path, edited: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = SimpleNamespace(task=SimpleNamespace(name="train"))
    parameters = {"prepared": {"spec": {"name": "tiny", "train": {"epochs": 3}}, "features_md5": "f" * 32}}

    def key(package: Path) -> str:
        monkeypatch.setattr(steps, "PACKAGE", package)
        return step_cache_key(context, parameters)

    before = key(pristine)
    _change_a_help_string(edited)
    assert key(edited) == before
    _append_comment(edited / "training" / "fit.py")
    assert key(edited) != before
