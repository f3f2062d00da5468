"""The synthetic generator writes a valid, deterministic COCO-panoptic dataset."""

import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from panoptic_ext.data.datasets.synthetic import SYNTHETIC_CATEGORIES, SyntheticSpec, generate_split
from panoptic_ext.structures.panoptic_ids import rgb_to_id


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("syn"))
    generate_split(out, "train", SyntheticSpec(image_size=96, num_images=24, seed=3))
    with open(os.path.join(out, "panoptic_train.json")) as f:
        return out, json.load(f)


def test_deterministic(split, tmp_path):
    out, data = split
    generate_split(str(tmp_path), "train", SyntheticSpec(image_size=96, num_images=24, seed=3))
    with open(tmp_path / "panoptic_train.json") as f:
        assert json.load(f) == data
    a = np.asarray(Image.open(os.path.join(out, "panoptic_train", "train_000005.png")))
    b = np.asarray(Image.open(tmp_path / "panoptic_train" / "train_000005.png"))
    assert np.array_equal(a, b)


def test_dataset_properties(split):
    out, data = split
    cats = {c["id"]: c for c in data["categories"]}
    ids = sorted(cats)
    assert ids != list(range(ids[0], ids[0] + len(ids)))  # non-contiguous like COCO
    assert sum(c["isthing"] for c in cats.values()) >= 3
    assert sum(not c["isthing"] for c in cats.values()) >= 3
    num_things = [
        sum(cats[s["category_id"]]["isthing"] and not s["iscrowd"] for s in a["segments_info"])
        for a in data["annotations"]
    ]
    assert 0 in num_things and max(num_things) >= 3
    assert any(s["iscrowd"] for a in data["annotations"] for s in a["segments_info"])
    sizes = [
        max(s["bbox"][2:])
        for a in data["annotations"]
        for s in a["segments_info"]
        if cats[s["category_id"]]["isthing"]
    ]
    assert min(sizes) <= 16 and max(sizes) >= 40  # 8 px .. half the image


def test_png_matches_segments_info(split):
    out, data = split
    for ann in data["annotations"][:8]:
        ids = rgb_to_id(
            np.asarray(Image.open(os.path.join(out, "panoptic_train", ann["file_name"])))
        )
        png_ids = set(np.unique(ids).tolist()) - {0}
        assert png_ids == {s["id"] for s in ann["segments_info"]}
        for seg in ann["segments_info"]:
            ys, xs = np.nonzero(ids == seg["id"])
            assert seg["area"] == len(ys)
            assert seg["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
        image = Image.open(os.path.join(out, "train", ann["file_name"].replace(".png", ".jpg")))
        assert image.mode == "RGB" and image.size == (96, 96)


def test_pq_of_ground_truth_against_itself_is_100(split, tmp_path):
    from panopticapi.evaluation import pq_compute

    out, _ = split
    gt_json = os.path.join(out, "panoptic_train.json")
    gt_dir = os.path.join(out, "panoptic_train")
    results = pq_compute(gt_json, gt_json, gt_dir, gt_dir)
    assert results["All"]["pq"] == pytest.approx(1.0)
    assert results["Things"]["pq"] == pytest.approx(1.0)
    assert results["Stuff"]["pq"] == pytest.approx(1.0)


def test_registered_metadata():
    meta = MetadataCatalog.get("synthetic_panoptic_val")
    things = [c for c in SYNTHETIC_CATEGORIES if c["isthing"]]
    stuff = [c for c in SYNTHETIC_CATEGORIES if not c["isthing"]]
    assert meta.thing_classes == [c["name"] for c in things]
    assert meta.stuff_classes == ["things"] + [c["name"] for c in stuff]
    assert meta.thing_dataset_id_to_contiguous_id == {c["id"]: i for i, c in enumerate(things)}
    assert meta.stuff_dataset_id_to_contiguous_id == {
        0: 0,
        **{c["id"]: i + 1 for i, c in enumerate(stuff)},
    }
    assert meta.evaluator_type == "coco_panoptic_seg"
    assert len(meta.thing_colors) == 3 and len(meta.stuff_colors) == 4
    assert "synthetic_panoptic_train" in DatasetCatalog.list()
