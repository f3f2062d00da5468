"""The ground truth of a registered COCO-panoptic dataset, checked before anything is scored.

Evaluators and the trainer call :func:`check_dataset_ground_truth` when they are built, that is
before inference (and, for the test sets of a training, before the first iteration): a dataset
whose PNGs disagree with its JSON is refused with every problem named, instead of a PQ that is
silently wrong or an exception after the whole inference. The rules are those of
:mod:`panoptic_ext.data.gt_checks`, shared with ``panoptic-ext-validate-dataset``.
"""

from __future__ import annotations

import logging
import os

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.gt_checks import check_ground_truth
from ..data.json_checks import Problem

__all__ = ["check_dataset_ground_truth", "check_test_ground_truth"]

logger = logging.getLogger(__name__)

_PANOPTIC = "coco_panoptic_seg"


def check_dataset_ground_truth(dataset_name: str, workers: int = 1) -> list[Problem]:
    """Check ``dataset_name``'s panoptic ground truth (JSON against PNGs) once per file state.

    Datasets without ``panoptic_json`` / ``panoptic_root`` metadata are left alone.

    Returns:
        the warnings (already logged once).
    Raises:
        GroundTruthError: listing every error with its PNG, segment and values.
    """
    meta = MetadataCatalog.get(dataset_name)
    json_file, root = meta.get("panoptic_json"), meta.get("panoptic_root")
    if not json_file or not root:
        return []
    if not os.path.isfile(json_file):
        DatasetCatalog.get(dataset_name)  # generated datasets write their files on first use
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{dataset_name}: panoptic_json {json_file} does not exist")
    return check_ground_truth(json_file, root, workers, purpose=f"evaluation on {dataset_name}")


def check_test_ground_truth(cfg: CfgNode) -> None:
    """Check the panoptic test sets of ``cfg`` (those a training evaluates on) before training."""
    for name in cfg.DATASETS.TEST:
        if MetadataCatalog.get(name).get("evaluator_type") == _PANOPTIC:
            check_dataset_ground_truth(name, max(int(cfg.TEST.PQ_WORKERS), 1))
