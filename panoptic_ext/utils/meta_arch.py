"""What panoptic_ext knows about each meta-architecture, in one table.

:data:`META_ARCHITECTURES` says, per ``MODEL.META_ARCHITECTURE``, which outputs the model gives
(and so which evaluators apply), whether its instances carry masks, which config keys must equal
the class counts of the datasets it trains and tests on, which key limits its stuff areas, which
export family exports it, which panels the dataset browser draws for it and which official
checkpoints convert to it. Adding a model adds one entry (and no other module names a
meta-architecture). The trainer's config checks, the per-sample label check, the dataset
validator, the evaluator table, the demo, the dataset browser, the exporter and the official
checkpoint converter all read it.

The table holds names (enums) only: the export families and the browser's drawing code live in
the layers above and look their part up by these names.
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
    "BrowsePanel",
    "ExportFamily",
    "OfficialCode",
    "ROI_HEADS_CLASSES",
    "SEM_SEG_HEAD_CLASSES",
    "DatasetClasses",
    "MetaArchInfo",
    "ModelOutput",
    "class_counts_for",
    "dataset_classes",
    "expected_class_counts",
    "meta_arch_info",
    "meta_architectures_with",
    "mismatched_class_counts",
]


class ModelOutput(str, enum.Enum):
    """An output of a model, named as the evaluator it feeds (``TEST.EVALUATORS``)."""

    PANOPTIC = "panoptic"  # "panoptic_seg": COCO PQ
    INSTANCE = "instance"  # "instances": COCO box (and mask) AP
    SEM_SEG = "sem_seg"  # "sem_seg": mIoU


class ExportFamily(str, enum.Enum):
    """How a model is exported (``panoptic_ext.export.families`` holds one family per name)."""

    SEMANTIC = "semantic"  # backbone + semantic head, argmax post-processing
    RCNN = "rcnn"  # detectron2's R-CNN (PANet heads included), with or without panoptic merge
    PANOPTIC_FCN = "panoptic_fcn"


class BrowsePanel(str, enum.Enum):
    """A panel of the dataset browser after the ground-truth panoptic one: a training target."""

    SEMANTIC = "semantic"  # the mapper's sem_seg target
    INSTANCES = "instances"  # the mapper's instances (boxes and masks)
    CENTERS = "centers"  # Panoptic FCN's thing center heat maps
    STUFF = "stuff"  # Panoptic FCN's soft stuff targets


class OfficialCode(str, enum.Enum):
    """An official implementation whose checkpoints panoptic_ext converts (its repository)."""

    PANOPTIC_FCN = "dvlab-research/PanopticFCN"


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


@dataclass(frozen=True, kw_only=True)
class MetaArchInfo:
    """The facts of one meta-architecture (each one stated by every entry, none defaulted).

    Attributes:
        outputs: what the model predicts, named as the evaluators they feed.
        class_count_rules: functions giving the config keys that must hold the dataset's class
            counts (empty: none is checked).
        always_masks: instances always carry masks; otherwise they do when ``MODEL.MASK_ON``.
        stuff_area_limit_key: key of the smallest stuff area (pixels of the output) kept in
            the panoptic output; None without a panoptic output.
        export_family: how the model is exported; None: not exportable.
        browse_panels: the training targets the dataset browser draws, in order.
        official_code: the official implementation whose checkpoints convert to this model;
            None: none does.
    """

    outputs: frozenset[ModelOutput]
    class_count_rules: tuple[ClassCountRule, ...]
    always_masks: bool
    stuff_area_limit_key: str | None
    export_family: ExportFamily | None
    browse_panels: tuple[BrowsePanel, ...]
    official_code: OfficialCode | None

    def instance_masks(self, cfg: CfgNode) -> bool:
        """Whether the model's ``instances`` have ``pred_masks`` under ``cfg``."""
        return self.always_masks or cfg.MODEL.MASK_ON


_ALL_OUTPUTS = frozenset(ModelOutput)

META_ARCHITECTURES: dict[str, MetaArchInfo] = {
    # detectron2's meta-architectures (PANet is a GeneralizedRCNN / PanopticFPN with its heads)
    "GeneralizedRCNN": MetaArchInfo(
        outputs=frozenset({ModelOutput.INSTANCE}),
        class_count_rules=(roi_heads_counts,),
        always_masks=False,
        stuff_area_limit_key=None,
        export_family=ExportFamily.RCNN,
        browse_panels=(BrowsePanel.INSTANCES,),
        official_code=None,
    ),
    "PanopticFPN": MetaArchInfo(
        outputs=_ALL_OUTPUTS,
        class_count_rules=(roi_heads_counts, sem_seg_head_counts),
        always_masks=False,
        stuff_area_limit_key="MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
        export_family=ExportFamily.RCNN,
        browse_panels=(BrowsePanel.SEMANTIC, BrowsePanel.INSTANCES),
        official_code=None,
    ),
    "SemanticSegmentor": MetaArchInfo(
        outputs=frozenset({ModelOutput.SEM_SEG}),
        class_count_rules=(sem_seg_head_counts,),
        always_masks=False,
        stuff_area_limit_key=None,
        export_family=ExportFamily.SEMANTIC,
        browse_panels=(BrowsePanel.SEMANTIC,),
        official_code=None,
    ),
    # panoptic_ext's own
    "PanopticFCN": MetaArchInfo(
        outputs=_ALL_OUTPUTS,
        class_count_rules=(panoptic_fcn_counts,),
        always_masks=True,
        stuff_area_limit_key="MODEL.PANOPTIC_FCN.INFERENCE.COMBINE.STUFF_AREA_LIMIT",
        export_family=ExportFamily.PANOPTIC_FCN,
        browse_panels=(BrowsePanel.INSTANCES, BrowsePanel.CENTERS, BrowsePanel.STUFF),
        official_code=OfficialCode.PANOPTIC_FCN,
    ),
}
# Models not in the table: every output may be there, no class-count check, masks per MASK_ON,
# not exportable, the browser draws the semantic and instance targets.
_UNKNOWN = MetaArchInfo(
    outputs=_ALL_OUTPUTS,
    class_count_rules=(),
    always_masks=False,
    stuff_area_limit_key=None,
    export_family=None,
    browse_panels=(BrowsePanel.SEMANTIC, BrowsePanel.INSTANCES),
    official_code=None,
)


def meta_arch_info(cfg: CfgNode) -> MetaArchInfo:
    """The table entry of ``cfg.MODEL.META_ARCHITECTURE`` (a permissive one when unknown)."""
    return META_ARCHITECTURES.get(cfg.MODEL.META_ARCHITECTURE, _UNKNOWN)


def meta_architectures_with(**facts: object) -> list[str]:
    """Sorted names of the meta-architectures whose entries have the given facts, e.g.
    ``meta_architectures_with(official_code=OfficialCode.PANOPTIC_FCN)``."""
    return sorted(
        name
        for name, info in META_ARCHITECTURES.items()
        if all(getattr(info, key) == value for key, value in facts.items())
    )


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
