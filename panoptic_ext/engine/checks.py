"""Checks that a config agrees with its datasets, run before a model is built.

A wrong class count otherwise surfaces as a device-side assert deep inside a loss.
"""

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

__all__ = ["check_class_counts", "expected_class_counts"]

# Meta-architectures whose ROI heads predict the dataset's thing classes.
_ROI_ARCHS = {"GeneralizedRCNN", "PanopticFPN"}
# Meta-architectures whose SEM_SEG_HEAD predicts INPUT.SEM_SEG_FORMAT labels.
_SEM_SEG_ARCHS = {"PanopticFPN", "SemanticSegmentor"}


def expected_class_counts(cfg: CfgNode, dataset_name: str) -> dict[str, int]:
    """Config key -> the class count that ``dataset_name``'s metadata implies for this model."""
    meta = MetadataCatalog.get(dataset_name)
    if not hasattr(meta, "thing_classes") or not hasattr(meta, "stuff_classes"):
        return {}
    num_things = len(meta.thing_classes)
    num_stuff = len(meta.stuff_classes) - 1  # stuff_classes[0] is the merged "things" class
    arch = cfg.MODEL.META_ARCHITECTURE
    expected = {}
    if arch in _ROI_ARCHS:
        expected["MODEL.ROI_HEADS.NUM_CLASSES"] = num_things
    if arch == "PanopticFCN":
        head = "MODEL.PANOPTIC_FCN.POSITION_HEAD"
        expected[f"{head}.THING.NUM_CLASSES"] = num_things
        with_thing = cfg.MODEL.PANOPTIC_FCN.POSITION_HEAD.STUFF.WITH_THING
        expected[f"{head}.STUFF.NUM_CLASSES"] = num_stuff + int(with_thing)
    if arch in _SEM_SEG_ARCHS:
        fmt = cfg.INPUT.SEM_SEG_FORMAT
        if fmt == "things_as_one":
            expected["MODEL.SEM_SEG_HEAD.NUM_CLASSES"] = num_stuff + 1
        elif fmt == "all_classes":
            expected["MODEL.SEM_SEG_HEAD.NUM_CLASSES"] = num_things + num_stuff
    return expected


def _lookup(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_class_counts(cfg: CfgNode) -> None:
    """Raise ``ValueError`` naming the key, its value and the dataset when they disagree."""
    problems = []
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        for key, want in expected_class_counts(cfg, name).items():
            have = _lookup(cfg, key)
            if have != want:
                problems.append(f"{key} = {have}, but dataset '{name}' implies {want}")
    if problems:
        raise ValueError("config does not match the dataset metadata: " + "; ".join(problems))
