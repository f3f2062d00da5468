"""The meta-architecture table: class-count rules per model, one complete entry per model, and
one entry drives every check."""

import ast
import dataclasses
import glob
import os
import re

import pytest
from detectron2.evaluation import SemSegEvaluator
from detectron2.modeling import META_ARCH_REGISTRY
from helpers import REPO, TINY_OPTS, load_cfg, register_tiny

from panoptic_ext.data.datasets.synthetic import SYNTHETIC_CATEGORIES
from panoptic_ext.data.train_loader import CheckedMapper
from panoptic_ext.data.validation import check_config_class_counts
from panoptic_ext.engine.class_count_checks import check_class_counts
from panoptic_ext.engine.evaluator_table import EVALUATOR_TABLE, build_evaluators
from panoptic_ext.export.families import IMPLEMENTATIONS, family_of
from panoptic_ext.utils.config_keys import config_value
from panoptic_ext.utils.meta_arch import (
    META_ARCHITECTURES,
    BrowsePanel,
    DatasetClasses,
    ExportFamily,
    MetaArchInfo,
    ModelOutput,
    class_counts_for,
    meta_arch_info,
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
    # A semantic model like SemanticSegmentor, under a new name.
    entry = dataclasses.replace(META_ARCHITECTURES["SemanticSegmentor"])
    monkeypatch.setitem(META_ARCHITECTURES, "MyArch", entry)
    good = _cfg("MyArch", *TINY_OPTS, "MODEL.ROI_HEADS.NUM_CLASSES", 99)  # ROI heads: unused
    check_class_counts(good)
    checked = CheckedMapper.from_config(good, mapper=lambda d: d)
    assert checked.num_sem_seg_classes == 4 and checked.num_thing_classes is None
    assert isinstance(build_evaluators(good, "synthetic_panoptic_val"), SemSegEvaluator)
    assert check_config_class_counts(good, SYNTHETIC_CATEGORIES) == []
    assert family_of("MyArch") is IMPLEMENTATIONS[ExportFamily.SEMANTIC]
    assert meta_arch_info(good).browse_panels == (BrowsePanel.SEMANTIC,)

    bad = _cfg("MyArch", *TINY_OPTS, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 7)
    with pytest.raises(ValueError, match=r"MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7.*implies 4"):
        check_class_counts(bad)
    (problem,) = check_config_class_counts(bad, SYNTHETIC_CATEGORIES)
    assert problem.code == "class_count_mismatch" and problem.id == SEM


PACKAGE = os.path.join(REPO, "panoptic_ext")
TABLE_FILE = os.path.join(PACKAGE, "utils", "meta_arch.py")


def _supported() -> set[str]:
    """The meta-architectures panoptic_ext registers and the detectron2 ones its configs use."""
    ours = {
        name for name, cls in META_ARCH_REGISTRY if cls.__module__.split(".")[0] == "panoptic_ext"
    }
    used = set()
    for path in glob.glob(os.path.join(PACKAGE, "configs", "**", "*.yaml"), recursive=True):
        used |= set(re.findall(r'META_ARCHITECTURE: "?(\w+)"?', open(path).read()))
    return ours | used


def test_every_supported_meta_architecture_has_one_complete_entry():
    supported = _supported()
    assert {"PanopticFCN", "PanopticFPN", "GeneralizedRCNN", "SemanticSegmentor"} <= supported
    assert set(META_ARCHITECTURES) == supported  # no model missing, no stale entry
    # Exactly one: the table literal names each meta-architecture once (a repeated key of a
    # dict literal silently replaces the first entry).
    (table,) = [
        n.value
        for n in ast.walk(ast.parse(open(TABLE_FILE).read()))
        if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "META_ARCHITECTURES"
    ]
    keys = [k.value for k in table.keys]
    assert sorted(keys) == sorted(set(keys)) == sorted(supported)
    # Complete: every fact stated (the dataclass has no defaults) and consistent.
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(MetaArchInfo))
    for name, info in META_ARCHITECTURES.items():
        cfg = load_cfg("quick_schedules/panoptic_fcn_synthetic.yaml")
        assert info.outputs and info.outputs <= set(ModelOutput), name
        assert info.class_count_rules, name
        assert (info.stuff_area_limit_key is not None) == (ModelOutput.PANOPTIC in info.outputs)
        if info.stuff_area_limit_key:
            config_value(cfg, info.stuff_area_limit_key)  # KeyError when renamed
        assert info.browse_panels and set(info.browse_panels) <= set(BrowsePanel), name
        assert info.export_family in IMPLEMENTATIONS, name
        assert family_of(name) is IMPLEMENTATIONS[info.export_family]


def test_no_other_module_keeps_a_meta_architecture_table():
    """Outside the table, no module of the package keys a dict by a meta-architecture name or
    compares a config's meta-architecture with one: they read the table."""
    names = set(META_ARCHITECTURES)
    found = []
    for path in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True):
        if path == TABLE_FILE:
            continue
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Dict):
                consts = node.keys
            elif isinstance(node, ast.Compare):
                consts = [node.left, *node.comparators]
            else:
                continue
            for c in consts:
                if isinstance(c, ast.Constant) and c.value in names:
                    found.append(f"{os.path.relpath(path, REPO)}:{c.lineno} {c.value}")
    assert found == []
