"""``FastSemSegEvaluator``: detectron2's ``SemSegEvaluator`` (same metrics, same files, same
numbers) with a cheaper ``process``.

Measured on 512x512 predictions with 4 classes (``dev/benchmark_eval.py``), detectron2's
``process`` spends most of its time in ``torch.argmax(dim=0)`` over the (C, H, W) logits (about
75 ms on this CPU: a reduction over the outer dimension), int64 copies of the prediction and the
ground truth, an int64 ``bincount`` and per-class strided copies before RLE encoding. Here:

* the class map is a running maximum over the C channels with OpenCV / numpy (strict ``>``: ties
  go to the first class, as ``argmax``; logits with NaN, more than 256 classes and CUDA tensors
  keep ``torch.argmax``);
* labels stay in the smallest integer type; the confusion matrices are one OpenCV histogram of
  byte-sized (prediction, label) pairs (exact below 2^24 pixels and up to 15 classes; other cases
  use detectron2's ``bincount`` formula);
* boundary IoU uses detectron2's own ``_mask_to_boundary`` on the same uint8 maps;
* the per-class RLEs (only needed for ``sem_seg_predictions.json``, so only with an
  ``output_dir``) come from one transpose of the class map, byte-identical to detectron2's.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.evaluation.sem_seg_evaluation import load_image_into_numpy_array
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..data.panoptic_io import index_map, read_panoptic_rows
from ..data.panoptic_targets import segment_labels, semantic_lookup
from ..structures.sem_seg_format import SemSegFormat
from .ground_truth import check_dataset_ground_truth

__all__ = [
    "SEM_SEG_EVALUATORS",
    "FastSemSegEvaluator",
    "PanopticSemSegEvaluator",
    "build_sem_seg_evaluator",
    "class_map",
    "pair_counts",
]

# OpenCV histograms count in float32: exact while an image has fewer pixels than this.
_EXACT_FLOAT32 = 1 << 24


def class_map(logits: torch.Tensor) -> np.ndarray:
    """``logits.argmax(dim=0)`` of (C, H, W) scores as an (H, W) numpy array of a small dtype."""
    if logits.device.type != "cpu":
        return logits.argmax(dim=0).cpu().numpy()
    scores = logits.detach().float().numpy()
    c = scores.shape[0]
    if c > 256:
        return logits.argmax(dim=0).numpy()
    labels = np.zeros(scores.shape[1:], np.uint8)
    best = scores[0].copy()
    for k in range(1, c):
        greater = cv2.compare(scores[k], best, cv2.CMP_GT)  # 255 where channel k is larger
        labels -= (labels - np.uint8(k)) & greater  # labels = k there (uint8 arithmetic)
        np.maximum(best, scores[k], out=best)
    if np.isnan(best).any():  # np.maximum propagates NaN; argmax ranks NaN first
        return logits.argmax(dim=0).numpy()
    return labels


def pair_counts(rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """(k, k) int64 counts of (rows[p], cols[p]) over pixels p: detectron2's
    ``bincount(k * rows + cols).reshape(k, k)`` (which fails on values >= k, as here)."""
    small = rows.dtype == cols.dtype == np.uint8 and rows.size < _EXACT_FLOAT32 and k * k <= 256
    if small and max(int(rows.max(initial=0)), int(cols.max(initial=0))) < k:
        pairs = rows * np.uint8(k) + cols  # < k * k <= 256: one byte per pixel
        hist = cv2.calcHist([pairs], [0], None, [k * k], [0, k * k])
        return hist.astype(np.int64).reshape(k, k)
    flat = k * rows.astype(np.int64).reshape(-1) + cols.astype(np.int64).reshape(-1)
    return np.bincount(flat, minlength=k * k).reshape(k, k)


class FastSemSegEvaluator(SemSegEvaluator):
    """Drop-in for detectron2's ``SemSegEvaluator`` (see the module docstring)."""

    def _ground_truth(self, inp: dict[str, Any]) -> np.ndarray:
        """(H, W) labels of an input's image (void = the metadata's ignore label)."""
        return self._read_gt(self.input_file_to_gt_file[inp["file_name"]])

    def _read_gt(self, path: str) -> np.ndarray:
        if self.sem_seg_loading_fn is not load_image_into_numpy_array:
            return self.sem_seg_loading_fn(path, dtype=int)  # a project's own loader
        with PathManager.open(path, "rb") as f:
            gt = np.array(Image.open(f))
        if gt.dtype != np.uint8 or self._num_classes > 255 or self._ignore_label > 255:
            gt = gt.astype(np.int64)
        return gt

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        k = self._num_classes + 1
        for inp, output in zip(inputs, outputs):
            pred = class_map(output["sem_seg"])
            if pred.dtype != np.uint8 or k > 256:
                pred = pred.astype(np.int64)
            gt = self._ground_truth(inp)
            if gt.shape != pred.shape:
                raise ValueError(
                    f"{self._dataset_name}: prediction for {inp['file_name']} has shape "
                    f"{pred.shape}, its ground truth {gt.shape}"
                )
            gt[gt == self._ignore_label] = self._num_classes
            if gt.dtype != pred.dtype:
                gt, pred = gt.astype(np.int64), pred.astype(np.int64)
            counts = pair_counts(pred, gt, k)
            self._conf_matrix += counts
            if self._compute_boundary_iou:
                b_gt = self._mask_to_boundary(gt.astype(np.uint8))
                b_pred = self._mask_to_boundary(pred.astype(np.uint8))
                self._b_conf_matrix += pair_counts(b_pred, b_gt, k)
            if self._output_dir:  # the RLEs only go to sem_seg_predictions.json
                present = np.flatnonzero(counts.sum(axis=1))  # the classes in pred, sorted
                self._predictions.extend(self._encode_classes(pred, inp["file_name"], present))

    def _encode_classes(
        self, pred: np.ndarray, file_name: str, labels: np.ndarray
    ) -> list[dict[str, Any]]:
        """``encode_json_sem_seg(pred, file_name)`` from one transpose of the class map."""
        if pred.dtype != np.uint8:
            return self.encode_json_sem_seg(pred, file_name)
        # Class masks cover whole rows of the image: one transpose of the class map gives the
        # column-major order pycocotools reads, for every class.
        transposed = cv2.transpose(pred)
        rles = [mask_util.encode((transposed == c).view(np.uint8).T[:, :, None])[0] for c in labels]
        out = []
        for label, rle in zip(labels.tolist(), rles):
            if self._contiguous_id_to_dataset_id is not None:
                if label not in self._contiguous_id_to_dataset_id:
                    raise AssertionError(
                        f"Label {label} is not in the metadata info for {self._dataset_name}"
                    )
                dataset_id = self._contiguous_id_to_dataset_id[label]
            else:
                dataset_id = int(label)
            rle["counts"] = rle["counts"].decode("utf-8")
            out.append({"file_name": file_name, "category_id": dataset_id, "segmentation": rle})
        return out


class PanopticSemSegEvaluator(FastSemSegEvaluator):
    """mIoU of a panoptic dataset whose ground truth is derived from its panoptic PNGs and
    ``segments_info``, with the labels the mapper trains on (``INPUT.SEM_SEG_FORMAT``): no
    derived semantic PNGs are needed, and ``all_classes`` models (Semantic FPN on ADE20K or
    Cityscapes) are evaluated on all T + S classes. Same metrics, keys and files as detectron2's
    ``SemSegEvaluator`` (on things-as-one labels it gives the same numbers as detectron2's
    evaluator on the derived PNGs).
    """

    def __init__(
        self,
        dataset_name: str,
        sem_seg_format: str,
        distributed: bool = True,
        output_dir: str | None = None,
    ):
        # SemSegEvaluator.__init__ reads "sem_seg_file_name" from every dict: its fields are
        # set here instead, from the panoptic metadata.
        if sem_seg_format not in (SemSegFormat.THINGS_AS_ONE, SemSegFormat.ALL_CLASSES):
            raise ValueError(f"no semantic labels for INPUT.SEM_SEG_FORMAT={sem_seg_format!r}")
        check_dataset_ground_truth(dataset_name)  # before inference; cached per file state
        meta = MetadataCatalog.get(dataset_name)
        self._logger = logging.getLogger(__name__)
        self._dataset_name, self._distributed, self._output_dir = (
            dataset_name,
            distributed,
            output_dir,
        )
        self._cpu_device = torch.device("cpu")
        self._format = sem_seg_format
        self._records = {r["file_name"]: r for r in DatasetCatalog.get(dataset_name)}
        self.input_file_to_gt_file = {f: r["pan_seg_file_name"] for f, r in self._records.items()}
        things = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
        stuff = {v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items()}
        self._num_things, self._num_stuff = len(things), len(stuff) - (0 in stuff)
        if (
            sem_seg_format == SemSegFormat.THINGS_AS_ONE
        ):  # things -> 0, stuff -> 1..S (stuff_classes)
            self._class_names = list(meta.stuff_classes)
            self._contiguous_id_to_dataset_id = stuff
        else:  # things -> 0..T-1, stuff -> T..T+S-1
            self._class_names = list(meta.thing_classes) + list(meta.stuff_classes[1:])
            offset = self._num_things - 1
            self._contiguous_id_to_dataset_id = {
                **things,
                **{offset + c: d for c, d in stuff.items() if c != 0},
            }
        self._num_classes = len(self._class_names)
        self._ignore_label = meta.get("ignore_label", 255)
        self.sem_seg_loading_fn = None  # ground truth comes from the panoptic PNGs
        self._compute_boundary_iou = self._num_classes < np.iinfo(np.uint8).max

    def _ground_truth(self, inp: dict[str, Any]) -> np.ndarray:
        record = self._records[inp["file_name"]]
        path, segments = record["pan_seg_file_name"], record["segments_info"]
        rows, row_index = read_panoptic_rows(path)
        # 0 = void, 1..K = segments, K + 1 = PNG ids without a segment (void here too).
        codes = index_map(rows, [s["id"] for s in segments], len(segments) + 1)
        is_thing, contiguous = segment_labels(segments, self._num_things, self._num_stuff, path)
        lut = semantic_lookup(
            is_thing, contiguous, self._num_things, self._format, self._ignore_label
        )
        lut = np.append(lut, self._ignore_label)
        small = self._num_classes < 256 and self._ignore_label < 256
        return np.take(lut.astype(np.uint8 if small else np.int64), codes)[row_index]


# TEST.SEM_SEG_EVALUATOR -> evaluator class (both take detectron2's SemSegEvaluator arguments).
SEM_SEG_EVALUATORS = {"fast": FastSemSegEvaluator, "detectron2": SemSegEvaluator}


def build_sem_seg_evaluator(cfg: CfgNode, dataset_name: str, output_dir: str | None):
    """The mIoU evaluator ``cfg.TEST.SEM_SEG_EVALUATOR`` names ("fast" | "detectron2")."""
    kind = cfg.TEST.SEM_SEG_EVALUATOR
    if kind not in SEM_SEG_EVALUATORS:
        raise ValueError(
            f"TEST.SEM_SEG_EVALUATOR={kind!r}; expected one of {sorted(SEM_SEG_EVALUATORS)}"
        )
    return SEM_SEG_EVALUATORS[kind](dataset_name, distributed=True, output_dir=output_dir)
