"""Building the compiled LSTM: every way the build can fail falls back to the PyTorch loop with one warning per
process and the same results, and the build is keyed on what is built, so a second checkout reuses it.

The fallback cases run in a fresh Python each (the build is tried once per process) and none of them compiles.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lstmflow.models import kernel_build

REPO = Path(__file__).resolve().parents[1]
HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None

#: Run in a fresh interpreter: break the build as ``mode`` says, run the layers on the CPU, report as JSON.
FALLBACK_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings

    mode = sys.argv[1]
    if mode == "cpp_extension does not import":  # e.g. setuptools missing
        sys.modules["torch.utils.cpp_extension"] = None
    import torch

    if mode == "the library does not load":
        import torch.utils.cpp_extension

        def load(*args, **kwargs):
            raise ImportError("undefined symbol: lstmflow_test")
        torch.utils.cpp_extension.load = load
    torch.set_num_threads(1)
    warnings.simplefilter("always")  # every warning is recorded, not only the first from each place

    from lstmflow.config import ModelSpec
    from lstmflow.models.fast_lstm import FastLSTM, PythonKernels
    from lstmflow.models.lstm import build_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(0)
        fast, loop = FastLSTM(3, 8), FastLSTM(3, 8, compiled=False)
        loop.load_state_dict(fast.state_dict())
        reference = torch.nn.LSTM(3, 8, batch_first=True)
        reference.load_state_dict(fast.state_dict())
        x = torch.randn(4, 6, 3)  # (B, T, I)
        outputs = [fast(x)[0] for _ in range(3)]  # the build is tried once, however often the layer runs
        spec = ModelSpec.model_validate({"layers": [{"lstm": {"units": 5}}, {"dense": {"units": 2}}]})
        kernels = {}
        for kernel in ("auto", "lstmflow"):
            model = build_model(spec, 3, None, lstm_kernel=kernel)
            model(x, torch.tensor([6, 5, 6, 4])).sum().backward()  # a padded training batch
            kernels[kernel] = model.lstm_kernels_trained()
    print(json.dumps({
        "warnings": [str(warning.message) for warning in caught],
        "kernels_used": fast.kernels(x.device) is PythonKernels,
        "same_as_the_loop": all(torch.equal(out, loop(x)[0]) for out in outputs),
        "gap_to_nn_lstm": float((outputs[0] - reference(x)[0]).abs().max()),
        "trained_with": kernels,
    }))
    """
)

FAILURES = {
    "no compiler": {"CXX": "/nonexistent/c++"},
    "the compiler fails": {"CXX": "false"},  # torch's version probe raises CalledProcessError
    "cpp_extension does not import": {},
    "the library does not load": {"CXX": "true"},  # any command on PATH: the load is replaced
}


@pytest.mark.parametrize("mode", FAILURES, ids=list(FAILURES))
def test_a_failed_build_falls_back_to_the_pytorch_loop_with_one_warning(mode: str, tmp_path: Path):
    env = {**os.environ, "LSTMFLOW_EXTENSIONS_DIR": str(tmp_path / "extensions"), **FAILURES[mode]}
    command = [sys.executable, "-c", FALLBACK_SCRIPT, mode]
    run = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.splitlines()[-1])
    assert len(report["warnings"]) == 1, report["warnings"]
    assert report["warnings"][0].startswith("FastLSTM: ") and kernel_build.FALLBACK in report["warnings"][0]
    assert report["kernels_used"] and report["same_as_the_loop"]
    assert report["gap_to_nn_lstm"] <= 1e-5
    # auto keeps nn.LSTM without the compiled recurrence; lstmflow, chosen explicitly, runs its loop
    assert report["trained_with"] == {"auto": ["torch"], "lstmflow": ["lstmflow-loop"]}


def test_the_build_folder_does_not_depend_on_where_the_source_sits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    here = kernel_build.build_directory()
    checkout = tmp_path / "other-checkout" / "csrc"
    checkout.mkdir(parents=True)
    shutil.copy(kernel_build.SOURCE, checkout / kernel_build.SOURCE.name)
    monkeypatch.setattr(kernel_build, "SOURCE", checkout / kernel_build.SOURCE.name)
    assert kernel_build.build_directory() == here
    (checkout / kernel_build.SOURCE.name).write_text("// changed\n")
    assert kernel_build.build_directory() != here


def test_the_ninja_package_is_put_on_path_for_the_build_only(monkeypatch: pytest.MonkeyPatch):
    """``.venv/bin/python`` without an activated environment: ninja sits in the scripts folder, off PATH."""
    ninja = pytest.importorskip("ninja")
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    monkeypatch.setenv("PATH", "/nowhere")
    with kernel_build._ninja_on_path():
        assert os.environ["PATH"].split(os.pathsep) == ["/nowhere", ninja.BIN_DIR]
    assert os.environ["PATH"] == "/nowhere"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
def test_a_second_checkout_reuses_the_built_extension(tmp_path: Path):
    """A copy of the package elsewhere (another clone, a registered model's logged code) loads the build that this
    checkout made, without compiling: the build file names the source's copy in the content-keyed cache folder."""
    assert kernel_build.compiled_kernels() is not None  # built here (about a minute the first time) or cached
    build_dir = kernel_build.build_directory()
    built = {path.name: path.stat().st_mtime_ns for path in build_dir.iterdir() if path.suffix in {".o", ".so"}}
    assert len(built) == 2
    log = (build_dir / ".ninja_log").read_bytes()

    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "lstmflow", checkout / "lstmflow", ignore=shutil.ignore_patterns("__pycache__"))
    script = (
        "import warnings; warnings.simplefilter('error')\n"
        "from lstmflow.models import kernel_build\n"
        "assert kernel_build.compiled_kernels() is not None\n"
        "print(kernel_build.SOURCE, kernel_build.build_directory(), sep='\\n')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    command = [sys.executable, "-c", script]
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    source, used = run.stdout.split()
    assert Path(source) == checkout / "lstmflow" / "models" / "csrc" / "lstm_cpu.cpp"  # the copy ran
    assert Path(used) == build_dir
    assert {path: (build_dir / path).stat().st_mtime_ns for path in built} == built  # nothing compiled or linked
    assert (build_dir / ".ninja_log").read_bytes() == log  # ninja ran no command
