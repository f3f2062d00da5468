"""``FastPanopticEvaluator``: a drop-in for detectron2's ``COCOPanopticEvaluator``.

Same inputs (``outputs[i]["panoptic_seg"] = (panoptic_img, segments_info)``), same result keys
(``PQ, SQ, RQ`` and their ``_th`` / ``_st`` variants, in percent) and, to within 1e-9, the same
numbers as panopticapi's ``pq_compute``. Instead of encoding every prediction to PNG, gathering
them, writing them to disk and re-reading them in one process per CPU, each prediction is matched
against its ground-truth PNG as it arrives (in ``TEST.PQ_WORKERS`` threads) and only per-category
sums are kept and gathered across ranks.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator, DatasetEvaluator
from detectron2.utils import comm
from tabulate import tabulate

from ..data.json_file import read_json
from ..data.panoptic_io import read_panoptic_rows
from .fast_pq import PQCategories, PQStats, image_pq_stats, pq_average
from .ground_truth import check_dataset_ground_truth
from .report import ClassQuality, class_quality, format_class_table, write_pq_report

__all__ = [
    "CheckedCOCOPanopticEvaluator",
    "FastPanopticEvaluator",
    "build_panoptic_evaluator",
    "PANOPTIC_EVALUATORS",
]

logger = logging.getLogger(__name__)


class FastPanopticEvaluator(DatasetEvaluator):
    """Streaming exact PQ evaluator for datasets registered with COCO-panoptic metadata.

    It contains a gather and has to be called from all workers, like detectron2's evaluators.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        num_workers: int = 1,
        check_gt: bool = True,
    ):
        """
        Args:
            dataset_name: a registered dataset whose metadata has ``panoptic_json``,
                ``panoptic_root`` and detectron2's thing/stuff id maps.
            output_dir: when given, per-class results (with class names and TP/FP/FN counts)
                are written to ``<output_dir>/pq_per_class.json``, with PNG plots next to it
                (:mod:`panoptic_ext.evaluation.report`).
            num_workers: threads that read ground-truth PNGs and match segments; 0 or 1 = inline.
            check_gt: refuse ground truth whose PNGs disagree with the json, before inference
                (off: panopticapi's semantics for it, e.g. PNG ids without a segment count as
                neither void nor segment).
        Raises:
            ValueError: naming the json when category ids repeat, ``isthing`` is missing, or the
                metadata id maps disagree with the json's ``isthing``.
            GroundTruthError: (a ``ValueError``) listing the PNGs that disagree with the json
                (:mod:`panoptic_ext.data.gt_checks`).
        """
        self._metadata = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._num_workers = max(int(num_workers), 0)
        json_file = self._metadata.panoptic_json
        if check_gt:  # refused here, before inference, when the PNGs disagree with the JSON
            check_dataset_ground_truth(dataset_name, max(self._num_workers, 1))
        elif not os.path.isfile(json_file):
            DatasetCatalog.get(dataset_name)  # generated datasets write their files on first use
        if not os.path.isfile(json_file):
            raise FileNotFoundError(f"{dataset_name}: panoptic_json {json_file} does not exist")
        gt = read_json(json_file, "panoptic json")
        self._categories = PQCategories(gt["categories"], json_file)
        self._gt = {ann["image_id"]: ann for ann in gt["annotations"]}
        self._gt_root = self._metadata.panoptic_root
        self._thing_to_dataset = {
            v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()
        }
        self._stuff_to_dataset = {
            v: k for k, v in self._metadata.stuff_dataset_id_to_contiguous_id.items()
        }
        self._check_metadata(json_file)
        self._pool: ThreadPoolExecutor | None = None
        self.reset()

    def _check_metadata(self, json_file: str) -> None:
        isthing = dict(zip(self._categories.ids.tolist(), self._categories.isthing.tolist()))
        bad = [i for i in self._thing_to_dataset.values() if not isthing.get(i, False)]
        bad += [i for i in self._stuff_to_dataset.values() if i != 0 and isthing.get(i, True)]
        if bad:
            raise ValueError(
                f"{self._dataset_name}: metadata id maps name category ids {sorted(bad)} that are "
                f"missing from {json_file} or have the other 'isthing'"
            )

    def reset(self) -> None:
        self._stats = PQStats.zeros(len(self._categories))
        self._pending: list[Future] = []
        self._num_images = 0
        if self._num_workers > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(self._num_workers, thread_name_prefix="pq")

    def _prediction_segments(
        self, panoptic_img: np.ndarray, segments_info: list[dict[str, Any]] | None
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Dataset-id segments of one prediction (copies; the model output is left untouched)."""
        if segments_info is None:
            # Panoptic-DeepLab style: ids are category * label_divisor + instance, -1 = void.
            divisor = self._metadata.label_divisor
            labels = np.unique(panoptic_img)
            labels = labels[labels != -1]
            segments = []
            for label in labels.tolist():
                cat = label // divisor
                isthing = cat in self._thing_to_dataset
                segments.append({"id": label + 1, "category_id": cat, "isthing": isthing})
            panoptic_img = panoptic_img + 1
            segments_info = segments
        out = []
        for seg in segments_info:
            seg = dict(seg)
            isthing = seg.pop("isthing", None)
            if isthing is not None:
                table = self._thing_to_dataset if isthing else self._stuff_to_dataset
                if seg["category_id"] not in table:
                    kind = "thing" if isthing else "stuff"
                    raise ValueError(
                        f"{self._dataset_name}: predicted {kind} class {seg['category_id']} is "
                        f"outside the metadata's {kind} ids {sorted(table)}; do the model's class "
                        "counts match the dataset?"
                    )
                seg["category_id"] = table[seg["category_id"]]
            out.append(seg)
        return panoptic_img, out

    def _image_stats(self, gt_ann: dict[str, Any], pred: np.ndarray, segments: list) -> PQStats:
        gt_rows, row_index = read_panoptic_rows(os.path.join(self._gt_root, gt_ann["file_name"]))
        return image_pq_stats(
            gt_rows,
            gt_ann["segments_info"],
            pred,
            segments,
            self._categories,
            gt_ann["file_name"],
            gt_row_index=row_index,
        )

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        """Match each prediction with its ground truth (in the worker threads when configured).

        ``outputs[i]["panoptic_seg"]``: ``(panoptic_img (H, W) int tensor, segments_info)``.
        """
        for inp, output in zip(inputs, outputs):
            panoptic_img, segments_info = output["panoptic_seg"]
            # A copy (compact when the ids allow): the id map must not change while a worker
            # thread reads it.
            pred, segments = self._prediction_segments(
                _compact_copy(panoptic_img.cpu().numpy()), segments_info
            )
            gt_ann = self._gt.get(inp["image_id"])
            if gt_ann is None:
                raise KeyError(
                    f"{self._dataset_name}: image_id {inp['image_id']} ({inp.get('file_name')}) "
                    f"has no annotation in {self._metadata.panoptic_json}"
                )
            self._num_images += 1
            if self._pool is None:
                self._stats += self._image_stats(gt_ann, pred, segments)
                continue
            self._pending.append(self._pool.submit(self._image_stats, gt_ann, pred, segments))
            if len(self._pending) > 4 * self._num_workers:  # bound memory held by predictions
                self._drain(keep=self._num_workers)

    def _drain(self, keep: int = 0) -> None:
        while len(self._pending) > keep:
            self._stats += self._pending.pop(0).result()

    def evaluate(self) -> OrderedDict | None:
        self._drain()
        if self._pool is not None:  # threads end here; reset() starts new ones
            self._pool.shutdown()
            self._pool = None
        gathered = comm.gather((self._stats, self._num_images), dst=0)
        if not comm.is_main_process():
            return None
        total = PQStats.zeros(len(self._categories))
        num_images = 0
        for stats, n in gathered:
            total += stats
            num_images += n
        if num_images == 0:
            logger.warning(f"{self._dataset_name}: FastPanopticEvaluator received no prediction")
            return OrderedDict()
        if num_images < len(self._gt):
            logger.info(f"PQ on {num_images} of the {len(self._gt)} images of {self._dataset_name}")
        try:
            pq_res = pq_average(total, self._categories)
            rows = class_quality(total, self._categories, pq_res["per_class"])
        except Exception as e:  # the finished inference is kept: its sums go to disk
            path = self._save_stats(total, num_images)
            raise RuntimeError(
                f"{self._dataset_name}: PQ could not be computed ({type(e).__name__}: {e}); the "
                f"per-category sums of the {num_images} predictions are kept in {path}"
            ) from e
        self._log_tables(pq_res, rows)
        if self._output_dir:
            paths = write_pq_report(
                rows, self._output_dir, self._class_colors(), self._dataset_name
            )
            logger.info("Per-class results and plots: %s", ", ".join(paths))
        res = {}
        for key, name in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
            for metric in ("PQ", "SQ", "RQ"):
                res[metric + key] = 100 * pq_res[name][metric.lower()]
        return OrderedDict({"panoptic_seg": res})

    def _save_stats(self, total: PQStats, num_images: int) -> str:
        """Write the accumulated per-category sums (all PQ needs of the predictions) as JSON."""
        folder = self._output_dir or tempfile.mkdtemp(prefix="pq_stats_")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"pq_stats_{self._dataset_name}.json")
        cats = self._categories
        rows = [
            {"id": int(i), "name": n, "isthing": bool(t), "tp": int(tp), "fp": int(fp),
             "fn": int(fn), "iou_sum": float(iou)}
            for i, n, t, tp, fp, fn, iou in zip(
                cats.ids, cats.names, cats.isthing, total.tp, total.fp, total.fn, total.iou
            )
        ]  # fmt: skip
        with open(path, "w") as f:
            json.dump({"dataset": self._dataset_name, "images": num_images, "categories": rows}, f)
        return path

    def _log_tables(self, pq_res: dict[str, Any], classes: list[ClassQuality]) -> None:
        rows = [
            [name] + [100 * pq_res[name][k] for k in ("pq", "sq", "rq")] + [pq_res[name]["n"]]
            for name in ("All", "Things", "Stuff")
        ]
        fmt = {"tablefmt": "pipe", "floatfmt": ".3f", "stralign": "center", "numalign": "center"}
        table = tabulate(rows, headers=["", "PQ", "SQ", "RQ", "#categories"], **fmt)
        logger.info("Panoptic Evaluation Results:\n" + table)
        logger.info("Per-class panoptic results:\n" + format_class_table(classes))

    def _class_colors(self) -> dict[int, tuple[int, ...]]:
        """Dataset category id -> the metadata's RGB colour (for the plots)."""
        colors = {}
        for key, to_dataset in (
            ("thing", self._thing_to_dataset),
            ("stuff", self._stuff_to_dataset),
        ):
            for contiguous, color in enumerate(self._metadata.get(f"{key}_colors") or []):
                if contiguous in to_dataset:
                    colors[to_dataset[contiguous]] = tuple(color)
        return colors


def _compact_copy(ids: np.ndarray) -> np.ndarray:
    """A copy of an (H, W) id map, as uint8 when its ids fit (model outputs: ids 0..P)."""
    if ids.size and ids.dtype.kind in "iu" and ids.dtype != np.uint8:
        if int(ids.min()) >= 0 and int(ids.max()) < 256:
            return ids.astype(np.uint8)
    return ids.copy()


class CheckedCOCOPanopticEvaluator(COCOPanopticEvaluator):
    """detectron2's panopticapi evaluator, with the ground truth checked before inference and
    the predictions kept when ``pq_compute`` fails.

    detectron2 writes the prediction PNGs to a temporary folder that is deleted whatever
    happens; here they go to ``<output_dir>/panoptic_predictions`` (a kept temporary folder
    without ``output_dir``), which is removed only after the metrics are computed.
    """

    def __init__(self, dataset_name: str, output_dir: str | None = None, num_workers: int = 1):
        check_dataset_ground_truth(dataset_name, max(int(num_workers), 1))
        super().__init__(dataset_name, output_dir)
        self._dataset_name = dataset_name

    def evaluate(self) -> OrderedDict | None:
        gathered = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        predictions = [p for part in gathered for p in part]
        if self._output_dir:
            pred_dir = os.path.join(self._output_dir, "panoptic_predictions")
            os.makedirs(pred_dir, exist_ok=True)
        else:
            pred_dir = tempfile.mkdtemp(prefix="panoptic_predictions_")
        annotations = []
        for p in predictions:
            with open(os.path.join(pred_dir, p["file_name"]), "wb") as f:
                f.write(p["png_string"])
            annotations.append({k: v for k, v in p.items() if k != "png_string"})
        json_data = read_json(self._metadata.panoptic_json, "panoptic json")
        json_data["annotations"] = annotations
        predictions_json = os.path.join(self._output_dir or pred_dir, "predictions.json")
        with open(predictions_json, "w") as f:
            json.dump(json_data, f)
        from panopticapi.evaluation import pq_compute

        try:
            with contextlib.redirect_stdout(io.StringIO()):
                pq_res = pq_compute(
                    self._metadata.panoptic_json,
                    predictions_json,
                    gt_folder=self._metadata.panoptic_root,
                    pred_folder=pred_dir,
                )
        except Exception as e:
            raise RuntimeError(
                f"{self._dataset_name}: panopticapi's pq_compute failed ({type(e).__name__}: "
                f"{e}); the {len(annotations)} predictions are kept: {predictions_json} and the "
                f"PNGs in {pred_dir}"
            ) from e
        shutil.rmtree(pred_dir, ignore_errors=True)
        logger.info("Panoptic Evaluation Results (panopticapi): %s", _summary(pq_res))
        res = {}
        for key, name in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
            for metric in ("PQ", "SQ", "RQ"):
                res[metric + key] = 100 * pq_res[name][metric.lower()]
        return OrderedDict({"panoptic_seg": res})


def _summary(pq_res: dict[str, Any]) -> str:
    return ", ".join(
        f"{name} PQ {100 * pq_res[name]['pq']:.3f}" for name in ("All", "Things", "Stuff")
    )


# TEST.PANOPTIC_EVALUATOR -> factory(cfg, dataset_name, output_dir).
PANOPTIC_EVALUATORS = {
    "fast": lambda cfg, name, out: FastPanopticEvaluator(name, out, cfg.TEST.PQ_WORKERS),
    "panopticapi": lambda cfg, name, out: CheckedCOCOPanopticEvaluator(
        name, out, cfg.TEST.PQ_WORKERS
    ),
}


def build_panoptic_evaluator(
    cfg: CfgNode, dataset_name: str, output_dir: str | None = None
) -> DatasetEvaluator:
    """The panoptic evaluator named by ``cfg.TEST.PANOPTIC_EVALUATOR`` ("fast" | "panopticapi")."""
    kind = cfg.TEST.PANOPTIC_EVALUATOR
    if kind not in PANOPTIC_EVALUATORS:
        raise ValueError(
            f"TEST.PANOPTIC_EVALUATOR={kind!r}; expected one of {sorted(PANOPTIC_EVALUATORS)}"
        )
    return PANOPTIC_EVALUATORS[kind](cfg, dataset_name, output_dir)
