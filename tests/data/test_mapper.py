"""PanopticDatasetMapper targets agree with the panoptic PNG pixel for pixel."""

import copy
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from helpers import load_cfg, register_tiny
from PIL import Image

from panoptic_ext.data import PanopticDatasetMapper
from panoptic_ext.data.panoptic_targets import PanopticLabelError
from panoptic_ext.structures.panoptic_ids import rgb_to_id


def _mapper(fmt="things_as_one", flip=False):
    meta = MetadataCatalog.get("synthetic_panoptic_train")
    return PanopticDatasetMapper(
        True,
        augmentations=[T.RandomFlip(prob=1.0)] if flip else [],
        image_format="BGR",
        thing_dataset_id_to_contiguous_id=meta.thing_dataset_id_to_contiguous_id,
        stuff_dataset_id_to_contiguous_id=meta.stuff_dataset_id_to_contiguous_id,
        sem_seg_format=fmt,
    )


def _raw_segments(record):
    """The record's segments as the JSON has them (dataset category ids)."""
    meta = MetadataCatalog.get("synthetic_panoptic_train")
    with open(meta.panoptic_json) as f:
        anns = {a["file_name"]: a for a in json.load(f)["annotations"]}
    return anns[os.path.basename(record["pan_seg_file_name"])]["segments_info"]


def _expected(record):
    """Reference targets computed per segment from the PNG and the JSON's own category ids,
    mapped through the metadata, the slow obvious way."""
    meta = MetadataCatalog.get("synthetic_panoptic_train")
    ids = rgb_to_id(np.asarray(Image.open(record["pan_seg_file_name"])))
    sem = np.full(ids.shape, 255, np.int64)
    masks, classes = [], []
    for seg in _raw_segments(record):
        cat = seg["category_id"]
        m = ids == seg["id"]
        if cat in meta.thing_dataset_id_to_contiguous_id:
            sem[m] = 0
            if not seg["iscrowd"]:
                masks.append(m)
                classes.append(meta.thing_dataset_id_to_contiguous_id[cat])
        else:
            sem[m] = meta.stuff_dataset_id_to_contiguous_id[cat]
    return sem, masks, classes


@pytest.mark.parametrize("which", ["no_things", "crowd", "plain"])
def test_targets_match_png(records, which):
    if which == "no_things":
        record = records[0]
    elif which == "crowd":
        record = next(r for r in records if any(s["iscrowd"] for s in r["segments_info"]))
    else:
        record = next(r for r in records if len(r["segments_info"]) >= 5)
    out = _mapper()(copy.deepcopy(record))
    sem, masks, classes = _expected(record)
    assert torch.equal(out["sem_seg"], torch.as_tensor(sem))
    inst = out["instances"]
    assert len(inst) == len(masks)
    assert inst.gt_classes.tolist() == classes
    if masks:
        assert torch.equal(inst.gt_masks.tensor, torch.as_tensor(np.stack(masks)))
        for box, m in zip(inst.gt_boxes.tensor.tolist(), masks):
            ys, xs = np.nonzero(m)
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    else:
        assert inst.gt_masks.tensor.shape == (0, 64, 64) and inst.gt_boxes.tensor.shape == (0, 4)
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.uint8
    if which == "crowd":  # crowd pixels are labelled "things" but are no instance
        assert (out["sem_seg"] == 0).sum() > sum(m.sum() for m in masks)


def test_flip_applies_to_every_target(records):
    record = next(r for r in records if len(r["segments_info"]) >= 5)
    plain = _mapper()(copy.deepcopy(record))
    flipped = _mapper(flip=True)(copy.deepcopy(record))
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert torch.equal(flipped["sem_seg"], plain["sem_seg"].flip(-1))
    assert torch.equal(
        flipped["instances"].gt_masks.tensor, plain["instances"].gt_masks.tensor.flip(-1)
    )


def test_all_classes_format(records):
    record = next(r for r in records if len(r["segments_info"]) >= 5)
    sem_one = _mapper()(copy.deepcopy(record))["sem_seg"]
    out = _mapper("all_classes")(copy.deepcopy(record))
    stuff = (sem_one >= 1) & (sem_one != 255)
    assert torch.equal(out["sem_seg"][stuff], sem_one[stuff] + 3 - 1)  # T=3 things first
    assert out["sem_seg"][sem_one == 0].max() <= 2


def test_unknown_category_names_file_and_id(records):
    record = copy.deepcopy(next(r for r in records if len(r["segments_info"]) >= 5))
    record["segments_info"][1]["category_id"] = 999
    with pytest.raises(PanopticLabelError, match=r"train_\d+\.png.*\[999\]"):
        _mapper()(record)


def test_png_id_without_segment_names_file(records):
    record = copy.deepcopy(next(r for r in records if len(r["segments_info"]) >= 5))
    dropped = record["segments_info"].pop(0)
    with pytest.raises(PanopticLabelError, match=rf"train_\d+\.png.*\[{dropped['id']}\]"):
        _mapper()(record)


def test_missing_png_names_file(records, tmp_path):
    record = copy.deepcopy(records[1])
    record["pan_seg_file_name"] = str(tmp_path / "nope.png")
    with pytest.raises(OSError, match="nope.png"):
        _mapper()(record)


def test_from_config_uses_dataset_metadata():
    register_tiny()
    cfg = load_cfg("quick_schedules/panoptic_fpn_synthetic.yaml")
    mapper = PanopticDatasetMapper(cfg, is_train=True)
    assert mapper.thing_map == {3: 0, 7: 1, 12: 2}
    assert mapper.sem_seg_format == "things_as_one"
