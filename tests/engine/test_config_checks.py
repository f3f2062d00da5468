"""Config values that cannot work are refused naming the key; doubtful ones are warned about."""

import pytest
from helpers import load_cfg

from panoptic_ext.engine.class_count_checks import check_class_counts
from panoptic_ext.engine.config_value_checks import check_config_values, check_stuff_area_limit
from panoptic_ext.engine.launch import register_config_datasets


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


@pytest.mark.parametrize(
    "name, refused",
    [("panoptic_fpn_synthetic.yaml", True), ("panet_synthetic.yaml", True),
     ("semantic_fpn_synthetic.yaml", False)],
)  # fmt: skip
def test_roi_heads_without_a_thing_class_are_refused_naming_the_key(name, refused):
    """A stuff-only dataset gives ROI_HEADS.NUM_CLASSES 0, which detectron2's box head cannot
    take (a reshape error at the first image); semantic models do not read the key."""
    cfg = load_cfg(f"quick_schedules/{name}", "MODEL.ROI_HEADS.NUM_CLASSES", 0,
                   "DATASETS.TRAIN", (), "DATASETS.TEST", ())  # fmt: skip
    if not refused:
        check_class_counts(cfg)
        return
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.NUM_CLASSES = 0: .* needs at least one"):
        check_class_counts(cfg)


def test_register_panoptic_entries_twice_only_when_identical(tmp_path):
    entry = ("mine", str(tmp_path / "img"), str(tmp_path / "png"), str(tmp_path / "a.json"))
    cfg = load_cfg("quick_schedules/panoptic_fpn_synthetic.yaml",
                   "DATASETS.REGISTER_PANOPTIC", [entry, entry])  # fmt: skip
    assert register_config_datasets(cfg) == ["mine"]
    other = (*entry[:3], str(tmp_path / "b.json"))
    cfg.DATASETS.REGISTER_PANOPTIC = [entry, other]
    with pytest.raises(ValueError, match=r"registers the dataset 'mine' twice .*a\.json.*b\.json"):
        register_config_datasets(cfg)
