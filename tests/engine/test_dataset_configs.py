"""The ADE20K, Mapillary Vistas and Cityscapes-semantic configs: each merges, names builtin
datasets and class counts that match the real data, and trains one step then evaluates on a
tiny synthetic set laid out under the builtin names' folders."""

import os
import shutil

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers import config_path, load_cfg

from panoptic_ext.data.datasets.builtin import (
    BUILTIN_PANOPTIC_SPLITS,
    register_builtin_panoptic_datasets,
)
from panoptic_ext.data.datasets.synthetic import SyntheticSpec, generate_split
from panoptic_ext.engine import Trainer

# config -> (dataset prefix, thing classes, stuff classes incl. the merged "things" class or
# None for an all-classes semantic model) of the real dataset.
CONFIGS = {
    "ADE20K/panoptic_fpn_R_50_160k.yaml": ("ade20k_panoptic", 100, 51),
    "ADE20K/panoptic_fpn_R_50_panet_160k.yaml": ("ade20k_panoptic", 100, 51),
    "ADE20K/panoptic_fcn_R_50_160k.yaml": ("ade20k_panoptic", 100, 51),
    "ADE20K/semantic_fpn_R_50_160k.yaml": ("ade20k_panoptic", 150, None),
    "MapillaryVistas/panoptic_fpn_R_50_1x.yaml": ("mapillary_vistas_panoptic", 37, 29),
    "MapillaryVistas/panoptic_fpn_R_50_panet_1x.yaml": ("mapillary_vistas_panoptic", 37, 29),
    "MapillaryVistas/panoptic_fcn_R_50_1x.yaml": ("mapillary_vistas_panoptic", 37, 29),
    "Cityscapes/semantic_fpn_R_50_1x.yaml": ("cityscapes_fine_panoptic", 19, None),
}
TINY = ["INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64, "INPUT.MIN_SIZE_TEST", 64,
        "INPUT.MAX_SIZE_TEST", 64, "SOLVER.IMS_PER_BATCH", 1, "SOLVER.MAX_ITER", 1,
        "DATALOADER.NUM_WORKERS", 0, "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]  # fmt: skip


def _class_counts(cfg):
    if cfg.MODEL.META_ARCHITECTURE == "PanopticFCN":
        head = cfg.MODEL.PANOPTIC_FCN.POSITION_HEAD
        return head.THING.NUM_CLASSES, head.STUFF.NUM_CLASSES
    if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
        return cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, None
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES


def _synthetic_counts(cfg):
    """Overrides giving the model the synthetic set's 3 things and 3 stuff classes."""
    if cfg.MODEL.META_ARCHITECTURE == "PanopticFCN":
        key = "MODEL.PANOPTIC_FCN.POSITION_HEAD"
        return [f"{key}.THING.NUM_CLASSES", 3, f"{key}.STUFF.NUM_CLASSES", 4]
    if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
        return ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 6]
    return ["MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 4]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One synthetic split copied under every builtin split's folders (images in a city folder
    for Cityscapes), with the optional instances JSON (box/mask AP)."""
    tmp = tmp_path_factory.mktemp("builtin")
    src, root = tmp / "src", tmp / "datasets"
    generate_split(str(src), "val", SyntheticSpec(image_size=64, num_images=2, seed=11))
    for split in BUILTIN_PANOPTIC_SPLITS.values():
        # Cityscapes: the city is the file name's prefix ("val_000000.jpg" -> "val/").
        shutil.copytree(
            src / "val", root / split.image_root / ("val" if split.city_folders else "")
        )
        shutil.copytree(src / "panoptic_val", root / split.panoptic_root, dirs_exist_ok=True)
        os.makedirs(os.path.dirname(root / split.panoptic_json), exist_ok=True)
        shutil.copy(src / "panoptic_val.json", root / split.panoptic_json)
        shutil.copy(src / "instances_val.json", root / split.instances_json)
    yield root
    for name in BUILTIN_PANOPTIC_SPLITS:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_builtin_panoptic_datasets()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_trains_one_step_and_evaluates(name, root, tmp_path):
    prefix, things, stuff = CONFIGS[name]
    cfg = load_cfg(name)
    assert cfg.DATASETS.TRAIN[0].startswith(prefix) and cfg.DATASETS.TEST[0].startswith(prefix)
    assert all(n in BUILTIN_PANOPTIC_SPLITS for n in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST))
    assert _class_counts(cfg) == (things, stuff)
    assert os.path.isfile(config_path(name))
    register_builtin_panoptic_datasets(str(root))
    cfg = load_cfg(name, *TINY, *_synthetic_counts(cfg), "OUTPUT_DIR", str(tmp_path))
    cfg.freeze()
    torch.manual_seed(0)
    results = Trainer(cfg).train()
    if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
        assert set(results) == {"sem_seg"}
        assert [k for k in results["sem_seg"] if k.startswith("IoU-")][
            0
        ] == "IoU-disk"  # all classes
    else:
        assert {"panoptic_seg", "sem_seg", "bbox", "segm"} == set(results)
        assert 0 <= results["panoptic_seg"]["PQ"] <= 100
