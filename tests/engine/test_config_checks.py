"""Config values that cannot work are refused naming the key; doubtful ones are warned about."""

import pytest
from helpers import load_cfg

from panoptic_ext.engine.config_checks import check_config_values, check_stuff_area_limit


def _cfg(name="panoptic_fpn_synthetic.yaml", *opts):
    return load_cfg(f"quick_schedules/{name}", *opts)


def test_training_values_are_refused_together_naming_each_key():
    cfg = _cfg("panoptic_fpn_synthetic.yaml", "SOLVER.IMS_PER_BATCH", 6, "SOLVER.MAX_ITER", -1,
               "DATALOADER.NUM_WORKERS", -2, "DATASETS.TRAIN", ())  # fmt: skip
    with pytest.raises(ValueError) as err:
        check_config_values(cfg, training=True, world_size=4)
    message = str(err.value)
    for part in ("SOLVER.IMS_PER_BATCH = 6 cannot be split over 4 processes",
                 "SOLVER.MAX_ITER = -1", "DATALOADER.NUM_WORKERS = -2",
                 "DATASETS.TRAIN is empty"):  # fmt: skip
        assert part in message
    # Evaluation reads none of the training keys; NUM_WORKERS still matters.
    with pytest.raises(ValueError, match="NUM_WORKERS") as err:
        check_config_values(cfg, training=False)
    assert "IMS_PER_BATCH" not in str(err.value)
    check_config_values(_cfg(), training=True, world_size=2)  # the shipped values pass


def test_values_that_do_nothing_useful_are_warned_about(caplog):
    cfg = _cfg("panoptic_fpn_synthetic.yaml", "SOLVER.BASE_LR", 0.0, "TEST.DETECTIONS_PER_IMAGE", 0)
    check_config_values(cfg, training=True)
    assert "SOLVER.BASE_LR = 0: the weights will not change" in caplog.text
    assert "TEST.DETECTIONS_PER_IMAGE = 0: no instance will be predicted" in caplog.text


@pytest.mark.parametrize(
    "name, key",
    [
        ("panoptic_fpn_synthetic.yaml", "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT"),
        ("panoptic_fcn_synthetic.yaml", "MODEL.PANOPTIC_FCN.INFERENCE.COMBINE.STUFF_AREA_LIMIT"),
    ],
)
def test_stuff_area_limit_against_the_largest_image(name, key):
    records = [{"height": 40, "width": 50}, {"height": 64, "width": 60}, {"file_name": "x"}]
    assert check_stuff_area_limit(_cfg(name, key, 3840), records, "d") is None  # = 64 x 60
    warning = check_stuff_area_limit(_cfg(name, key, 3841), records, "d")
    assert warning.startswith(f"{key} = 3841 is larger than every image of d (the largest is "
                              "64x60 = 3840 pixels)")  # fmt: skip
    assert check_stuff_area_limit(_cfg("semantic_fpn_synthetic.yaml"), records, "d") is None
