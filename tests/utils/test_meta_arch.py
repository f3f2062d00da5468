"""The meta-architecture table: class-count rules per model, and one entry drives every check."""

import pytest
from detectron2.evaluation import SemSegEvaluator
from helpers import TINY_OPTS, load_cfg, register_tiny

from panoptic_ext.data.datasets.synthetic import SYNTHETIC_CATEGORIES
from panoptic_ext.data.train_loader import CheckedMapper
from panoptic_ext.data.validation import check_config_class_counts
from panoptic_ext.engine.class_count_checks import check_class_counts
from panoptic_ext.engine.evaluator_table import EVALUATOR_TABLE, build_evaluators
from panoptic_ext.utils.meta_arch import (
    META_ARCHITECTURES,
    DatasetClasses,
    MetaArchInfo,
    ModelOutput,
    class_counts_for,
    meta_arch_info,
    sem_seg_head_counts,
)

CLASSES = DatasetClasses(num_things=3, num_stuff=5)
ROI, SEM = "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.SEM_SEG_HEAD.NUM_CLASSES"
FCN = "MODEL.PANOPTIC_FCN.POSITION_HEAD"


def _cfg(arch, *opts):
    return load_cfg(
        "quick_schedules/panoptic_fpn_synthetic.yaml", "MODEL.META_ARCHITECTURE", arch, *opts
    )


@pytest.mark.parametrize(
    "arch, opts, expected",
    [
        ("GeneralizedRCNN", [], {ROI: 3}),
        ("PanopticFPN", [], {ROI: 3, SEM: 6}),
        ("PanopticFPN", ["INPUT.SEM_SEG_FORMAT", "all_classes"], {ROI: 3, SEM: 8}),
        ("PanopticFPN", ["INPUT.SEM_SEG_FORMAT", "none"], {ROI: 3}),
        ("SemanticSegmentor", [], {SEM: 6}),
        ("PanopticFCN", [], {f"{FCN}.THING.NUM_CLASSES": 3, f"{FCN}.STUFF.NUM_CLASSES": 6}),
        (
            "PanopticFCN",
            [f"{FCN}.STUFF.WITH_THING", False],
            {f"{FCN}.THING.NUM_CLASSES": 3, f"{FCN}.STUFF.NUM_CLASSES": 5},
        ),
        ("SomeoneElsesArch", [], {}),
    ],
)
def test_class_count_rules(arch, opts, expected):
    assert class_counts_for(_cfg(arch, *opts), CLASSES) == expected


def test_outputs_and_masks():
    assert meta_arch_info(_cfg("SemanticSegmentor")).outputs == {ModelOutput.SEM_SEG}
    assert meta_arch_info(_cfg("GeneralizedRCNN")).outputs == {ModelOutput.INSTANCE}
    assert meta_arch_info(_cfg("SomeoneElsesArch")).outputs == set(ModelOutput)
    fcn = _cfg("PanopticFCN", "MODEL.MASK_ON", False)
    assert meta_arch_info(fcn).instance_masks(fcn)
    rcnn = _cfg("GeneralizedRCNN", "MODEL.MASK_ON", False)
    assert not meta_arch_info(rcnn).instance_masks(rcnn)
    # Every output names an evaluator of the evaluator table, and nothing else does.
    names = {name for table in EVALUATOR_TABLE.values() for name in table}
    assert names == {o.value for o in ModelOutput}
    for info in META_ARCHITECTURES.values():
        assert info.outputs <= set(ModelOutput)


def test_one_new_entry_drives_every_check(monkeypatch):
    """A model added to the table alone is checked by the trainer, the label check, the dataset
    validator and the evaluator choice."""
    register_tiny()
    entry = MetaArchInfo(frozenset({ModelOutput.SEM_SEG}), (sem_seg_head_counts,))
    monkeypatch.setitem(META_ARCHITECTURES, "MyArch", entry)
    good = _cfg("MyArch", *TINY_OPTS, "MODEL.ROI_HEADS.NUM_CLASSES", 99)  # ROI heads: unused
    check_class_counts(good)
    checked = CheckedMapper.from_config(good, mapper=lambda d: d)
    assert checked.num_sem_seg_classes == 4 and checked.num_thing_classes is None
    assert isinstance(build_evaluators(good, "synthetic_panoptic_val"), SemSegEvaluator)
    assert check_config_class_counts(good, SYNTHETIC_CATEGORIES) == []

    bad = _cfg("MyArch", *TINY_OPTS, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 7)
    with pytest.raises(ValueError, match=r"MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7.*implies 4"):
        check_class_counts(bad)
    (problem,) = check_config_class_counts(bad, SYNTHETIC_CATEGORIES)
    assert problem.code == "class_count_mismatch" and problem.id == SEM
