"""Every shipped yaml merges and builds; registration and config checks behave."""

import glob
import os

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    ROI_BOX_HEAD_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
    SEM_SEG_HEADS_REGISTRY,
)
from helpers import CONFIGS, build_tiny_model, load_cfg, register_tiny

import panoptic_ext
from panoptic_ext.engine.class_count_checks import check_class_counts
from panoptic_ext.utils.yaml_config import merge_config_file

ALL_YAMLS = sorted(
    os.path.relpath(p, CONFIGS)
    for p in glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


def test_there_are_configs_for_each_family():
    assert "quick_schedules/panoptic_fpn_synthetic.yaml" in ALL_YAMLS
    assert "quick_schedules/semantic_fpn_synthetic.yaml" in ALL_YAMLS
    assert any(p.startswith("COCO-PanopticSegmentation/panoptic_fpn") for p in ALL_YAMLS)
    assert any(p.startswith("Cityscapes/") for p in ALL_YAMLS)
    assert any(p.startswith("ADE20K/") for p in ALL_YAMLS)


@pytest.mark.parametrize("name", ALL_YAMLS)
def test_yaml_merges_and_builds(name):
    cfg = load_cfg(name, "MODEL.WEIGHTS", "")
    model = build_tiny_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert model.pixel_mean.device.type == "cpu"


def test_import_registers_every_name():
    assert "SemanticFPNHead" in SEM_SEG_HEADS_REGISTRY
    assert "build_resnet_pafpn_backbone" in BACKBONE_REGISTRY
    assert "PANetROIHeads" in ROI_HEADS_REGISTRY
    assert "PANetBoxHead" in ROI_BOX_HEAD_REGISTRY
    assert "PANetMaskHead" in ROI_MASK_HEAD_REGISTRY
    if "PanopticFCN" not in META_ARCH_REGISTRY:
        pytest.xfail("PanopticFCN meta-architecture not landed yet (issue 4)")


def test_adder_only_adds_and_is_idempotent():
    plain = get_cfg()
    cfg = panoptic_ext.add_panoptic_ext_config(get_cfg())
    flat = lambda c, p="": {  # noqa: E731
        k2: v2
        for k, v in c.items()
        for k2, v2 in (flat(v, p + k + ".").items() if isinstance(v, dict) else {p + k: v}.items())
    }
    before, after = flat(plain), flat(cfg)
    assert all(after[k] == v for k, v in before.items())  # no detectron2 value changed
    assert "MODEL.SEMANTIC_FPN.CONV_TYPE" in after and "INPUT.SEM_SEG_FORMAT" in after
    cfg.INPUT.SEM_SEG_FORMAT = "all_classes"
    panoptic_ext.add_panoptic_ext_config(cfg)
    assert cfg.INPUT.SEM_SEG_FORMAT == "all_classes"


def test_unknown_config_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    base = f"{CONFIGS}/quick_schedules/panoptic_fpn_synthetic.yaml"
    bad.write_text(f'_BASE_: "{base}"\nMODEL:\n  SEM_SEG_HEAD:\n    NUM_CLASES: 4\n')
    cfg = panoptic_ext.add_panoptic_ext_config(get_cfg())
    with pytest.raises(KeyError, match="MODEL.SEM_SEG_HEAD.NUM_CLASES"):
        merge_config_file(cfg, str(bad))


def test_renamed_key_still_works_with_a_deprecation_warning(tmp_path, caplog):
    """SOLVER.SPARSE_ROI_ALIGN_GRAD (old name) sets MODEL.ROI_HEADS.SPARSE_ROI_ALIGN_GRAD from a
    yaml file or an override, warning with both names; the built config holds the new name only."""
    from panoptic_ext.config import build_cfg

    base = f"{CONFIGS}/quick_schedules/panoptic_fpn_synthetic.yaml"
    old = tmp_path / "old.yaml"
    old.write_text(f'_BASE_: "{base}"\nSOLVER:\n  SPARSE_ROI_ALIGN_GRAD: false\n')
    assert build_cfg(base).MODEL.ROI_HEADS.SPARSE_ROI_ALIGN_GRAD is True  # the default
    for config_file, opts in ((str(old), []), (base, ["SOLVER.SPARSE_ROI_ALIGN_GRAD", "False"])):
        caplog.clear()
        with caplog.at_level("WARNING", logger="panoptic_ext"):
            cfg = build_cfg(config_file, opts)
        assert cfg.MODEL.ROI_HEADS.SPARSE_ROI_ALIGN_GRAD is False
        assert "SPARSE_ROI_ALIGN_GRAD" not in cfg.SOLVER
        warned = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
        assert len(warned) == 1 and "MODEL.ROI_HEADS.SPARSE_ROI_ALIGN_GRAD" in warned[0]
        assert "SOLVER.SPARSE_ROI_ALIGN_GRAD" in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="panoptic_ext"):
        cfg = build_cfg(base, ["MODEL.ROI_HEADS.SPARSE_ROI_ALIGN_GRAD", "False"])
    assert cfg.MODEL.ROI_HEADS.SPARSE_ROI_ALIGN_GRAD is False
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]


def test_class_count_mismatch_names_key_and_dataset():
    register_tiny()
    cfg = load_cfg(
        "quick_schedules/panoptic_fpn_synthetic.yaml", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 3
    )
    with pytest.raises(
        ValueError, match=r"MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3.*synthetic_panoptic_train.*4"
    ):
        check_class_counts(cfg)
    cfg = load_cfg("quick_schedules/panoptic_fpn_synthetic.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", 80)
    with pytest.raises(ValueError, match=r"MODEL.ROI_HEADS.NUM_CLASSES = 80.*implies 3"):
        check_class_counts(cfg)
    check_class_counts(load_cfg("quick_schedules/panoptic_fpn_synthetic.yaml"))


def test_setup_cfg_names_the_yaml_of_an_unknown_key(tmp_path):
    import argparse

    from panoptic_ext.engine import setup_cfg

    bad = tmp_path / "bad.yaml"
    base = f"{CONFIGS}/quick_schedules/panoptic_fpn_synthetic.yaml"
    bad.write_text(f'_BASE_: "{base}"\nSOLVER:\n  MAX_ITERS: 4\n')
    args = argparse.Namespace(config_file=str(bad), opts=[], eval_only=False, resume=False)
    with pytest.raises(KeyError, match=r"bad\.yaml.*SOLVER\.MAX_ITERS"):
        setup_cfg(args)
    args = argparse.Namespace(config_file=base, opts=["MODEL.NOPE", "1"], eval_only=False)
    with pytest.raises(KeyError, match=r"command-line override.*MODEL\.NOPE"):
        setup_cfg(args)


def test_train_loader_choice_follows_grouping_and_determinism():
    from panoptic_ext.data.train_loader import ResumableLoader
    from panoptic_ext.engine import Trainer

    register_tiny()
    name = "quick_schedules/panoptic_fpn_synthetic.yaml"
    opts = ("DATASETS.SYNTHETIC.IMAGE_SIZE", 64, "DATASETS.SYNTHETIC.NUM_TRAIN", 8)
    assert isinstance(Trainer.build_train_loader(load_cfg(name, *opts)), ResumableLoader)
    grouped = load_cfg(name, *opts, "DATALOADER.ASPECT_RATIO_GROUPING", True)
    assert not isinstance(Trainer.build_train_loader(grouped), ResumableLoader)
    exact = load_cfg(
        name, *opts, "DATALOADER.ASPECT_RATIO_GROUPING", True, "DETERMINISTIC", True, "SEED", 1
    )
    assert isinstance(Trainer.build_train_loader(exact), ResumableLoader)


def test_panoptic_fcn_class_counts_are_checked():
    register_tiny()
    name = "quick_schedules/panoptic_fcn_synthetic.yaml"
    check_class_counts(load_cfg(name))
    key = "MODEL.PANOPTIC_FCN.POSITION_HEAD.STUFF.NUM_CLASSES"
    with pytest.raises(ValueError, match=rf"{key} = 3.*implies 4"):
        check_class_counts(load_cfg(name, key, 3))
