"""Plots of stored runs (matplotlib, Agg, PNG): the optimization trajectory, the reliability diagram,
per-metric before/after bars, and the leaderboard's overview and ablation bar charts.

Owns turning journal rows and per-sample records into series and bins, and drawing them. Pure data
in, PNG files out (written through a temp file and ``os.replace``); it runs no model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tp_harness.files import atomic_path, content_key, memo_path

NUM_BINS = 10


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _atomic_save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically (:func:`tp_harness.store.journal.atomic_path`)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})


@functools.cache
def _drawing_version() -> tuple[str, str]:
    """What a memoized PNG depends on besides its data: this module's source and matplotlib's version."""
    import hashlib
    from importlib.metadata import version

    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest(), version("matplotlib")


def _drawn_once(draw: Callable[[Any, Path], Path]) -> Callable[[Any, Path], Path]:
    """Memoize a plot's PNG by its input data in the cache (:func:`tp_harness.files.memo_path`): a re-run with
    the same data (a warm re-run) copies the bytes instead of importing matplotlib and drawing (about a second).
    The bytes are those the drawing wrote (``savefig`` without a timestamp), so the PNG is the same either way.
    A cache that cannot be read or written only means drawing again."""

    @functools.wraps(draw)
    def drawn(data: Any, path: Path) -> Path:
        memo = memo_path("plots", content_key(draw.__name__, data, *_drawing_version()), ".png")
        try:
            blob = memo.read_bytes()
        except OSError:
            blob = None
        if blob is not None:
            with atomic_path(path) as tmp:
                tmp.write_bytes(blob)
            return path
        draw(data, path)
        try:
            with atomic_path(memo) as tmp:
                tmp.write_bytes(Path(path).read_bytes())
        except OSError:
            pass
        return path

    return drawn


def trajectory_series(
    journal_rows: Sequence[dict[str, Any]],
) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """Best composite so far per step, per (stage, task), from journal rows.

    :param journal_rows: ``journal.jsonl`` rows (``stage``, ``task``, ``step``, ``metrics.composite``).
    :return: ``{(stage, task): [(step, running max of composite), ...]}`` with steps ascending;
        rows of stage ``select`` / ``final``, racing's ``eval: partial`` rows, and rows without a numeric step
        or composite, are ignored.
    """
    per_step: dict[tuple[str, str], dict[int, float]] = {}
    for row in journal_rows:
        stage = str(row.get("stage", "?"))
        metrics = row.get("metrics")
        step = row.get("step")
        if row.get("eval", "full") != "full":
            continue  # racing's minibatch (partial) scores are not comparable with full ones
        if stage in ("select", "final") or not isinstance(metrics, dict) or not isinstance(step, int):
            continue
        value = metrics.get("composite")
        if not _is_number(value):
            continue
        steps = per_step.setdefault((stage, str(row.get("task", "?"))), {})
        steps[step] = max(float(value), steps.get(step, -math.inf))
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for key, steps in per_step.items():
        best = -math.inf
        points = []
        for step in sorted(steps):
            best = max(best, steps[step])
            points.append((step, best))
        series[key] = points
    return series


def reliability_bins(
    confidence: Sequence[float], correct: Sequence[bool], *, n_bins: int = NUM_BINS
) -> list[tuple[float, float, int]]:
    """Reliability-diagram points over ``n_bins`` equal-width confidence bins on [0, 1].

    Shapes: ``confidence`` and ``correct`` are 1-D, equal length; confidences are probabilities in
    [0, 1] (values outside are clipped; confidence 1.0 falls in the last bin).
    :return: ``[(mean confidence, accuracy, count), ...]`` for the non-empty bins, low to high.
    :raises ValueError: the lengths differ.
    """
    if len(confidence) != len(correct):
        raise ValueError(f"confidence has {len(confidence)} values but correct has {len(correct)}")
    sums: dict[int, list[float]] = {}
    for conf, ok in zip(confidence, correct, strict=True):
        conf = min(max(float(conf), 0.0), 1.0)
        acc = sums.setdefault(min(int(conf * n_bins), n_bins - 1), [0.0, 0.0, 0])
        acc[0] += conf
        acc[1] += 1.0 if ok else 0.0
        acc[2] += 1
    return [(s[0] / s[2], s[1] / s[2], int(s[2])) for _, s in sorted(sums.items())]


@_drawn_once
def plot_trajectory(series: dict[tuple[str, str], list[tuple[int, float]]], path: Path) -> Path:
    """Draw the best-composite-per-step lines (one per stage/task) and save a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    order = {"source": 0, "target": 1}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for stage, task in sorted(series, key=lambda k: (order.get(k[0], 2), k)):
            steps, best = zip(*series[(stage, task)], strict=True)
            ax.plot(steps, best, marker="o", label=f"{stage}: {task}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel("best composite so far")
        ax.set_title("Optimization trajectory")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        _atomic_save_figure(fig, path)
    finally:
        plt.close(fig)
    return path


@_drawn_once
def plot_reliability(samples: dict[str, dict[str, tuple[list[float], list[bool]]]], path: Path) -> Path:
    """Draw one reliability diagram per target task (original vs best target) and save a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(samples)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 5), squeeze=False)
    try:
        for ax, task in zip(axes[0], tasks, strict=True):
            ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
            for kind, marker in (("original", "s"), ("best_target", "o")):
                if kind not in samples[task]:
                    continue
                points = reliability_bins(*samples[task][kind])
                mean_conf, acc, counts = zip(*points, strict=True)
                ax.plot(mean_conf, acc, marker=marker, label=f"{kind.replace('_', ' ')} (n={sum(counts)})")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("mean confidence (10 equal-width bins)")
            ax.set_ylabel("accuracy")
            ax.set_title(f"Reliability: {task} (test)")
            ax.legend(fontsize="small", loc="upper left")
        fig.tight_layout()
        _atomic_save_figure(fig, path)
    finally:
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# Before/after bars of one run, and the leaderboard's overview and ablation charts


METRIC_LABELS = (("acc", "ACC"), ("ifr", "IFR"), ("ece", "ECE (lower is better)"), ("auroc", "AUROC"),
                 ("pr_p", "PR-P"), ("pr_n", "PR-N"), ("composite", "composite"))
KIND_COLORS = {"original": "#9e9e9e", "best_source": "#64b5f6", "best_target": "#1565c0"}
MODE_COLORS = {"original": "#9e9e9e", "two_stage": "#1565c0", "no_transfer": "#ef6c00", "source_only": "#64b5f6"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@_drawn_once
def plot_metric_bars(metrics: dict[str, dict[str, dict[str, float | None]]], path: Path) -> Path:
    """Per-metric before/after bars: one panel per target task, one bar group per metric.

    :param metrics: ``{task: {prompt_kind: {metric: value or None}}}`` of the test split; kinds are drawn
        in the order original, best_source, best_target; an undefined value (IFR in multiple_choice,
        AUROC with one class) is left out and marked "n/a" under its group.
    :return: ``path`` (a PNG).
    """
    plt = _pyplot()
    tasks = sorted(metrics)
    fig, axes = plt.subplots(len(tasks), 1, figsize=(8, 3.6 * len(tasks)), squeeze=False)
    try:
        for ax, task in zip(axes[:, 0], tasks, strict=True):
            kinds = [k for k in KIND_COLORS if k in metrics[task]]
            width = 0.8 / max(1, len(kinds))
            for i, kind in enumerate(kinds):
                xs, ys = [], []
                for j, (key, _) in enumerate(METRIC_LABELS):
                    value = metrics[task][kind].get(key)
                    if _is_number(value):
                        xs.append(j + (i - (len(kinds) - 1) / 2) * width)
                        ys.append(float(value))
                ax.bar(xs, ys, width=width, color=KIND_COLORS[kind], label=kind.replace("_", " "))
            ax.set_xticks(range(len(METRIC_LABELS)))
            ax.set_xticklabels([label for _, label in METRIC_LABELS], fontsize="small")
            for j, (key, _) in enumerate(METRIC_LABELS):
                if not any(_is_number(metrics[task][k].get(key)) for k in kinds):
                    ax.text(j, 0.02, "n/a", ha="center", fontsize="small", color="grey")
            ax.set_ylim(0, 1.2)
            ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
            ax.set_ylabel("value (test split)")
            ax.set_title(f"Metrics before/after: {task}")
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize="small", ncol=len(kinds), loc="upper center")
        fig.tight_layout()
        _atomic_save_figure(fig, path)
    finally:
        plt.close(fig)
    return path


def _interval_error(values: Sequence[float | None], cis: Sequence[tuple[float, float] | None]) -> list[list[float]]:
    """Matplotlib ``yerr`` (2 x n) from values and (low, high) intervals; 0 where either is missing."""
    lows, highs = [], []
    for v, ci in zip(values, cis, strict=True):
        ok = ci is not None and _is_number(v)
        lows.append(max(0.0, float(v) - ci[0]) if ok else 0.0)
        highs.append(max(0.0, ci[1] - float(v)) if ok else 0.0)
    return [lows, highs]


@_drawn_once
def plot_overview(
    bars: dict[str, tuple[float | None, float | None, tuple[float, float] | None, tuple[float, float] | None]],
    path: Path,
) -> Path:
    """The leaderboard overview: test composite of the original vs the optimized prompt, per model and dataset.

    :param bars: ``{label: (original, optimized, original 95% CI, optimized 95% CI)}``, labels in drawing
        order (e.g. ``"model\\ndataset"``); a None value draws no bar, a None CI no whisker.
    :return: ``path`` (a PNG).
    """
    plt = _pyplot()
    labels = list(bars)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(labels) + 2), 4.8))
    try:
        for offset, (i, kind, name) in zip((-0.2, 0.2), ((0, "original", "original"), (1, "best_target", "optimized")),
                                           strict=True):
            values = [bars[k][i] for k in labels]
            xs = [j + offset for j, v in enumerate(values) if _is_number(v)]
            ys = [float(v) for v in values if _is_number(v)]
            err = _interval_error([v for v in values if _is_number(v)],
                                  [bars[k][i + 2] for k, v in zip(labels, values, strict=True) if _is_number(v)])
            ax.bar(xs, ys, width=0.4, color=KIND_COLORS[kind], label=name, yerr=err, capsize=3,
                   error_kw={"elinewidth": 1})
        _finish_composite_bars(fig, ax, labels, "Original vs optimized prompt (whiskers: 95% bootstrap CI)", path)
    finally:
        plt.close(fig)
    return path



def _finish_composite_bars(fig, ax, labels: list[str], title: str, path: Path, *, legend_columns: int = 1) -> None:
    """Label a bar chart of test composites (one group per label, y in [0, 1]) and save it to ``path``."""
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize="x-small")
    ax.set_ylim(0, 1)
    ax.set_ylabel("composite (test split)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncol=legend_columns)
    fig.tight_layout()
    _atomic_save_figure(fig, path)


@_drawn_once
def plot_ablation(data: dict[str, dict[str, float | None]], path: Path) -> Path:
    """The ablation chart: test composite of the original and of each mode's final prompt, per group.

    :param data: ``{label: {"original" | "two_stage" | "no_transfer" | "source_only": composite or None}}``.
    :return: ``path`` (a PNG).
    """
    plt = _pyplot()
    labels = list(data)
    series = list(MODE_COLORS)
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(labels) + 2), 4.8))
    try:
        for i, name in enumerate(series):
            points = [(j + (i - (len(series) - 1) / 2) * width, data[k].get(name)) for j, k in enumerate(labels)]
            points = [(x, float(v)) for x, v in points if _is_number(v)]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.bar(xs, ys, width=width, color=MODE_COLORS[name], label=name.replace("_", " "))
        _finish_composite_bars(fig, ax, labels, "Ablation: two-stage vs no transfer vs source only", path,
                               legend_columns=len(series))
    finally:
        plt.close(fig)
    return path
