"""The dataset JSON is checked while it is loaded: each planted problem is refused naming the
file, the entry and the value, the validator reports the same problems, and unambiguous
spellings (an integral float) are accepted."""

import json
import os
import shutil

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from panoptic_ext.data.datasets import register_panoptic_dataset
from panoptic_ext.data.datasets.register import load_panoptic_json
from panoptic_ext.data.datasets.synthetic import SyntheticSpec, generate_split
from panoptic_ext.data.json_checks import DatasetJsonError, read_panoptic_json
from panoptic_ext.data.validation import validate_panoptic_dataset


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("json_checks"))
    generate_split(root, "val", SyntheticSpec(image_size=32, num_images=6, seed=3))
    return root


def _paths(root):
    return (os.path.join(root, f) for f in ("panoptic_val.json", "val", "panoptic_val"))


def _write(clean, tmp_path, mutate) -> tuple[str, str, str]:
    root = str(tmp_path / "data")
    shutil.copytree(clean, root)
    json_file, image_root, png_root = _paths(root)
    with open(json_file) as f:
        data = json.load(f)
    mutate(data)
    with open(json_file, "w") as f:
        json.dump(data, f)
    return json_file, image_root, png_root


def _set(path, value):
    """A mutation setting ``data[path[0]][path[1]]...`` to ``value``."""

    def mutate(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value(data) if callable(value) else value

    return mutate


def _swap_pngs(data):
    a, b = data["annotations"][1], data["annotations"][2]
    a["file_name"], b["file_name"] = b["file_name"], a["file_name"]


def _strings(key):
    def mutate(data):
        for cat in data["categories"]:
            cat[key] = str(cat[key])

    return mutate


# case -> (mutation, code, the id the problem names, a regex the message must hold)
CASES = {
    "duplicate_image_id": (
        _set(["images", 2, "id"], lambda d: d["images"][1]["id"]),
        "duplicate_image_id", 2, r"image id repeated: 'val_000001.jpg' and 'val_000002.jpg'",
    ),
    "duplicate_annotation": (
        _set(["annotations", 2, "image_id"], 2),
        "duplicate_annotation", 2, r"two annotations for image 2: val_000001.png and val_0+2.png",
    ),
    "duplicate_png": (
        _set(["annotations", 2, "file_name"], "val_000001.png"),
        "duplicate_png", 3, r"uses val_000001.png, the PNG of image 2 too",
    ),
    "duplicate_image_file": (
        _set(["images", 2, "file_name"], "val_000001.jpg"),
        "duplicate_image_file", 3, r"image 3 has file_name 'val_000001.jpg', as image 2",
    ),
    "swapped_pngs": (
        _swap_pngs,
        "mismatched_png", 2, r"\(val_000001.jpg\) uses val_000002.png, which is named after "
        r"image 3 \(val_000002.jpg\): PNGs swapped\?",
    ),
    "isthing_string": (
        _strings("isthing"), "missing_isthing", 3, r"'isthing' is '\d'; need 0 or 1 \(a string",
    ),
    "category_id_string": (
        _strings("id"), "bad_type", None, r"category '\w+': 'id' is '\d+'; need an int",
    ),
    "segment_category_string": (
        _set(["annotations", 1, "segments_info", 0, "category_id"], "9"),
        "bad_type", None, r"annotation of image 2, segments_info\[0\] \(id \d+\): 'category_id' "
        r"is '9'; need an int >= 1",
    ),
    "iscrowd_string": (
        _set(["annotations", 1, "segments_info", 0, "iscrowd"], "0"),
        "bad_type", None, r"'iscrowd' is '0'; need 0 or 1",
    ),
    "image_id_type_mixed": (
        _set(["annotations", 1, "image_id"], "2"),
        "unknown_image_id", "2", r"names an image id that is not in 'images' \(images use int",
    ),
    "height_string": (
        _set(["images", 1, "height"], "32"), "bad_type", 2, r"image 2: 'height' is '32'; need an",
    ),
    "missing_file_name": (
        _set(["images", 1, "file_name"], None), "bad_type", 2, r"'file_name' is None; need a non",
    ),
    "segments_not_a_list": (
        _set(["annotations", 1, "segments_info"], {"id": 5}),
        "bad_type", 2, r"'segments_info' is \{'id': 5\}; need a list",
    ),
    "void_segment_id": (
        _set(["annotations", 1, "segments_info", 0, "id"], 0),
        "void_segment_id", 0, r"segment id 0 is void",
    ),
    "duplicate_segment_id": (
        _set(["annotations", 1, "segments_info", 1, "id"],
             lambda d: d["annotations"][1]["segments_info"][0]["id"]),
        "duplicate_segment_id", None, r"segment id appears 2 times",
    ),
    "unknown_category": (
        _set(["annotations", 1, "segments_info", 0, "category_id"], 99),
        "unknown_category", None, r"category_id 99 is not in categories",
    ),
    "empty_dataset": (
        _set(["annotations"], []), "empty_dataset", None, r"no image has an annotation",
    ),
    "no_annotations_key": (
        lambda d: d.pop("annotations"), "json_unreadable", None,
        r"top-level 'annotations' is None; need a list",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_loader_refuses_and_validator_reports_the_same(clean, tmp_path, case):
    mutate, code, ident, message = CASES[case]
    json_file, image_root, png_root = _write(clean, tmp_path, mutate)
    with pytest.raises(DatasetJsonError, match=message) as err:
        load_panoptic_json(json_file, image_root, png_root)
    assert str(err.value).startswith(json_file)
    refused = {(p.code, p.id, p.message) for p in err.value.problems}
    assert any(c == code and (ident is None or i == ident) for c, i, _ in refused), refused
    reported = {
        (p.code, p.id, p.message)
        for p in validate_panoptic_dataset(json_file, image_root, png_root)
        if p.level == "error"
    }
    assert refused <= reported, refused - reported


def test_isthing_string_is_refused_by_the_lazy_metadata_too(clean, tmp_path):
    """A stuff category written "isthing": "0" would become a thing class."""
    json_file, image_root, png_root = _write(clean, tmp_path, _strings("isthing"))
    register_panoptic_dataset("reliability_isthing_str", image_root, png_root, json_file)
    try:
        with pytest.raises(DatasetJsonError, match=r"category 'sky': 'isthing' is '0'"):
            MetadataCatalog.get("reliability_isthing_str").thing_classes  # noqa: B018
        with pytest.raises(DatasetJsonError, match=json_file):
            DatasetCatalog.get("reliability_isthing_str")
    finally:
        DatasetCatalog.remove("reliability_isthing_str")
        MetadataCatalog.remove("reliability_isthing_str")


def test_integral_floats_are_accepted_as_ints(clean, tmp_path):
    def floats(data):
        data["images"][1]["height"] = 32.0
        data["categories"][0]["isthing"] = 1.0
        data["annotations"][1]["segments_info"][0]["id"] *= 1.0

    json_file, image_root, png_root = _write(clean, tmp_path, floats)
    records = load_panoptic_json(json_file, image_root, png_root)
    assert records[1]["height"] == 32 and type(records[1]["height"]) is int
    assert type(records[1]["segments_info"][0]["id"]) is int
    assert read_panoptic_json(json_file)["categories"][0]["isthing"] == 1


def test_unparsable_json_and_missing_file_are_named(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('{"images": [')
    with pytest.raises(DatasetJsonError, match=rf"{path}.*not valid JSON: Expecting value"):
        read_panoptic_json(str(path))
    path.write_text("[]")
    with pytest.raises(DatasetJsonError, match=r"the JSON holds a list, not an object"):
        read_panoptic_json(str(path))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_panoptic_json(str(tmp_path / "nope.json"))


def test_images_without_annotation_are_a_warning(clean, tmp_path, caplog):
    json_file, image_root, png_root = _write(clean, tmp_path, lambda d: d["annotations"].pop(0))
    assert len(load_panoptic_json(json_file, image_root, png_root)) == 5
    assert "1 x [no_annotation] (ids 1)" in caplog.text
