"""Config keys of the evaluators."""

from detectron2.config import CfgNode

from ..utils.config_keys import add_keys


def add_evaluation_config(cfg: CfgNode) -> None:
    """Add ``TEST.EVALUATORS``, ``TEST.PANOPTIC_EVALUATOR`` and ``TEST.PQ_WORKERS``."""
    add_keys(
        cfg,
        "TEST",
        {
            # Evaluators to run, by name: "panoptic" (COCO PQ), "instance" (COCO box/mask AP),
            # "sem_seg" (mIoU). Empty: every one that applies to the dataset and the model.
            "EVALUATORS": [],
            # Panoptic quality implementation: "fast" (FastPanopticEvaluator: streaming, exact,
            # no PNG round trip) or "panopticapi" (detectron2's COCOPanopticEvaluator).
            "PANOPTIC_EVALUATOR": "fast",
            # Threads of the fast evaluator that read ground-truth PNGs and match segments
            # while the model runs; 0 or 1 = in the calling thread.
            "PQ_WORKERS": 2,
        },
    )
