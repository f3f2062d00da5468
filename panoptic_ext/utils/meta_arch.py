"""What panoptic_ext knows about each meta-architecture, in one table.

:data:`META_ARCHITECTURES` says, per ``MODEL.META_ARCHITECTURE``, which outputs the model gives
(and so which evaluators apply), whether its instances carry masks, and which config keys must
equal the class counts of the datasets it trains and tests on. Adding a model adds one entry.
The trainer's config check, the per-sample label check, the dataset validator and the evaluator
table all read it.
"""

import enum
from collections.abc import Callable
from dataclasses import dataclass

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from ..structures.sem_seg_format import SemSegFormat
from .config_keys import config_value

__all__ = [
    "META_ARCHITECTURES",
    "ROI_HEADS_CLASSES",
    "SEM_SEG_HEAD_CLASSES",
    "DatasetClasses",
    "MetaArchInfo",
    "ModelOutput",
    "class_counts_for",
    "dataset_classes",
    "expected_class_counts",
    "meta_arch_info",
    "mismatched_class_counts",
]


class ModelOutput(str, enum.Enum):
    """An output of a model, named as the evaluator it feeds (``TEST.EVALUATORS``)."""

    PANOPTIC = "panoptic"  # "panoptic_seg": COCO PQ
    INSTANCE = "instance"  # "instances": COCO box (and mask) AP
    SEM_SEG = "sem_seg"  # "sem_seg": mIoU


@dataclass(frozen=True)
class DatasetClasses:
    """Class counts of a dataset in detectron2's separated convention."""

    num_things: int
    num_stuff: int  # stuff classes, without the merged "things" entry stuff_classes[0]


ClassCountRule = Callable[[CfgNode, DatasetClasses], dict[str, int]]

# The class-count keys of detectron2's heads.
ROI_HEADS_CLASSES = "MODEL.ROI_HEADS.NUM_CLASSES"
SEM_SEG_HEAD_CLASSES = "MODEL.SEM_SEG_HEAD.NUM_CLASSES"


def roi_heads_counts(cfg: CfgNode, classes: DatasetClasses) -> dict[str, int]:
    """ROI heads predict the thing classes."""
    return {ROI_HEADS_CLASSES: classes.num_things}


def sem_seg_head_counts(cfg: CfgNode, classes: DatasetClasses) -> dict[str, int]:
    """``SEM_SEG_HEAD`` predicts the labels of ``INPUT.SEM_SEG_FORMAT``."""
    fmt = cfg.INPUT.SEM_SEG_FORMAT
    if fmt == SemSegFormat.THINGS_AS_ONE:
        return {SEM_SEG_HEAD_CLASSES: classes.num_stuff + 1}
    if fmt == SemSegFormat.ALL_CLASSES:
        return {SEM_SEG_HEAD_CLASSES: classes.num_things + classes.num_stuff}
    return {}


def panoptic_fcn_counts(cfg: CfgNode, classes: DatasetClasses) -> dict[str, int]:
    """Thing centers per thing class; stuff regions per stuff class (+ "things" if WITH_THING)."""
    head = "MODEL.PANOPTIC_FCN.POSITION_HEAD"
    with_thing = cfg.MODEL.PANOPTIC_FCN.POSITION_HEAD.STUFF.WITH_THING
    return {
        f"{head}.THING.NUM_CLASSES": classes.num_things,
        f"{head}.STUFF.NUM_CLASSES": classes.num_stuff + int(with_thing),
    }


@dataclass(frozen=True)
class MetaArchInfo:
    """The facts of one meta-architecture."""

    outputs: frozenset[ModelOutput]
    class_count_rules: tuple[ClassCountRule, ...] = ()
    # Instances always carry masks; otherwise they do when MODEL.MASK_ON.
    always_masks: bool = False
    # Key of the smallest stuff area (pixels of the output) kept in the panoptic output.
    stuff_area_limit_key: str | None = None

    def instance_masks(self, cfg: CfgNode) -> bool:
        """Whether the model's ``instances`` have ``pred_masks`` under ``cfg``."""
        return self.always_masks or cfg.MODEL.MASK_ON


_ALL_OUTPUTS = frozenset(ModelOutput)

META_ARCHITECTURES: dict[str, MetaArchInfo] = {
    "GeneralizedRCNN": MetaArchInfo(frozenset({ModelOutput.INSTANCE}), (roi_heads_counts,)),
    "PanopticFPN": MetaArchInfo(
        _ALL_OUTPUTS,
        (roi_heads_counts, sem_seg_head_counts),
        stuff_area_limit_key="MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
    ),
    "SemanticSegmentor": MetaArchInfo(frozenset({ModelOutput.SEM_SEG}), (sem_seg_head_counts,)),
    "PanopticFCN": MetaArchInfo(
        _ALL_OUTPUTS,
        (panoptic_fcn_counts,),
        always_masks=True,
        stuff_area_limit_key="MODEL.PANOPTIC_FCN.INFERENCE.COMBINE.STUFF_AREA_LIMIT",
    ),
}
# Models not in the table: every output may be there, no class-count check, masks per MASK_ON.
_UNKNOWN = MetaArchInfo(_ALL_OUTPUTS)


def meta_arch_info(cfg: CfgNode) -> MetaArchInfo:
    """The table entry of ``cfg.MODEL.META_ARCHITECTURE`` (a permissive one when unknown)."""
    return META_ARCHITECTURES.get(cfg.MODEL.META_ARCHITECTURE, _UNKNOWN)


def class_counts_for(cfg: CfgNode, classes: DatasetClasses) -> dict[str, int]:
    """Config key -> the class count that ``classes`` implies for the model of ``cfg``."""
    expected: dict[str, int] = {}
    for rule in meta_arch_info(cfg).class_count_rules:
        expected.update(rule(cfg, classes))
    return expected


def dataset_classes(dataset_name: str) -> DatasetClasses | None:
    """Class counts from the metadata of a registered dataset; None without class metadata."""
    meta = MetadataCatalog.get(dataset_name)
    if not hasattr(meta, "thing_classes") or not hasattr(meta, "stuff_classes"):
        return None
    return DatasetClasses(len(meta.thing_classes), len(meta.stuff_classes) - 1)


def expected_class_counts(cfg: CfgNode, dataset_name: str) -> dict[str, int]:
    """Config key -> the class count that ``dataset_name``'s metadata implies for this model."""
    classes = dataset_classes(dataset_name)
    return {} if classes is None else class_counts_for(cfg, classes)


def mismatched_class_counts(cfg: CfgNode, expected: dict[str, int]) -> list[tuple[str, int, int]]:
    """``(key, value in cfg, expected)`` for every key of ``expected`` that ``cfg`` disagrees on."""
    found = [(key, config_value(cfg, key), want) for key, want in expected.items()]
    return [(key, have, want) for key, have, want in found if have != want]
