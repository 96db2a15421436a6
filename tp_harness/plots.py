"""Plots of stored runs: the optimization trajectory and the reliability diagram (matplotlib, Agg, PNG).

Owns turning journal rows and per-sample records into series and bins, and drawing them. Pure data
in, PNG files out (written through a temp file and ``os.replace``); it runs no model.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NUM_BINS = 10


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _atomic_save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG through a temp file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def trajectory_series(
    journal_rows: Sequence[dict[str, Any]],
) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """Best composite so far per step, per (stage, task), from journal rows.

    :param journal_rows: ``journal.jsonl`` rows (``stage``, ``task``, ``step``, ``metrics.composite``).
    :return: ``{(stage, task): [(step, running max of composite), ...]}`` with steps ascending;
        rows of stage ``select`` / ``final``, and rows without a numeric step or composite, are ignored.
    """
    per_step: dict[tuple[str, str], dict[int, float]] = {}
    for row in journal_rows:
        stage = str(row.get("stage", "?"))
        metrics = row.get("metrics")
        step = row.get("step")
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
# The per-run report
