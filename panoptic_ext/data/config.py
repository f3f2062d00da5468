"""Config keys of the data pipeline (``PanopticDatasetMapper`` and the synthetic dataset)."""

from detectron2.config import CfgNode

from ..utils.config_keys import add_keys


def add_panoptic_data_config(cfg: CfgNode) -> None:
    """Add ``INPUT.SEM_SEG_FORMAT``, ``DATASETS.REGISTER_PANOPTIC`` and ``DATASETS.SYNTHETIC``."""
    add_keys(
        cfg,
        "INPUT",
        {
            # Which semantic target the mapper builds from the panoptic PNG:
            # "things_as_one": things -> 0, stuff -> 1..S (Panoptic FPN, detectron2's convention);
            # "all_classes": things -> 0..T-1, stuff -> T..T+S-1; "none": no sem_seg target.
            # Void pixels are always MODEL.SEM_SEG_HEAD.IGNORE_VALUE.
            "SEM_SEG_FORMAT": "things_as_one",
        },
    )
    add_keys(
        cfg,
        "DATASETS",
        {
            # COCO-panoptic datasets to register before training, without code: a list of
            # (name, image_root, panoptic_root, panoptic_json) tuples (register_panoptic_dataset).
            "REGISTER_PANOPTIC": [],
        },
    )
    add_keys(
        cfg,
        "DATASETS.SYNTHETIC",
        {
            # Side (pixels) of the square images the synthetic generator draws.
            "IMAGE_SIZE": 128,
            # Number of images in synthetic_panoptic_train.
            "NUM_TRAIN": 96,
            # Number of images in synthetic_panoptic_val.
            "NUM_VAL": 24,
            # Seed of the generator: same seed, same files.
            "SEED": 0,
        },
    )
