"""tools/validate_dataset.py reports each planted problem with its file and id, and nothing on
a clean dataset."""

import importlib
import json
import os
import shutil

import numpy as np
import pytest
from helpers import REPO
from PIL import Image

from panoptic_ext.data.datasets.synthetic import SyntheticSpec, generate_split
from panoptic_ext.data.panoptic_io import index_map
from panoptic_ext.data.validation import validate_panoptic_dataset

QUICK = os.path.join(REPO, "configs", "quick_schedules", "panoptic_fpn_synthetic.yaml")


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("validate"))
    generate_split(
        root, "val", SyntheticSpec(image_size=48, num_images=10, seed=5, crowd_fraction=0)
    )
    return root


def _paths(root):
    return (
        os.path.join(root, "panoptic_val.json"),
        os.path.join(root, "val"),
        os.path.join(root, "panoptic_val"),
    )


def _load_tool():
    return importlib.import_module("panoptic_ext.cli.validate_dataset")


@pytest.fixture
def run_tool(capsys):
    """Run the CLI's main() in-process; returns (exit status, stdout)."""
    tool = _load_tool()

    def run(*args):
        rc = tool.main(list(args))
        return rc, capsys.readouterr().out

    return run


def test_clean_dataset_passes(clean, run_tool):
    json_file, image_root, png_root = _paths(clean)
    assert [
        p for p in validate_panoptic_dataset(json_file, image_root, png_root) if p.level == "error"
    ] == []
    rc, out = run_tool("--json", json_file, "--image-root", image_root, "--panoptic-root", png_root,
                        "--config-file", QUICK)  # fmt: skip
    assert rc == 0, out
    assert "0 errors" in out


def test_planted_errors_are_each_reported(clean, tmp_path, run_tool):
    root = str(tmp_path / "bad")
    shutil.copytree(clean, root)
    json_file, image_root, png_root = _paths(root)
    with open(json_file) as f:
        data = json.load(f)
    anns, images = data["annotations"], data["images"]
    # Keep annotations that have >= 2 segments for the segment-level plants.
    usable = [a for a in anns if len(a["segments_info"]) >= 3]
    assert len(usable) >= 6
    expected = set()  # (code, file basename, id)

    os.remove(os.path.join(image_root, images[0]["file_name"]))
    expected.add(("missing_image", images[0]["file_name"], images[0]["id"]))
    with open(os.path.join(image_root, images[1]["file_name"]), "wb") as f:
        f.write(b"not a jpeg at all")
    expected.add(("unreadable_image", images[1]["file_name"], images[1]["id"]))
    os.remove(os.path.join(png_root, anns[2]["file_name"]))
    expected.add(("missing_png", anns[2]["file_name"], anns[2]["image_id"]))

    a = usable[0]  # PNG id without a segment
    dropped = a["segments_info"].pop(1)
    expected.add(("unlabeled_png_id", a["file_name"], dropped["id"]))
    a = usable[1]  # segment without pixels
    a["segments_info"].append(
        {"id": 4242, "category_id": 9, "iscrowd": 0, "area": 3, "bbox": [0, 0, 1, 3]}
    )
    expected.add(("empty_segment", a["file_name"], 4242))
    a = usable[2]  # unknown category
    a["segments_info"][0]["category_id"] = 99
    expected.add(("unknown_category", a["file_name"], a["segments_info"][0]["id"]))
    a = usable[3]  # duplicated segment id
    a["segments_info"][2]["id"] = a["segments_info"][1]["id"]
    expected.add(("duplicate_segment_id", a["file_name"], a["segments_info"][1]["id"]))
    a = usable[4]  # area and bbox mismatch
    a["segments_info"][0]["area"] += 5
    a["segments_info"][1]["bbox"][2] += 1
    expected.add(("area_mismatch", a["file_name"], a["segments_info"][0]["id"]))
    expected.add(("bbox_mismatch", a["file_name"], a["segments_info"][1]["id"]))
    # Category table: a duplicated id and a missing isthing.
    data["categories"].append(dict(data["categories"][0], name="dup"))
    expected.add(("duplicate_category_id", "panoptic_val.json", data["categories"][0]["id"]))
    del data["categories"][1]["isthing"]
    expected.add(("missing_isthing", "panoptic_val.json", data["categories"][1]["id"]))
    # A PNG of the wrong size.
    png = usable[5]["file_name"]
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(os.path.join(png_root, png))
    expected.add(("size_mismatch", png, usable[5]["image_id"]))
    # An undecodable PNG, on an annotation no other plant uses.
    spare = next(a for a in anns[3:] if a not in usable[:6])
    with open(os.path.join(png_root, spare["file_name"]), "wb") as f:
        f.write(b"\x89PNG garbage")
    expected.add(("unreadable_png", spare["file_name"], spare["image_id"]))
    with open(json_file, "w") as f:
        json.dump(data, f)

    problems = validate_panoptic_dataset(json_file, image_root, png_root, workers=2)
    found = {(p.code, os.path.basename(p.file), p.id) for p in problems if p.level == "error"}
    assert expected <= found, sorted(expected - found)

    # The CLI prints each of them with the file and id and fails.
    rc, out = run_tool("--json", json_file, "--image-root", image_root, "--panoptic-root", png_root,
                        "--config-file", QUICK, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3")  # fmt: skip
    assert rc == 1
    for code, name, ident in expected:
        assert any(
            f"[{code}]" in line and name in line and f"(id {ident})" in line
            for line in out.splitlines()
        ), code


def test_config_class_count_mismatch_fails(clean, run_tool):
    json_file, _, png_root = _paths(clean)
    rc, out = run_tool("--json", json_file, "--panoptic-root", png_root, "--no-images",
                        "--config-file", QUICK, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3")  # fmt: skip
    assert rc == 1
    assert (
        "[class_count_mismatch]" in out
        and "MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3" in out
        and "imply 4" in out
    )


def test_index_map_reports_stray_ids():
    ids = np.array([[0, 70000, 5], [5, 123456, 0]], np.uint32)
    expected = [[0, 9, 1], [1, 2, 0]]
    assert index_map(ids, [5, 123456], 9).tolist() == expected  # lookup table
    assert (
        index_map(
            ids.astype(np.int64) + (1 << 24) * (ids > 0), [5 + (1 << 24), 123456 + (1 << 24)], 9
        ).tolist()
        == expected
    )  # binary search
    assert index_map(np.array([[-1, 3]]), [3], 9).tolist() == [[9, 1]]  # negative: binary search
    many = np.arange(300, dtype=np.uint32).reshape(15, 20)  # > 254 segments
    expected = np.where(many > 0, 300 - many, 0)
    assert (index_map(many, np.arange(1, 300)[::-1], 999) == expected).all()  # small-id table
    big = np.where(many > 0, many + 70000, 0).astype(np.uint32)  # 16-bit per-thread table
    assert (index_map(big, np.arange(70001, 70300)[::-1], 999) == expected).all()
    # The per-thread tables are clean again: an id known before is unknown now.
    assert index_map(ids, [5], 9).tolist() == [[0, 9, 1], [1, 9, 0]]


def test_dataset_option_takes_the_configs_synthetic_set(run_tool, tmp_path, monkeypatch):
    """--dataset with --config-file validates the synthetic set of the config's size and count
    (the one its training uses), not the default one."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    rc, out = run_tool("--dataset", "synthetic_panoptic_val", "--config-file", QUICK,
                       "DATASETS.SYNTHETIC.IMAGE_SIZE", "48", "DATASETS.SYNTHETIC.NUM_VAL", "3",
                       "DATASETS.SYNTHETIC.NUM_TRAIN", "2")  # fmt: skip
    assert rc == 0, out
    (json_file,) = [line.split(":")[0] for line in out.splitlines() if "errors," in line]
    folder = os.path.relpath(json_file, tmp_path / "synthetic_panoptic").split(os.sep)[0]
    assert folder.startswith("v1_s48_n3_"), json_file
    assert len(json.load(open(json_file))["images"]) == 3
    # The default 24-image set was not generated.
    assert os.listdir(tmp_path / "synthetic_panoptic") == [folder]
