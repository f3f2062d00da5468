"""Config keys of the training/evaluation engine."""

from detectron2.config import CfgNode

from ..config_utils import add_keys


def add_engine_config(cfg: CfgNode) -> None:
    """Add ``TEST.EVALUATORS``."""
    add_keys(
        cfg,
        "TEST",
        {
            # Evaluators to run, by name: "panoptic" (COCO PQ), "instance" (COCO box/mask AP),
            # "sem_seg" (mIoU). Empty: every one that applies to the dataset and the model.
            "EVALUATORS": [],
        },
    )
