"""Registration reads nothing: the JSON is opened when a dataset is first used, and the class
metadata comes from the file's tail when ``categories`` is its last member."""

import json
import os
import subprocess
import sys

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers import REPO

from panoptic_ext.data.datasets import register_panoptic_dataset
from panoptic_ext.data.datasets.lazy_metadata import LazyMetadata
from panoptic_ext.data.datasets.register import read_categories
from panoptic_ext.data.datasets.synthetic import SYNTHETIC_CATEGORIES

# Counts every open() of the builtin COCO train JSON: during import, then on first use.
_PROBE = r"""
import sys
opened = []
sys.addaudithook(lambda event, args: event == "open" and str(args[0]).endswith(
    "panoptic_train2017.json") and opened.append(event))
import panoptic_ext
from detectron2.data import DatasetCatalog, MetadataCatalog
at_import = len(opened)
classes = MetadataCatalog.get("coco_2017_train_panoptic_ext").thing_classes
at_metadata = len(opened)
records = DatasetCatalog.get("coco_2017_train_panoptic_ext")
import json
print(json.dumps([at_import, at_metadata, len(opened), classes, len(records)]))
"""


def _write_coco_like(path, categories):
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 4, "width": 4} for i in range(3)]
    annotations = [{"image_id": i, "file_name": f"{i}.png", "segments_info": []} for i in range(3)]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def test_import_opens_no_builtin_json(tmp_path):
    root = tmp_path / "datasets"
    for folder in ("coco/annotations", "coco/train2017", "coco/panoptic_train2017"):
        os.makedirs(root / folder)
    _write_coco_like(root / "coco/annotations/panoptic_train2017.json", SYNTHETIC_CATEGORIES)
    env = dict(os.environ, PYTHONPATH=REPO, DETECTRON2_DATASETS=str(root))
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    at_import, at_metadata, total, classes, records = json.loads(out.stdout.splitlines()[-1])
    assert (at_import, at_metadata, total) == (0, 1, 2)  # tail read for metadata, full for dicts
    assert classes == ["disk", "box", "triangle"] and records == 3


def test_categories_read_from_the_tail_equal_the_full_parse(tmp_path):
    path = tmp_path / "tail.json"
    _write_coco_like(path, SYNTHETIC_CATEGORIES)
    assert read_categories(str(path)) == SYNTHETIC_CATEGORIES
    # categories first: the fallback parses the whole file.
    first = tmp_path / "first.json"
    first.write_text(json.dumps({"categories": SYNTHETIC_CATEGORIES, "images": [], "info": {}}))
    assert read_categories(str(first)) == SYNTHETIC_CATEGORIES


def test_a_nested_or_quoted_categories_key_is_not_taken_for_the_real_one(tmp_path):
    decoy = [{"id": 99, "name": "decoy", "isthing": 1}]
    nested = tmp_path / "nested.json"
    nested.write_text(
        json.dumps({"categories": SYNTHETIC_CATEGORIES, "info": {"categories": decoy}})
    )
    assert read_categories(str(nested)) == SYNTHETIC_CATEGORIES
    quoted = tmp_path / "quoted.json"
    text = '"categories": [{"id": 99}]}'
    quoted.write_text(json.dumps({"categories": SYNTHETIC_CATEGORIES, "note": text}))
    assert read_categories(str(quoted)) == SYNTHETIC_CATEGORIES
    broken = tmp_path / "none.json"
    broken.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="none.json: no 'categories'"):
        read_categories(str(broken))


def test_metadata_is_derived_once_on_first_use(tmp_path):
    path = tmp_path / "p.json"
    _write_coco_like(path, SYNTHETIC_CATEGORIES)
    name = "lazy_registration_test"
    register_panoptic_dataset(name, str(tmp_path), str(tmp_path), str(path))
    try:
        meta = MetadataCatalog.get(name)
        assert isinstance(meta, LazyMetadata) and not meta.is_loaded
        assert meta.evaluator_type == "coco_panoptic_seg" and not meta.is_loaded
        assert meta.stuff_classes == ["things", "sky", "wall", "ground"] and meta.is_loaded
        assert meta.as_dict()["thing_dataset_id_to_contiguous_id"] == {3: 0, 7: 1, 12: 2}
        assert "_derive" not in meta.as_dict()
        assert len(DatasetCatalog.get(name)) == 3
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_a_failed_derivation_is_retried_and_keys_cannot_be_both_given_and_derived(tmp_path):
    calls = []

    def derive():
        calls.append(1)
        if len(calls) == 1:
            raise FileNotFoundError("not yet")
        return {"thing_classes": ["a"]}

    meta = LazyMetadata("retry", derive, ["thing_classes"])
    with pytest.raises(FileNotFoundError):
        meta.get("thing_classes")
    assert meta.thing_classes == ["a"] and len(calls) == 2
    assert meta.get("stuff_classes") is None
    with pytest.raises(ValueError, match="both given and derived"):
        LazyMetadata("both", derive, ["thing_classes"], thing_classes=["b"])
