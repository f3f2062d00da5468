"""Config setup and the ``main`` that ``train_net.py`` launches (kept here so tests can call it)."""

import argparse
import logging

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_setup

from .. import config as ext_config  # module import: panoptic_ext.config imports this package
from ..checkpoint import enable_deterministic_mode
from ..data.datasets import register_panoptic_dataset, register_synthetic_datasets
from .trainer import Trainer

__all__ = ["main", "register_config_datasets", "setup_cfg"]

logger = logging.getLogger(__name__)


def register_config_datasets(cfg: CfgNode) -> list[str]:
    """Register the datasets listed in ``DATASETS.REGISTER_PANOPTIC``; return their names.

    A name that is already registered is replaced, so a re-run with other paths takes effect.
    """
    names = []
    for entry in cfg.DATASETS.REGISTER_PANOPTIC:
        if len(entry) != 4:
            raise ValueError(
                "DATASETS.REGISTER_PANOPTIC entries are (name, image_root, panoptic_root, "
                f"panoptic_json); got {entry!r}"
            )
        name = entry[0]
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_panoptic_dataset(*entry)
        names.append(name)
    return names


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Build the frozen config from ``args.config_file`` and ``args.opts`` and set up logging.

    Unknown keys raise a ``KeyError`` naming the key and the yaml file (or the override). Without
    CUDA, ``MODEL.DEVICE`` falls back to "cpu" (with a warning) so every config runs anywhere.
    """
    cfg = get_cfg()
    ext_config.add_panoptic_ext_config(cfg)
    try:
        cfg.merge_from_file(args.config_file)
    except KeyError as e:  # detectron2 names the key; add the file it came from
        raise KeyError(f"{args.config_file} (or its _BASE_ chain): {e.args[0]}") from e
    try:
        cfg.merge_from_list(args.opts)
    except (KeyError, AssertionError) as e:  # yacs asserts on unknown override keys
        raise KeyError(f"command-line override: {e}") from e
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            "MODEL.DEVICE=%s but CUDA is not available: running on cpu", cfg.MODEL.DEVICE
        )
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    register_config_datasets(cfg)
    synthetic = cfg.DATASETS.SYNTHETIC
    register_synthetic_datasets(
        synthetic.IMAGE_SIZE, synthetic.NUM_TRAIN, synthetic.NUM_VAL, synthetic.SEED
    )
    default_setup(cfg, args)
    enable_deterministic_mode(cfg)  # no-op unless cfg.DETERMINISTIC
    return cfg


def main(args: argparse.Namespace):
    """Train (or with ``--eval-only`` evaluate) the model described by ``args``."""
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        Trainer.build_checkpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
