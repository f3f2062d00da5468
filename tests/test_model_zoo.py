"""Configs ship inside the package and are found like detectron2.model_zoo finds its own."""

import os

import pytest
from helpers import REPO

from panoptic_ext import model_zoo


def test_every_shipped_config_resolves_its_base_chain():
    configs = [c for c in model_zoo.list_configs() if not os.path.basename(c).startswith("Base-")]
    assert "COCO-PanopticSegmentation/panoptic_fcn_R_50_3x.yaml" in configs
    assert "quick_schedules/panoptic_fpn_synthetic.yaml" in configs
    for config in configs:
        cfg = model_zoo.get_config(config, device="cpu")
        assert cfg.MODEL.META_ARCHITECTURE and not cfg.is_frozen(), config


def test_get_config_file_and_overrides():
    path = model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fcn_R_50_3x.yaml")
    assert os.path.isfile(path) and path.startswith(model_zoo.CONFIG_ROOT)
    cfg = model_zoo.get_config(
        "quick_schedules/panoptic_fpn_synthetic.yaml", ["SOLVER.MAX_ITER", 7]
    )
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.META_ARCHITECTURE == "PanopticFPN"
    # The checkout's top-level configs/ is the same folder.
    assert os.path.samefile(os.path.join(REPO, "configs"), model_zoo.CONFIG_ROOT)


@pytest.mark.parametrize("bad", ["COCO-PanopticSegmentation/nope.yaml", "../../setup.py", ""])
def test_unknown_config_names_the_path_and_lists_what_exists(bad):
    with pytest.raises(FileNotFoundError) as err:
        model_zoo.get_config_file(bad)
    assert repr(bad) in str(err.value) and "available:" in str(err.value)
