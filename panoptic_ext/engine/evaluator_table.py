"""Evaluators chosen from a table keyed by the dataset's ``evaluator_type``.

One table for every script (train_net, tests, tools) instead of an if-chain in each; which of a
dataset's evaluators apply to a model comes from the meta-architecture table
(:mod:`panoptic_ext.utils.meta_arch`).
"""

import logging
import os
from collections.abc import Callable

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
)

from ..evaluation import (
    PanopticSemSegEvaluator,
    build_coco_evaluator,
    build_panoptic_evaluator,
    build_sem_seg_evaluator,
)
from ..structures.sem_seg_format import SemSegFormat
from ..utils.meta_arch import ModelOutput, meta_arch_info

__all__ = ["build_evaluators", "EVALUATOR_TABLE"]

logger = logging.getLogger(__name__)

Factory = Callable[[CfgNode, str, str], DatasetEvaluator | None]


def _panoptic(cfg: CfgNode, name: str, out: str) -> DatasetEvaluator:
    # TEST.PANOPTIC_EVALUATOR picks FastPanopticEvaluator ("fast") or COCOPanopticEvaluator.
    return build_panoptic_evaluator(cfg, name, out)


def _instance(cfg: CfgNode, name: str, out: str) -> DatasetEvaluator | None:
    if not MetadataCatalog.get(name).get("json_file"):
        logger.info("'%s' has no instances json_file: skipping COCO box/mask AP", name)
        return None
    tasks = ("bbox", "segm") if meta_arch_info(cfg).instance_masks(cfg) else ("bbox",)
    return build_coco_evaluator(cfg, name, tasks, out)  # TEST.COCO_EVAL_IMPL


def _sem_seg(cfg: CfgNode, name: str, out: str) -> DatasetEvaluator | None:
    meta = MetadataCatalog.get(name)
    fmt = cfg.INPUT.SEM_SEG_FORMAT
    if meta.get("evaluator_type") == "coco_panoptic_seg":
        if fmt == SemSegFormat.NONE:
            logger.info("'%s': INPUT.SEM_SEG_FORMAT none: skipping mIoU", name)
            return None
        if cfg.TEST.SEM_SEG_EVALUATOR == "fast":  # labels from the panoptic PNGs, either format
            return PanopticSemSegEvaluator(name, fmt, distributed=True, output_dir=out)
        # detectron2's evaluator reads derived things-as-one PNGs.
        if not meta.get("sem_seg_root") or fmt != SemSegFormat.THINGS_AS_ONE:
            logger.info("'%s': no things-as-one semantic PNGs for this model: skipping mIoU", name)
            return None
    return build_sem_seg_evaluator(cfg, name, out)  # TEST.SEM_SEG_EVALUATOR


_PANOPTIC, _INSTANCE, _SEM_SEG = (o.value for o in ModelOutput)

# evaluator_type -> {evaluator name (a ModelOutput value): factory}
EVALUATOR_TABLE: dict[str, dict[str, Factory]] = {
    "coco_panoptic_seg": {_PANOPTIC: _panoptic, _INSTANCE: _instance, _SEM_SEG: _sem_seg},
    "coco": {_INSTANCE: _instance},
    "sem_seg": {_SEM_SEG: _sem_seg},
    "cityscapes_instance": {_INSTANCE: lambda cfg, name, out: CityscapesInstanceEvaluator(name)},
    "cityscapes_sem_seg": {_SEM_SEG: lambda cfg, name, out: CityscapesSemSegEvaluator(name)},
}


def build_evaluators(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None
) -> DatasetEvaluator:
    """The evaluators for ``dataset_name`` and the model in ``cfg`` (see ``TEST.EVALUATORS``)."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    table = EVALUATOR_TABLE.get(evaluator_type)
    if table is None:
        raise KeyError(
            f"dataset '{dataset_name}' has evaluator_type {evaluator_type!r}; "
            f"known types: {sorted(EVALUATOR_TABLE)}"
        )
    wanted = set(cfg.TEST.EVALUATORS) or {o.value for o in meta_arch_info(cfg).outputs}
    unknown = set(cfg.TEST.EVALUATORS) - {n for t in EVALUATOR_TABLE.values() for n in t}
    if unknown:
        raise KeyError(f"TEST.EVALUATORS has unknown names {sorted(unknown)}")
    evaluators = [f(cfg, dataset_name, output_folder) for n, f in table.items() if n in wanted]
    evaluators = [e for e in evaluators if e is not None]
    if not evaluators:
        raise ValueError(f"no evaluator applies to dataset '{dataset_name}' with {sorted(wanted)}")
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
