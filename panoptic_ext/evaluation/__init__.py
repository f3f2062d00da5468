"""Evaluation: an exact streaming PQ evaluator that can replace detectron2's panopticapi one."""

from .config import add_evaluation_config
from .evaluator import PANOPTIC_EVALUATORS, FastPanopticEvaluator, build_panoptic_evaluator
from .fast_pq import PQCategories, PQStats, image_pq_stats, pq_average, pq_compute_fast

__all__ = [
    "add_evaluation_config",
    "FastPanopticEvaluator",
    "build_panoptic_evaluator",
    "PANOPTIC_EVALUATORS",
    "PQCategories",
    "PQStats",
    "image_pq_stats",
    "pq_average",
    "pq_compute_fast",
]
