"""Evaluation: an exact streaming PQ evaluator that can replace detectron2's panopticapi one, COCO
AP through faster-coco-eval, and per-class reports with plots."""

from .coco import FastCOCOEvaluator, build_coco_evaluator
from .config import add_evaluation_config
from .evaluator import PANOPTIC_EVALUATORS, FastPanopticEvaluator, build_panoptic_evaluator
from .fast_pq import PQCategories, PQStats, image_pq_stats, pq_average, pq_compute_fast
from .sem_seg import FastSemSegEvaluator, PanopticSemSegEvaluator, build_sem_seg_evaluator

__all__ = [
    "add_evaluation_config",
    "build_coco_evaluator",
    "FastCOCOEvaluator",
    "FastSemSegEvaluator",
    "PanopticSemSegEvaluator",
    "build_sem_seg_evaluator",
    "FastPanopticEvaluator",
    "build_panoptic_evaluator",
    "PANOPTIC_EVALUATORS",
    "PQCategories",
    "PQStats",
    "image_pq_stats",
    "pq_average",
    "pq_compute_fast",
]
