"""Per-class panoptic quality people can read: a table with class names, ``pq_per_class.json``
with names and the counts behind every number, and two PNG plots next to it.

* ``pq_per_class.png``: PQ per class as horizontal bars in the class colours, things and stuff
  in separate panels, each with its split's mean (PQ_th / PQ_st) as a dashed line;
* ``pq_errors_per_class.png``: matched (TP), false-positive and false-negative segment counts per
  class, stacked, in the same layout, so a class with low PQ shows whether it is missed or
  hallucinated.

Plots are drawn with matplotlib's object API on an Agg canvas: no pyplot state and no change
of the process-wide backend.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from tabulate import tabulate

from .fast_pq import PQCategories, PQStats

__all__ = ["ClassQuality", "class_quality", "format_class_table", "write_pq_report"]

# Written next to each other in the evaluator's output folder.
PQ_JSON = "pq_per_class.json"
PQ_PLOT = "pq_per_class.png"
ERRORS_PLOT = "pq_errors_per_class.png"

_BAR_INCHES = 0.22  # height of one class row in the plots
_COUNT_COLORS = {"tp": "#2ca02c", "fp": "#ff7f0e", "fn": "#d62728"}


@dataclass(frozen=True)
class ClassQuality:
    """Quality of one category over the evaluated images (pq/sq/rq in [0, 1])."""

    category_id: int  # dataset id, as in the JSON
    name: str
    isthing: bool
    pq: float
    sq: float
    rq: float
    tp: int  # matched segment pairs
    fp: int  # predicted segments without a match (void/crowd-covered ones excluded)
    fn: int  # ground-truth segments without a match (crowd excluded)

    @property
    def present(self) -> bool:
        """Whether the class has a segment in the ground truth or the predictions."""
        return self.tp + self.fp + self.fn > 0


def class_quality(
    stats: PQStats, categories: PQCategories, per_class: Mapping[int, Mapping[str, float]]
) -> list[ClassQuality]:
    """One :class:`ClassQuality` per category, in the categories' order.

    Args:
        stats: (C,) summed statistics; categories: the C categories;
        per_class: ``pq_average(...)["per_class"]`` (category id -> pq/sq/rq).
    """
    return [
        ClassQuality(
            int(cid),
            categories.names[i],
            bool(categories.isthing[i]),
            *(float(per_class[int(cid)][k]) for k in ("pq", "sq", "rq")),
            *(int(a[i]) for a in (stats.tp, stats.fp, stats.fn)),
        )
        for i, cid in enumerate(categories.ids.tolist())
    ]


def format_class_table(rows: Sequence[ClassQuality]) -> str:
    """A pipe table: things first, then stuff; PQ/SQ/RQ in percent, the counts, absent classes
    marked (they are left out of the averages)."""
    ordered = [r for r in rows if r.isthing] + [r for r in rows if not r.isthing]
    body = [
        [r.name, "thing" if r.isthing else "stuff"]
        + ([100 * r.pq, 100 * r.sq, 100 * r.rq] if r.present else ["absent"] * 3)
        + [r.tp, r.fp, r.fn]
        for r in ordered
    ]
    return tabulate(
        body,
        headers=["category", "type", "PQ", "SQ", "RQ", "TP", "FP", "FN"],
        tablefmt="pipe",
        floatfmt=".2f",
        stralign="left",
        numalign="right",
    )


def write_pq_report(
    rows: Sequence[ClassQuality],
    output_dir: str,
    colors: Mapping[int, Sequence[int]] | None = None,
    title: str = "",
) -> list[str]:
    """Write ``pq_per_class.json`` and the two PNG plots into ``output_dir``; return the paths.

    Args:
        colors: dataset category id -> RGB 0..255 (the metadata's class colours); grey if absent.
        title: shown above the plots (e.g. the dataset name).
    """
    os.makedirs(output_dir, exist_ok=True)
    paths = [os.path.join(output_dir, n) for n in (PQ_JSON, PQ_PLOT, ERRORS_PLOT)]
    with open(paths[0], "w") as f:
        json.dump({str(r.category_id): asdict(r) for r in rows}, f, indent=1)
    colors = colors or {}
    _plot_split_panels(rows, paths[1], title, colors, _draw_pq)
    _plot_split_panels(rows, paths[2], title, colors, _draw_counts)
    return paths


def _draw_pq(ax, rows: Sequence[ClassQuality], colors: Mapping[int, Sequence[int]]) -> str:
    y = np.arange(len(rows))
    pq = np.array([100 * r.pq for r in rows])
    face = [np.array(colors.get(r.category_id, (150, 150, 150))) / 255 for r in rows]
    ax.barh(y, pq, color=face, edgecolor="black", linewidth=0.5)
    for i, r in enumerate(rows):
        label = f"{100 * r.pq:.1f}" if r.present else "absent"
        ax.text(min(100 * r.pq, 90) + 1, i, label, va="center", fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_xlabel("PQ (%)")
    present = [r.pq for r in rows if r.present]
    if not present:
        return "no class present"
    mean = 100 * float(np.mean(present))
    ax.axvline(mean, color="black", linestyle="--", linewidth=1)
    return f"mean PQ {mean:.1f} (dashed)"


def _draw_counts(ax, rows: Sequence[ClassQuality], colors: Mapping[int, Sequence[int]]) -> str:
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for key in ("tp", "fp", "fn"):
        counts = np.array([getattr(r, key) for r in rows], dtype=float)
        ax.barh(y, counts, left=left, color=_COUNT_COLORS[key], label=key.upper())
        left += counts
    for i, r in enumerate(rows):
        ax.text(left[i], i, f" {r.tp} / {r.fp} / {r.fn}", va="center", fontsize=7)
    ax.set_xlim(0, 1.25 * max(left.max(), 1))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("segments: matched (TP) / false positives (FP) / false negatives (FN)")
    ax.legend(loc="upper right", fontsize=7, ncols=3)
    return "TP {} / FP {} / FN {} in total".format(
        *(sum(getattr(r, k) for r in rows) for k in ("tp", "fp", "fn"))
    )


def _plot_split_panels(rows, path: str, title: str, colors, draw) -> None:
    """Things and stuff panels stacked, each class one row (sorted by PQ, best on top)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    splits = [
        (kind, sorted((r for r in rows if r.isthing == isthing), key=lambda r: r.pq))
        for kind, isthing in (("things", True), ("stuff", False))
    ]
    splits = [(k, s) for k, s in splits if s]
    heights = [max(len(s), 2) for _, s in splits]
    fig = Figure(figsize=(8, 1.2 + _BAR_INCHES * sum(heights) + 0.6 * len(splits)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(splits), 1, squeeze=False, height_ratios=heights)[:, 0]
    for i, (ax, (kind, split_rows)) in enumerate(zip(axes, splits)):
        note = draw(ax, split_rows, colors)
        ax.set_yticks(np.arange(len(split_rows)), [r.name for r in split_rows], fontsize=7)
        # Room above the top bar for the legend of the counts plot.
        ax.set_ylim(-0.6, len(split_rows) - 0.4 + (draw is _draw_counts))
        # The figure title heads the first panel: a suptitle overlaps tall figures' first bars.
        head = f"{title}\n" if title and i == 0 else ""
        ax.set_title(f"{head}{kind}: {len(split_rows)} classes, {note}", fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
