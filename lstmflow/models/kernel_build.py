"""Building and loading the compiled LSTM recurrence (``csrc/lstm_cpu.cpp``) with the machine's C++ compiler.

The build runs on first use in a process, through ``torch.utils.cpp_extension`` (which needs setuptools and ninja,
both dependencies of lstmflow), into a cache folder keyed by what goes into the build: the source's content, the
torch build and the place it is installed (the build file names torch's headers and libraries by path), Python's
headers, the compiler, the flags and the CPU's instruction sets. The source is copied into that folder and built
from there, so every copy of the same source (another checkout, a registered model's logged code) reuses one build
instead of rebuilding it for its own path.

Whatever stops the build or the load (setuptools missing, no compiler or ninja, a compile error, a library that
does not load) falls back to the PyTorch loop, with one warning per process that says why.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import shutil
import sysconfig
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).resolve().parent / "csrc" / "lstm_cpu.cpp"
#: Where the compiled recurrence is cached, one folder per build (see the module); overridable for CI caches.
CACHE_ENV = "LSTMFLOW_EXTENSIONS_DIR"
#: What happens without the compiled recurrence, as its warning says.
FALLBACK = "lstmflow's LSTM runs its PyTorch loop instead (train.lstm_kernel auto keeps nn.LSTM)"
#: The compiler flags: ``-march=native`` is why the CPU's instruction sets are part of the cache key.
CFLAGS = ("-O3", "-march=native", "-fopenmp-simd")

_FIRST_CALL = threading.Lock()  # two threads asking at once still build once and warn once


def extension_cache_dir() -> Path:
    """``$LSTMFLOW_EXTENSIONS_DIR``, else ``$XDG_CACHE_HOME/lstmflow/extensions`` (``~/.cache`` by default)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lstmflow" / "extensions"


def build_directory() -> Path:
    """The cache folder of the build of :data:`SOURCE` in this environment: the same for every copy of the source."""
    signature = [
        hashlib.sha256(SOURCE.read_bytes()).hexdigest(),
        torch.__version__,
        str(Path(torch.__file__).resolve().parent),
        sysconfig.get_paths()["include"],
        _compiler(),
        " ".join(CFLAGS),
        _cpu_flags(),
    ]
    digest = hashlib.sha256("\n".join(signature).encode()).hexdigest()[:16]
    return extension_cache_dir() / f"lstm_cpu_{digest}"


def compiled_kernels() -> ModuleType | None:
    """The compiled recurrence, built on the first call of a process (a minute the first time on a machine, then
    loaded from the cache), or None when it cannot be had (one warning per process says why)."""
    with _FIRST_CALL:
        return _compiled_kernels_once()


@functools.cache
def _compiled_kernels_once() -> ModuleType | None:
    compiler = _compiler()
    if shutil.which(compiler) is None:
        reason = f"no C++ compiler ({compiler!r} not on PATH)"
    else:
        try:
            return _build_and_load()
        except Exception as error:  # noqa: BLE001 (each failure has one remedy, the PyTorch loop)
            reason = f"building {SOURCE.name} failed ({type(error).__name__}: {error})"
    warnings.warn(f"FastLSTM: {reason}; {FALLBACK}", stacklevel=3)  # at the caller of compiled_kernels
    return None


def _build_and_load() -> ModuleType:
    """Build the source's copy in its cache folder (ninja skips what is up to date) and import it."""
    from torch.utils.cpp_extension import load  # imports setuptools: only when a build is wanted

    build_dir = build_directory()
    build_dir.mkdir(parents=True, exist_ok=True)
    source = _copy_source(build_dir)
    with _ninja_on_path():
        module = load(
            name=f"lstmflow_{build_dir.name}", sources=[str(source)], build_directory=str(build_dir),
            extra_cflags=list(CFLAGS), verbose=False,
        )  # fmt: skip
    if not isinstance(module, ModuleType):
        raise TypeError(f"torch.utils.cpp_extension.load gave {module!r}, not a module")
    return module


def _copy_source(build_dir: Path) -> Path:
    """:data:`SOURCE` copied into ``build_dir``, written only when missing or different (a new file time would make
    ninja rebuild) and atomically (a concurrent build never reads half of it)."""
    copy = build_dir / SOURCE.name
    content = SOURCE.read_bytes()
    if not copy.is_file() or copy.read_bytes() != content:
        staging = build_dir / f"{SOURCE.name}.{os.getpid()}.tmp"
        staging.write_bytes(content)
        staging.replace(copy)
    return copy


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch runs ``ninja`` from PATH; the ninja package puts it beside this interpreter's scripts, which are not on
    PATH when the virtual environment is not activated (``.venv/bin/python ...``): add them for the build."""
    bin_dir = ""
    if shutil.which("ninja") is None:
        with contextlib.suppress(ImportError):
            import ninja

            bin_dir = ninja.BIN_DIR
    if not bin_dir:
        yield  # ninja on PATH already, or missing: torch then says so, and the caller falls back
        return
    path = os.environ.get("PATH")
    os.environ["PATH"] = os.pathsep.join(filter(None, [path, bin_dir]))
    try:
        yield
    finally:
        if path is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = path


def _compiler() -> str:
    """The C++ compiler torch builds with: ``$CXX``, else ``c++``."""
    return os.environ.get("CXX", "c++")


def _cpu_flags() -> str:
    """The CPU's instruction-set flags: the build uses ``-march=native``, so a cache shared between machines (a CI
    cache, a network home) keeps one build per kind of CPU."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return next((line for line in cpuinfo.splitlines() if line.startswith(("flags", "Features"))), "")
