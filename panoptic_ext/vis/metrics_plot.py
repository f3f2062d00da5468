"""Training curves from detectron2's ``metrics.json`` (one JSON object per line, written by its
``JSONWriter``): loss terms, learning rate and the evaluation metrics over iterations, as PNGs.

* ``loss.png``: every ``loss_*`` term and ``total_loss``, raw (faint) and smoothed (median over
  a window of iterations centred on each point, so the curve does not lag behind the raw one),
  on a log scale;
* ``lr.png``: the learning rate;
* ``eval.png``: one panel per evaluation task (PQ / PQ_th / PQ_st, box and mask AP, mIoU) with a
  marker at each evaluation; written only when the run evaluated.

A resumed run appends lines whose iterations repeat earlier ones: the last value of each
iteration wins, as after a resume it is the one the final model descends from.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["EVAL_METRICS", "MetricsHistory", "plot_metrics", "read_metrics"]

logger = logging.getLogger(__name__)

# Evaluation task -> the metrics drawn for it (keys "<task>/<metric>" in metrics.json).
EVAL_METRICS: dict[str, tuple[str, ...]] = {
    "panoptic_seg": ("PQ", "PQ_th", "PQ_st"),
    "bbox": ("AP", "AP50", "AP75"),
    "segm": ("AP", "AP50", "AP75"),
    "sem_seg": ("mIoU", "fwIoU"),
}
# Window, in iterations, of the loss medians. detectron2's JSONWriter already writes each loss as
# the median of its last 20 iterations, every 20 iterations by default: a window of 200 spans
# 10 such records.
_SMOOTH = 200


@dataclass
class MetricsHistory:
    """``series[key] = (iterations, values)``, both (N,) float64 arrays sorted by iteration."""

    source: str
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.series if k.startswith(prefix))


def read_metrics(path: str) -> MetricsHistory:
    """Read ``metrics.json`` (or the ``metrics.json`` of an output folder).

    Raises:
        FileNotFoundError: naming the path; ValueError: naming the file and the line when a line
            other than the last is not a JSON object (a killed run may leave a cut last line,
            which is skipped with a warning).
    """
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no metrics file {path} (detectron2 writes OUTPUT_DIR/metrics.json)"
        )
    with open(path) as f:
        lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip()]
    points: dict[str, dict[int, float]] = {}
    for n, line in lines:
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or "iteration" not in entry:
                raise ValueError("not an object with an 'iteration'")
        except ValueError as e:
            if n == lines[-1][0]:
                logger.warning("%s:%d: skipping a cut last line (%s)", path, n, e)
                continue
            raise ValueError(f"{path}:{n}: not a metrics line ({e}): {line[:80]!r}") from e
        iteration = int(entry.pop("iteration"))
        for key, value in entry.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                points.setdefault(key, {})[iteration] = float(value)
    history = MetricsHistory(path)
    for key, by_iter in points.items():
        its = np.array(sorted(by_iter), dtype=np.float64)
        history.series[key] = (its, np.array([by_iter[int(i)] for i in its], dtype=np.float64))
    return history


def _running_median(its: np.ndarray, values: np.ndarray, window: int) -> np.ndarray:
    """(N,) median of the values whose iteration lies within ``window`` iterations centred on
    each point's (fewer points at the ends); ``its`` ascending."""
    if len(values) < 2:
        return values
    lo = np.searchsorted(its, its - window / 2, side="left")
    hi = np.searchsorted(its, its + window / 2, side="right")
    return np.array([np.median(values[a:b]) for a, b in zip(lo, hi)])


def _new_figure(panels: int, title: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    return fig, axes[:panels]


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _plot_losses(history: MetricsHistory, path: str, smooth: int) -> str | None:
    keys = [k for k in history.keys("loss_")] + (["total_loss"] * ("total_loss" in history.series))
    if not keys:
        return None
    fig, axes = _new_figure(len(keys), f"losses ({history.source})")
    for ax, key in zip(axes, keys):
        its, values = history.series[key]
        ax.plot(its, values, color="tab:blue", alpha=0.25, linewidth=0.8, label="raw")
        smoothed = _running_median(its, values, smooth)
        ax.plot(its, smoothed, color="tab:blue", label=f"median, {smooth} iterations")
        if (values > 0).all():
            ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def _plot_lr(history: MetricsHistory, path: str) -> str | None:
    if "lr" not in history.series:
        return None
    fig, (ax,) = _new_figure(1, f"learning rate ({history.source})")
    its, values = history.series["lr"]
    ax.plot(its, values, color="tab:purple")
    ax.set_xlabel("iteration")
    ax.set_ylabel("lr")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _plot_eval(history: MetricsHistory, path: str) -> str | None:
    tasks = {
        task: [m for m in metrics if f"{task}/{m}" in history.series]
        for task, metrics in EVAL_METRICS.items()
    }
    tasks = {t: m for t, m in tasks.items() if m}
    if not tasks:
        return None
    fig, axes = _new_figure(len(tasks), f"evaluation ({history.source})")
    for ax, (task, metrics) in zip(axes, tasks.items()):
        for metric in metrics:
            its, values = history.series[f"{task}/{metric}"]
            ax.plot(its, values, marker="o", markersize=3, label=metric)
            ax.annotate(f"{values[-1]:.1f}", (its[-1], values[-1]), fontsize=7)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_metrics(
    metrics_path: str, output_dir: str | None = None, smooth: int = _SMOOTH
) -> list[str]:
    """Write ``loss.png``, ``lr.png`` and (if the run evaluated) ``eval.png``; return the paths.

    Args:
        metrics_path: a ``metrics.json`` or the output folder holding it.
        output_dir: where the PNGs go (default: next to ``metrics.json``).
        smooth: window of the loss curves' medians, in iterations (centred).
    """
    history = read_metrics(metrics_path)
    output_dir = output_dir or os.path.dirname(history.source)
    os.makedirs(output_dir, exist_ok=True)
    written: Sequence[str | None] = (
        _plot_losses(history, os.path.join(output_dir, "loss.png"), smooth),
        _plot_lr(history, os.path.join(output_dir, "lr.png")),
        _plot_eval(history, os.path.join(output_dir, "eval.png")),
    )
    return [p for p in written if p is not None]
