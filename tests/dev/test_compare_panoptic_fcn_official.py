"""The parts of dev/compare_panoptic_fcn_official.py that need no official code: the config
translation tables and the safe reading of the official yaml (its output comparison is
panoptic_ext.evaluation.compare, tested in tests/evaluation/test_compare.py)."""

import types

import pytest
from helpers import QUICK, config_path, refusal_pattern, tagged_chain

import dev.compare_panoptic_fcn_official
from panoptic_ext.config import build_cfg
from panoptic_ext.utils.yaml_config import UnsafeConfigError


@pytest.fixture(scope="module")
def tool():
    return dev.compare_panoptic_fcn_official


def test_translation_table_names_existing_keys(tool):
    cfg = tool.our_config(config_path("quick_schedules/panoptic_fcn_synthetic.yaml"), [])
    for key in list(tool.OFFICIAL_KEYS) + list(tool.HARD_CODED):
        tool._get(cfg, key)  # KeyError when a key of ours is renamed
    with pytest.raises(SystemExit, match="LEVEL_TOP_NUM"):
        tool.our_config(
            config_path("quick_schedules/panoptic_fcn_synthetic.yaml"),
            ["MODEL.PANOPTIC_FCN.POSITION_HEAD.THING.LEVEL_TOP_NUM", 10],
        )


def test_official_yaml_is_read_by_the_safe_loader(tmp_path):
    """The official yaml is merged into the official cfg by the same safe reader as ours: a
    tagged ``_BASE_`` chain is refused and its payload never runs."""
    marker = tmp_path / "PWNED"
    top, middle = tagged_chain(str(tmp_path), marker)
    stub = types.SimpleNamespace(add_panopticfcn_config=lambda cfg: None)
    with pytest.raises(UnsafeConfigError, match=refusal_pattern(middle)):
        dev.compare_panoptic_fcn_official.official_config(stub, build_cfg(QUICK, []), top)
    assert not marker.exists()
