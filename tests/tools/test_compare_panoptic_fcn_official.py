"""The parts of tools/compare_panoptic_fcn_official.py that need no official code: the config
translation tables (its output comparison is panoptic_ext.evaluation.compare, tested there)."""

import pytest
from helpers import config_path, load_script


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/compare_panoptic_fcn_official.py")


def test_translation_table_names_existing_keys(tool):
    cfg = tool.our_config(config_path("quick_schedules/panoptic_fcn_synthetic.yaml"), [])
    for key in list(tool.OFFICIAL_KEYS) + list(tool.HARD_CODED):
        tool._get(cfg, key)  # KeyError when a key of ours is renamed
    with pytest.raises(SystemExit, match="LEVEL_TOP_NUM"):
        tool.our_config(
            config_path("quick_schedules/panoptic_fcn_synthetic.yaml"),
            ["MODEL.PANOPTIC_FCN.POSITION_HEAD.THING.LEVEL_TOP_NUM", 10],
        )
