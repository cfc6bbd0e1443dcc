"""PNG figures of a run: the test-period forecast, the confusion matrix and the loss curves.

Figures are drawn with matplotlib's object API on an Agg canvas made inside each function: no pyplot global state
and no GUI backend, so plotting is safe in worker threads and on headless machines, and importing this module
does not import matplotlib.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_PANELS = 4
FANS = 4  # full-horizon forecasts drawn per panel
DPI = 110
MAX_ANNOTATED_CLASSES = 30  # above this, cells are too small for their counts
MAX_LABEL_CHARS = 20


def plot_forecast(
    path: Path,
    times: Sequence[Any] | np.ndarray | None,
    actual: np.ndarray,
    forecast: np.ndarray,
    naive: np.ndarray | None = None,
    title: str = "",
    target_names: Sequence[str] | None = None,
    baseline: np.ndarray | None = None,
) -> Path:
    """The test period: the actual series, the 1-step-ahead forecasts, a few full-horizon fans, the naive forecast
    and the strong baseline's (AutoETS).

    ``actual``, ``forecast``, ``naive`` and ``baseline`` are the test windows in original units, shape
    (N, horizon, k), window
    ``i`` starting one step after window ``i - 1``; the test period they cover is N + horizon − 1 rows. ``times``
    labels those rows on the x axis; a longer sequence (the whole series' times) is cut to its last rows, as the
    test part ends the series. ``None`` numbers the test steps. One panel per target, at most four.
    """
    actual, forecast = _test_windows(actual, forecast)
    naive = None if naive is None else _same_windows("naive", naive, actual)
    baseline = None if baseline is None else _same_windows("baseline", baseline, actual)
    n_windows, horizon, n_targets = actual.shape
    names = list(target_names) if target_names is not None else [f"target {j}" for j in range(n_targets)]
    if len(names) != n_targets:
        raise ValueError(f"{len(names)} target names for {n_targets} targets")
    x, labels = _test_period_axis(times, rows=n_windows + horizon - 1)

    shown = min(n_targets, MAX_PANELS)
    fig = _figure(width=11.0, height=1.0 + 3.0 * shown)
    axes = fig.subplots(shown, 1, sharex=True, squeeze=False)[:, 0]
    fans = _fan_origins(n_windows, horizon)
    for j, ax in enumerate(axes):
        references = {
            label: array[..., j] for label, array in (("naive", naive), ("baseline", baseline)) if array is not None
        }
        _forecast_panel(ax, x, actual[..., j], forecast[..., j], references, names[j], fans)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    if labels is not None:
        _label_ticks(axes[-1], labels)
    axes[-1].set_xlabel("time" if times is not None else "test step")
    heading = title or "Forecast on the test period"
    if n_targets > shown:
        heading += f"  (first {shown} of {n_targets} targets)"
    fig.suptitle(heading, fontsize=12)
    if np.issubdtype(x.dtype, np.datetime64):
        fig.autofmt_xdate()
    return _save(fig, path)


def _test_windows(actual: np.ndarray, forecast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The actual and forecast windows as floats, checked to share one (N, horizon, k) shape with N >= 1."""
    actual = np.asarray(actual, dtype=float)
    if actual.ndim != 3 or actual.shape[0] == 0:
        raise ValueError(f"actual must be (N, horizon, k) with N >= 1, got shape {actual.shape}")
    return actual, _same_windows("forecast", forecast, actual)


def _same_windows(name: str, array: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """``array`` as floats, checked to have the windows' (N, horizon, k) shape."""
    array = np.asarray(array, dtype=float)
    if array.shape != actual.shape:
        raise ValueError(f"{name} has shape {array.shape}, actual {actual.shape}: both must be (N, horizon, k)")
    return array


#: How each reference forecast is drawn beside the model's (1 step ahead): its legend label and line style.
REFERENCE_LINES: dict[str, dict[str, Any]] = {
    "naive": {"label": "naive, 1 step ahead", "color": "tab:gray", "linestyle": "--"},
    "baseline": {"label": "AutoETS baseline, 1 step ahead", "color": "tab:green", "linestyle": ":"},
}


def _test_period_axis(times: Sequence[Any] | np.ndarray | None, rows: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(x positions, text labels or None) of the test period's ``rows`` rows.

    Dates and numbers are the positions themselves (matplotlib places them); text labels sit at integer positions.
    """
    if times is None:
        return np.arange(rows), None
    given = np.asarray(times)
    if len(given) < rows:
        raise ValueError(f"times has {len(given)} labels, the test windows cover {rows} rows")
    given = given[len(given) - rows :]
    if np.issubdtype(given.dtype, np.datetime64) or np.issubdtype(given.dtype, np.number):
        return given, None
    return np.arange(rows), given


def _fan_origins(n_windows: int, horizon: int) -> np.ndarray:
    """Up to ``FANS`` windows spread evenly over the test period, drawn over their full horizon; none when the
    horizon is one step, as the 1-step-ahead line already shows every such forecast."""
    if horizon == 1:
        return np.array([], dtype=int)
    return np.unique(np.linspace(0, n_windows - 1, min(FANS, n_windows)).round().astype(int))


def _forecast_panel(
    ax: Axes,
    x: np.ndarray,
    actual: np.ndarray,
    forecast: np.ndarray,
    references: dict[str, np.ndarray],
    name: str,
    fans: np.ndarray,
) -> None:
    """One target's panel from its (N, horizon) windows: the actual series, a full-horizon forecast from each origin
    in ``fans``, the 1-step-ahead lines of the model and of each reference (``naive``, ``baseline``), and every
    MAE in the title."""
    n_windows, horizon = actual.shape
    series = np.concatenate([actual[:, 0], actual[-1, 1:]])  # (N + horizon − 1,)
    ax.plot(x, series, color="black", linewidth=1.8, label="actual")
    for number, start in enumerate(fans):
        steps = x[start : start + horizon]
        ax.axvspan(steps[0], steps[-1], color="tab:orange", alpha=0.08, linewidth=0)
        ax.plot(
            steps,
            forecast[start],
            ".-",
            color="tab:orange",
            linewidth=1.4,
            markersize=5,
            label=f"forecast, all {horizon} steps, from {len(fans)} origins (shaded)" if number == 0 else None,
        )
    ax.plot(x[:n_windows], forecast[:, 0], color="tab:blue", linewidth=1.3, label="forecast, 1 step ahead")
    over = f"over all {horizon} steps" if horizon > 1 else "1 step ahead"
    scores = f"MAE {over}: model {_mae(forecast, actual):.4g}"
    for key, reference in references.items():
        ax.plot(x[:n_windows], reference[:, 0], linewidth=1.2, **REFERENCE_LINES[key])
        scores += f", {key} {_mae(reference, actual):.4g}"
    ax.set_title(f"{name}   ({scores})", fontsize=10, loc="left")
    ax.set_ylabel(f"{name} (original units)")
    ax.grid(alpha=0.3)


def _label_ticks(ax: Axes, labels: np.ndarray) -> None:
    """A few of the text ``labels`` under the x axis, each at its row's integer position."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    ax.xaxis.set_major_formatter(
        FuncFormatter(lambda value, _pos: str(labels[int(value)]) if 0 <= int(value) < len(labels) else "")
    )


def plot_confusion_matrix(path: Path, matrix: np.ndarray, class_names: Sequence[str], title: str = "") -> Path:
    """Test counts per (true, predicted) class, each cell coloured by its share of the true class's row.

    Colouring by row share (the recall along the diagonal) keeps a rare class as readable as a common one; the
    counts are written in the cells (up to 30 classes) and each row's total beside its label, so nothing is hidden
    by the normalisation. Labels longer than 20 characters lose their middle to an ellipsis.
    """
    matrix = np.asarray(matrix)
    n_classes = len(class_names)
    if n_classes == 0 or matrix.shape != (n_classes, n_classes):
        raise ValueError(
            f"matrix has shape {matrix.shape}, expected ({n_classes}, {n_classes}) for {n_classes} class names"
        )
    totals = matrix.sum(axis=1)
    share = np.divide(matrix, totals[:, None], out=np.zeros(matrix.shape), where=totals[:, None] > 0)
    names = [_shorten(str(name)) for name in class_names]

    side = min(max(2.2 + 0.36 * n_classes, 4.5), 13.0)
    fig = _figure(width=side + 2.2, height=side + 0.8)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class's samples")
    font = float(np.clip(240 / n_classes, 6.0, 11.0))
    if n_classes <= MAX_ANNOTATED_CLASSES:
        for (row, column), count in np.ndenumerate(matrix):
            if count == 0 and row != column and n_classes > 10:
                continue  # off-diagonal zeros only clutter a large matrix
            ax.text(
                column,
                row,
                f"{count:,}",
                ha="center",
                va="center",
                fontsize=font,
                color="white" if share[row, column] > 0.55 else "black" if count else "0.6",
            )
    rotation = 0 if n_classes <= 6 and max(map(len, names)) <= 8 else 45
    ax.set_xticks(
        range(n_classes),
        names,
        rotation=rotation,
        ha="right" if rotation else "center",
        rotation_mode="anchor",
        fontsize=font,
    )
    ax.set_yticks(range(n_classes), [f"{name} ({total:,})" for name, total in zip(names, totals)], fontsize=font)
    ax.set_xlabel("predicted", fontsize=11)
    ax.set_ylabel("true (samples)", fontsize=11)
    ax.tick_params(length=0)
    ax.set_xticks(np.arange(n_classes + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n_classes + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0 if n_classes <= MAX_ANNOTATED_CLASSES else 0.0)
    ax.tick_params(which="minor", length=0)
    samples = int(totals.sum())
    accuracy = f"accuracy {np.trace(matrix) / samples:.3f} on {samples:,} samples" if samples else "no samples"
    ax.set_title(f"{title or 'Confusion matrix'}\n{accuracy}", fontsize=12)
    return _save(fig, path)


def plot_attention(path: Path, sentences: Sequence[tuple[list[str], list[str], np.ndarray]], title: str = "") -> Path:
    """One heat-map per sentence of the decoder's attention: a row per written token (its end mark last), a column
    per source token, each row's weights summing to 1. A good translator's map follows the words it translates."""
    if not sentences:
        raise ValueError("no sentence to plot")
    fig = _figure(width=4.2 * len(sentences), height=4.6)
    axes = np.atleast_1d(fig.subplots(1, len(sentences)))
    for ax, (source, written, weights) in zip(axes, sentences):
        if weights.shape != (len(written), len(source)):
            raise ValueError(f"weights of shape {weights.shape} for {len(written)} written and {len(source)} source")
        ax.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        font = float(np.clip(160 / max(len(source), len(written)), 5.0, 10.0))
        ax.set_xticks(range(len(source)), [_shorten(t) or "␣" for t in source], rotation=90, fontsize=font)
        ax.set_yticks(range(len(written)), [_shorten(t) or "␣" for t in written], fontsize=font)
        ax.set_xlabel("source")
        ax.tick_params(length=0)
    axes[0].set_ylabel("written")
    fig.suptitle(title or "Attention")
    return _save(fig, path)


def plot_error_by_length(path: Path, lengths: np.ndarray, errors: np.ndarray, title: str = "") -> Path:
    """Each test utterance's character error rate against its transcript's length (points), with the mean per
    length (a line): whether long utterances are where the model fails."""
    lengths, errors = np.asarray(lengths), np.asarray(errors, dtype=np.float64)
    if lengths.shape != errors.shape or lengths.size == 0:
        raise ValueError(f"need one error per length, got shapes {lengths.shape} and {errors.shape}")
    fig = _figure(width=7.0, height=4.2)
    ax = fig.subplots()
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, lengths.size)  # points of one length side by side
    ax.scatter(lengths + jitter, errors, s=10, alpha=0.4, color="tab:blue", label="one utterance")
    steps = np.unique(lengths)
    ax.plot(steps, [errors[lengths == n].mean() for n in steps], color="tab:red", marker="o", label="mean")
    ax.set_xlabel("transcript length (characters)")
    ax.set_ylabel("character error rate")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    ax.set_title(f"{title or 'Character error rate by length'}\nmean {errors.mean():.3f} over {errors.size} utterances")
    return _save(fig, path)


def plot_loss_curves(path: Path, history: list[dict[str, Any]], loss_label: str = "loss (scaled units)") -> Path:
    """Training and validation loss per epoch, the best epoch marked, and the learning rate below when logged.

    ``history`` rows look like ``{"epoch": 3, "train_loss": .., "val_loss": .., "lr": ..}``; a missing or None
    value is skipped. The loss axis is logarithmic when the values span more than two decades; ``loss_label``
    names it (a forecaster's loss is on scaled values, a classifier's is cross-entropy).
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    epochs = np.array([row["epoch"] for row in history], dtype=float)
    train, val, lr = (np.array([_number(row.get(key)) for row in history]) for key in ("train_loss", "val_loss", "lr"))
    has_lr = bool(np.isfinite(lr).any())

    fig = _figure(width=9.0, height=6.0 if has_lr else 4.5)
    if has_lr:
        loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        loss_ax, lr_ax = fig.subplots(1, 1), None
    for values, label, color in ((train, "train loss", "tab:blue"), (val, "validation loss", "tab:orange")):
        seen = np.isfinite(values)
        if seen.any():
            marker = "o" if seen.sum() <= 30 else None
            loss_ax.plot(epochs[seen], values[seen], color=color, marker=marker, markersize=3, label=label)

    judged, judged_name = (val, "validation") if np.isfinite(val).any() else (train, "train")
    if np.isfinite(judged).any():
        best = int(np.nanargmin(judged))
        loss_ax.axvline(epochs[best], color="tab:green", linestyle=":", linewidth=1.2)
        loss_ax.plot(
            epochs[best],
            judged[best],
            "*",
            color="tab:green",
            markersize=14,
            label=f"best epoch {epochs[best]:g}: {judged_name} {judged[best]:.4g}",
        )
    losses = np.concatenate([train, val])
    positive = losses[np.isfinite(losses) & (losses > 0)]
    if positive.size and positive.max() / positive.min() > 100:
        loss_ax.set_yscale("log")
    loss_ax.set_ylabel(loss_label)
    loss_ax.set_title("Loss per epoch", fontsize=12)
    loss_ax.grid(alpha=0.3, which="both")
    loss_ax.legend(fontsize=9)
    if lr_ax is not None:
        seen = np.isfinite(lr)
        lr_ax.plot(epochs[seen], lr[seen], color="tab:purple")
        positive_lr = lr[seen & (lr > 0)]
        if positive_lr.size and positive_lr.max() / positive_lr.min() > 10:
            lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate")
        lr_ax.grid(alpha=0.3, which="both")
    (lr_ax or loss_ax).set_xlabel("epoch")
    (lr_ax or loss_ax).xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def preload() -> None:
    """Import matplotlib and draw a small figure with text (fonts load on a process's first drawing): called while a
    training child runs, the run's plots after it cost that much less."""
    fig = _figure(2, 1)
    fig.suptitle("lstmflow")
    fig.add_subplot().plot([0, 1], [0, 1])
    fig.savefig(io.BytesIO(), format="png")


def _figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas, outside pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _shorten(label: str) -> str:
    """Cut the middle out of a long label: class names often differ only at the end (``sensor_a_12``)."""
    if len(label) <= MAX_LABEL_CHARS:
        return label
    tail = (MAX_LABEL_CHARS - 1) // 2
    return label[: MAX_LABEL_CHARS - 1 - tail] + "…" + label[-tail:]


def _mae(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.nanmean(np.abs(predicted - actual)))


def _number(value: Any) -> float:
    """A history value as a float; None (not logged that epoch) becomes NaN."""
    return math.nan if value is None else float(value)
