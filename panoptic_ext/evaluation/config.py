"""Config keys of the evaluators."""

from detectron2.config import CfgNode

from ..config_utils import add_keys


def add_evaluation_config(cfg: CfgNode) -> None:
    """Add ``TEST.PANOPTIC_EVALUATOR`` and ``TEST.PQ_WORKERS``."""
    add_keys(
        cfg,
        "TEST",
        {
            # Panoptic quality implementation: "fast" (FastPanopticEvaluator: streaming, exact,
            # no PNG round trip) or "panopticapi" (detectron2's COCOPanopticEvaluator).
            "PANOPTIC_EVALUATOR": "fast",
            # Threads of the fast evaluator that read ground-truth PNGs and match segments
            # while the model runs; 0 or 1 = in the calling thread.
            "PQ_WORKERS": 2,
        },
    )
