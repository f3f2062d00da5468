"""Config keys of the evaluators."""

from detectron2.config import CfgNode

from ..utils.config_keys import add_keys


def add_evaluation_config(cfg: CfgNode) -> None:
    """Add ``TEST.EVALUATORS``, ``TEST.PANOPTIC_EVALUATOR``, ``TEST.PQ_WORKERS``,
    ``TEST.COCO_EVAL_IMPL`` and ``TEST.SEM_SEG_EVALUATOR``."""
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
            # Box/mask AP implementation: "auto" (faster-coco-eval when installed, else
            # detectron2's), "faster_coco_eval" (FastCOCOEvaluator, same stats) or "detectron2"
            # (detectron2's COCOEvaluator with its COCOeval_opt).
            "COCO_EVAL_IMPL": "auto",
            # mIoU implementation: "fast" (FastSemSegEvaluator: detectron2's numbers and files,
            # cheaper per image) or "detectron2" (its SemSegEvaluator).
            "SEM_SEG_EVALUATOR": "fast",
        },
    )
