"""Accuracy of exported models through the trainer's evaluators (``--run-eval`` of the export).

An exported file is evaluated as ``train_net.py --eval-only`` evaluates the eager model:
:meth:`~panoptic_ext.engine.Trainer.test` on each dataset of ``cfg.DATASETS.TEST``, i.e. the
trainer's test loader (the config's test mapper) and the evaluators of
:func:`~panoptic_ext.engine.build_evaluators`. Only the model differs: an
:class:`~panoptic_ext.export.runtime.ExportedModel`. PQ / box AP / mask AP / mIoU of the eager
model, the fp32 file and the INT8 file are therefore comparable figure by figure.

Output of ``--run-eval`` for ``DIR/model.onnx``: ``DIR/eval_model.json`` (the results of every
dataset) and ``DIR/eval_model/<dataset>/`` (the evaluators' own files: per-class PQ and its
plots, COCO detections, ...). Files at those paths that an earlier ``--run-eval`` did not
write are refused before anything runs (:func:`check_eval_outputs`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from detectron2.config import CfgNode
from tabulate import tabulate

from ..engine import Trainer
from ..utils.write_errors import write_bytes
from .runtime import ExportedModel
from .spec import ExportSpec

__all__ = [
    "HEADLINE_METRICS",
    "check_config_matches",
    "check_eval_outputs",
    "comparison_table",
    "eval_outputs",
    "evaluate",
    "evaluate_exported",
    "headline",
    "write_eval_results",
]

logger = logging.getLogger(__name__)

# The "format" entry of an eval JSON: marks files an earlier --run-eval wrote (replaceable).
EVAL_FORMAT = "panoptic_ext.export.eval/1"

# (row name, evaluator task, metric key): the figures compared between runtimes, where present.
HEADLINE_METRICS = (
    ("PQ", "panoptic_seg", "PQ"),
    ("SQ", "panoptic_seg", "SQ"),
    ("RQ", "panoptic_seg", "RQ"),
    ("PQ things", "panoptic_seg", "PQ_th"),
    ("PQ stuff", "panoptic_seg", "PQ_st"),
    ("box AP", "bbox", "AP"),
    ("mask AP", "segm", "AP"),
    ("mIoU", "sem_seg", "mIoU"),
)

# dataset name -> evaluator task ("panoptic_seg", "bbox", ...) -> metric -> value
DatasetResults = dict[str, dict[str, dict[str, float]]]


def eval_outputs(model_path: str) -> tuple[str, str]:
    """(results JSON, evaluators' folder) of an exported file ``DIR/<stem>.<ext>``:
    ``DIR/eval_<stem>.json`` and ``DIR/eval_<stem>``."""
    folder, name = os.path.split(model_path)
    stem = os.path.splitext(name)[0]
    return os.path.join(folder, f"eval_{stem}.json"), os.path.join(folder, f"eval_{stem}")


def _written_by_run_eval(json_path: str) -> bool:
    try:
        with open(json_path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == EVAL_FORMAT


def check_eval_outputs(model_paths: Iterable[str]) -> None:
    """Refuse, before anything runs, to replace what an earlier ``--run-eval`` did not write.

    For each model path, an existing ``eval_<stem>.json`` is replaced only if it holds such
    results (its "format" entry), and an existing ``eval_<stem>/`` only together with one.

    Raises:
        FileExistsError: naming the path.
    """
    for path in model_paths:
        json_path, folder = eval_outputs(path)
        ours = _written_by_run_eval(json_path)
        for existing in (json_path, folder):
            if os.path.lexists(existing) and not ours:
                raise FileExistsError(
                    f"{existing} exists and is not the output of an earlier --run-eval "
                    f"(no {json_path} with format {EVAL_FORMAT!r}); move it or choose another "
                    "--output"
                )


def check_config_matches(spec: ExportSpec, cfg: CfgNode, path: str) -> None:
    """Refuse a config whose test loader would feed ``path`` other images than it was exported
    for: the loader converts colours and resizes by ``cfg``, the file expects its spec's."""
    expected = {
        "INPUT.FORMAT": (cfg.INPUT.FORMAT, spec.input_format),
        "INPUT.MIN_SIZE_TEST": (int(cfg.INPUT.MIN_SIZE_TEST), spec.min_size_test),
        "INPUT.MAX_SIZE_TEST": (int(cfg.INPUT.MAX_SIZE_TEST), spec.max_size_test),
        "MODEL.META_ARCHITECTURE": (cfg.MODEL.META_ARCHITECTURE, spec.meta_architecture),
    }
    wrong = [f"{k} {c!r} (exported: {s!r})" for k, (c, s) in expected.items() if c != s]
    if wrong:
        raise ValueError(f"{path} was exported with another config: " + ", ".join(wrong))


def evaluate(
    cfg: CfgNode,
    model: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    output_folder: str,
    label: str = "the model",
) -> DatasetResults:
    """PQ / AP / mIoU of ``model`` on every dataset of ``cfg.DATASETS.TEST``.

    ``model`` is anything detectron2's ``inference_on_dataset`` calls: the eager model or an
    :class:`ExportedModel` (list of test-loader dicts -> list of results dicts). Each dataset
    runs through :meth:`Trainer.test` with the trainer's evaluators, whose files go to
    ``output_folder/<dataset>``; detectron2's tables are logged as in ``--eval-only``.
    ``label`` names the model in errors, with the dataset.
    """
    results: DatasetResults = {}
    for name in cfg.DATASETS.TEST:
        one = cfg.clone()
        one.defrost()
        one.DATASETS.TEST = (name,)  # Trainer.test then returns this dataset's results alone
        one.freeze()
        try:
            evaluator = Trainer.build_evaluator(one, name, os.path.join(output_folder, name))
            results[name] = dict(Trainer.test(one, model, evaluators=[evaluator]))
        except Exception as e:
            raise RuntimeError(f"evaluating {label} on dataset '{name}' failed: {e}") from e
    return results


def evaluate_exported(
    cfg: CfgNode, path: str, output_folder: str, threads: int = 0
) -> DatasetResults:
    """:func:`evaluate` of the exported file ``path`` (ONNX Runtime with ``threads`` intra-op
    threads, 0: its default; or TorchScript), after :func:`check_config_matches`."""
    model = ExportedModel(path, threads=threads)
    check_config_matches(model.spec, cfg, path)
    return evaluate(cfg, model, output_folder, path)


def write_eval_results(
    model_path: str,
    spec: ExportSpec,
    results: DatasetResults,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write ``results`` of ``model_path`` (whose spec is ``spec``) to its ``eval_<stem>.json``;
    returns that path.

    The file holds "format", "model" (file name), "precision" ("fp32" or the spec's
    quantization precision), "quantization" (the spec's entry), ``extra`` and "datasets"
    (dataset -> task -> metric, as the evaluators return them).
    """
    quantization = spec.quantization
    data = {
        "format": EVAL_FORMAT,
        "model": os.path.basename(model_path),
        "precision": quantization.get("precision", "fp32"),
        "quantization": quantization,
        **(extra or {}),
        "datasets": results,
    }
    json_path = eval_outputs(model_path)[0]
    write_bytes(json_path, (json.dumps(data, indent=2, default=float) + "\n").encode())
    return json_path


def headline(results: DatasetResults) -> dict[tuple[str, str], float]:
    """(dataset, row name of :data:`HEADLINE_METRICS`) -> value, for the metrics present."""
    found = {}
    for dataset, tasks in results.items():
        for row, task, key in HEADLINE_METRICS:
            if key in tasks.get(task, {}):
                found[dataset, row] = float(tasks[task][key])
    return found


def comparison_table(
    columns: Mapping[str, DatasetResults], differences: Sequence[tuple[str, str]] = ()
) -> str:
    """One row per dataset and headline metric, one column per runtime, then one per
    difference ``(a, b)``, headed "b - a" (e.g. ``("fp32", "INT8")``: INT8 - fp32).

    Args:
        columns: runtime label -> its :func:`evaluate` results (same datasets).
    """
    figures = {label: headline(results) for label, results in columns.items()}
    rows = []
    for key in dict.fromkeys(k for f in figures.values() for k in f):  # first-seen order
        values = [figures[label].get(key) for label in columns]
        diffs = [
            figures[b][key] - figures[a][key] if key in figures[a] and key in figures[b] else None
            for a, b in differences
        ]
        rows.append([*key, *values, *(f"{d:+.2f}" if d is not None else "" for d in diffs)])
    headers = ["dataset", "metric", *columns, *(f"{b} - {a}" for a, b in differences)]
    return tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".2f", missingval="")
