"""tools/convert_dataset.py: panoptic -> separated -> panoptic round trip and overlap policies."""

import importlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from panoptic_ext.data.converters import merge_image_to_panoptic
from panoptic_ext.data.datasets.synthetic import SyntheticSpec, generate_split
from panoptic_ext.data.panoptic_io import read_panoptic_png
from panoptic_ext.data.validation import validate_panoptic_dataset


def _tool():
    return importlib.import_module("panoptic_ext.cli.convert_dataset")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("convert"))
    generate_split(
        root, "val", SyntheticSpec(image_size=48, num_images=8, seed=2, crowd_fraction=0.6)
    )
    with open(os.path.join(root, "panoptic_val.json")) as f:
        data = json.load(f)
    assert any(s["iscrowd"] for a in data["annotations"] for s in a["segments_info"])
    return root, data


def test_round_trip_panoptic_separated_panoptic(synthetic, tmp_path):
    root, data = synthetic
    tool = _tool()
    out = str(tmp_path)
    assert (
        tool.main(
            [
                "to-separated",
                "--panoptic-json",
                os.path.join(root, "panoptic_val.json"),
                "--panoptic-root",
                os.path.join(root, "panoptic_val"),
                "--out-instances-json",
                f"{out}/instances.json",
                "--out-semantic-root",
                f"{out}/sem",
            ]
        )  # fmt: skip
        == 0
    )
    # Same things-as-one PNGs as the generator's (made by the mapper's label functions).
    for ann in data["annotations"]:
        ours = np.asarray(Image.open(f"{out}/sem/{ann['file_name']}"))
        ref = np.asarray(Image.open(os.path.join(root, "panoptic_semseg_val", ann["file_name"])))
        np.testing.assert_array_equal(ours, ref)
    with open(f"{out}/instances.json") as f:
        instances = json.load(f)
    with open(os.path.join(root, "instances_val.json")) as f:
        ref_instances = json.load(f)
    key = lambda a: (a["image_id"], a["bbox"], a["area"])  # noqa: E731
    assert sorted(map(key, instances["annotations"])) == sorted(
        map(key, ref_instances["annotations"])
    )
    assert {c["id"] for c in instances["categories"]} == {3, 7, 12}

    # Back to panoptic: semantic PNGs with stuff *dataset* ids (void 0) + the instances JSON.
    os.makedirs(f"{out}/stuff_ids")
    for ann in data["annotations"]:
        ids = read_panoptic_png(os.path.join(root, "panoptic_val", ann["file_name"]))
        sem = np.zeros(ids.shape, np.uint8)
        for s in ann["segments_info"]:
            if s["category_id"] in (9, 21, 30):
                sem[ids == s["id"]] = s["category_id"]
        Image.fromarray(sem).save(f"{out}/stuff_ids/{ann['file_name']}")
    stuff = [c for c in data["categories"] if not c["isthing"]]
    with open(f"{out}/stuff.json", "w") as f:
        json.dump(stuff, f)
    assert (
        tool.main(
            [
                "to-panoptic",
                "--instances-json",
                f"{out}/instances.json",
                "--semantic-root",
                f"{out}/stuff_ids",
                "--stuff-categories",
                f"{out}/stuff.json",
                "--out-json",
                f"{out}/pan.json",
                "--out-png-root",
                f"{out}/pan",
            ]
        )  # fmt: skip
        == 0
    )
    assert [
        p
        for p in validate_panoptic_dataset(f"{out}/pan.json", None, f"{out}/pan")
        if p.level == "error"
    ] == []
    with open(f"{out}/pan.json") as f:
        back = {a["image_id"]: a for a in json.load(f)["annotations"]}
    for ann in data["annotations"]:
        orig = read_panoptic_png(os.path.join(root, "panoptic_val", ann["file_name"])).astype(
            np.int64
        )
        new = read_panoptic_png(f"{out}/pan/{back[ann['image_id']]['file_name']}").astype(np.int64)
        # Same partition into segments (ids differ) and the same category and crowd flag each.
        pairs = np.unique(np.stack([orig.ravel(), new.ravel()]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
        orig_segs = {s["id"]: s for s in ann["segments_info"]}
        new_segs = {s["id"]: s for s in back[ann["image_id"]]["segments_info"]}
        for o, n in pairs.T.tolist():
            if o == 0:
                assert n == 0
                continue
            for field in ("category_id", "iscrowd", "area", "bbox"):
                assert orig_segs[o][field] == new_segs[n][field], field


def _square(ann_id, y0, x0, size, cat=1, iscrowd=0):
    poly = [x0, y0, x0 + size, y0, x0 + size, y0 + size, x0, y0 + size]
    return {"id": ann_id, "category_id": cat, "segmentation": [poly], "iscrowd": iscrowd}


def test_overlap_policies():
    semantic = np.full((12, 12), 40, np.uint8)
    semantic[:, :2] = 255  # void
    big, small = _square(1, 1, 2, 6), _square(2, 5, 6, 4)  # overlap on rows 5-6, cols 6-7
    args = ({1}, {40})
    with pytest.raises(
        ValueError, match=r"img\.png: instance annotations \[1, 2\] overlap on 4 pixels"
    ):
        merge_image_to_panoptic(semantic, [big, small], *args, overlap="fail", image_name="img.png")

    ids, segs, report = merge_image_to_panoptic(semantic, [big, small], *args, overlap="area")
    by_cat = {(s["category_id"], s["area"]) for s in segs}
    assert by_cat == {(1, 36 - 4), (1, 16), (40, 144 - 24 - 36 - 16 + 4)}
    assert report["overlapping_pixels"] == 4
    small_id = next(s["id"] for s in segs if s["area"] == 16)
    assert (ids[5:7, 6:8] == small_id).all()  # the smaller instance wins

    ids, segs, _ = merge_image_to_panoptic(semantic, [big, small], *args, overlap="skip")
    assert (ids[5:7, 6:8] == 0).all()  # void, and stuff does not take it either
    assert sorted(s["area"] for s in segs) == [12, 32, 144 - 24 - 36 - 16 + 4]
    assert (ids[:, :2] == 0).all()
    with pytest.raises(ValueError, match="overlap policy must be one of"):
        merge_image_to_panoptic(semantic, [big], *args, overlap="largest")


def test_crowds_merge_and_bad_labels():
    semantic = np.full((12, 12), 40, np.uint8)
    crowds = [_square(7, 0, 0, 3, iscrowd=1), _square(8, 8, 8, 3, iscrowd=1)]
    thing = _square(9, 1, 1, 4)  # overlaps the first crowd: the instance keeps its pixels
    ids, segs, _ = merge_image_to_panoptic(semantic, [thing, *crowds], {1}, {40})
    crowd_segs = [s for s in segs if s["iscrowd"]]
    assert len(crowd_segs) == 1 and crowd_segs[0]["area"] == 9 - 4 + 9
    assert next(s for s in segs if s["category_id"] == 1 and not s["iscrowd"])["area"] == 16
    semantic[0, 0] = 77
    with pytest.raises(ValueError, match=r"sem\.png: semantic values \[77\]"):
        merge_image_to_panoptic(semantic, [], {1}, {40}, image_name="sem.png")
    with pytest.raises(ValueError, match=r"non-thing categories \[40\]"):
        merge_image_to_panoptic(semantic, [_square(1, 0, 0, 2, cat=40)], {1}, {40, 77})
