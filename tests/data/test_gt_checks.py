"""check_ground_truth: warnings with counts, one decode per file state."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from panoptic_ext.data import gt_checks
from panoptic_ext.data.gt_checks import GroundTruthError, check_ground_truth
from panoptic_ext.structures.panoptic_ids import id_to_rgb


def _dataset(tmp_path, crowds: int = 2):
    """Two 8x8 images: a thing (id 5), ``crowds`` crowd segments of category 1, stuff id 9."""
    root = tmp_path / "pngs"
    root.mkdir()
    annotations, images = [], []
    for i in range(2):
        ids = np.full((8, 8), 9)
        ids[:2, :2] = 5
        segments = [{"id": 5, "category_id": 1, "iscrowd": 0, "area": 4}]
        for c in range(crowds):
            ids[7, 2 * c : 2 * c + 2] = 20 + c
            segments.append({"id": 20 + c, "category_id": 1, "iscrowd": 1, "area": 2})
        segments.append({"id": 9, "category_id": 2, "iscrowd": 0, "area": int((ids == 9).sum())})
        Image.fromarray(id_to_rgb(ids)).save(root / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 8, "width": 8})
        annotations.append({"image_id": i, "file_name": f"{i}.png", "segments_info": segments})
    categories = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 0}]
    path = str(tmp_path / "gt.json")
    json.dump(
        {"images": images, "annotations": annotations, "categories": categories}, open(path, "w")
    )
    return path, str(root)


def test_warnings_are_logged_once_with_their_count(tmp_path, caplog):
    path, root = _dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="panoptic_ext.data.gt_checks"):
        warnings = check_ground_truth(path, root, purpose="PQ")
        assert check_ground_truth(path, root, purpose="PQ") == warnings  # cached: logged once
    assert [w.code for w in warnings] == ["multiple_crowd", "multiple_crowd"]
    (record,) = [r.getMessage() for r in caplog.records if "multiple_crowd" in r.getMessage()]
    assert "2 ground-truth segment(s)/image(s) with [multiple_crowd] affect PQ " in record
    assert "(in 2 PNG(s): 0.png, 1.png)" in record and "2 crowd segments of category 1" in record


def test_pngs_are_decoded_once_per_file_state(tmp_path, monkeypatch):
    path, root = _dataset(tmp_path, crowds=1)
    decoded = []
    read = gt_checks.read_panoptic_rows
    monkeypatch.setattr(gt_checks, "read_panoptic_rows", lambda p: decoded.append(p) or read(p))
    assert check_ground_truth(path, root) == []
    assert check_ground_truth(path, root) == []
    assert len(decoded) == 2  # two images, decoded by the first call only
    # A PNG rewritten with an unlisted id is decoded again and refused.
    ids = np.full((8, 8), 9)
    ids[:2, :2], ids[7, :2], ids[4, 4] = 5, 20, 77
    Image.fromarray(id_to_rgb(ids)).save(os.path.join(root, "1.png"))
    st = os.stat(os.path.join(root, "1.png"))
    os.utime(os.path.join(root, "1.png"), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(GroundTruthError, match=r"1.png \(id 77\): 1 pixels have an id with no"):
        check_ground_truth(path, root)
    assert len(decoded) == 4
