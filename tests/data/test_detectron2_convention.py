"""Our registered datasets follow detectron2's panoptic convention: the dicts are what
detectron2's ``load_coco_panoptic_json`` makes, detectron2's ``DatasetMapper`` and its
``tools/visualize_data.py`` consume them, and classes get distinct colours."""

import copy
import json
import os
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata as importlib_metadata
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json
from helpers import REPO, config_path, register_tiny
from PIL import Image

from panoptic_ext.config import build_cfg
from panoptic_ext.data import PanopticDatasetMapper
from panoptic_ext.data.colors import category_colors
from panoptic_ext.data.datasets import metadata_from_categories, register_panoptic_dataset
from panoptic_ext.data.datasets.synthetic import SYNTHETIC_CATEGORIES, SyntheticSpec, generate_split
from panoptic_ext.data.panoptic_targets import PanopticLabelError

SIZE_OPTS = ["INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64, "INPUT.RANDOM_FLIP", "none"]


@pytest.fixture(scope="module")
def records():
    register_tiny()
    return DatasetCatalog.get("synthetic_panoptic_train")


def test_dicts_equal_detectron2_load_coco_panoptic_json(records):
    meta = MetadataCatalog.get("synthetic_panoptic_train")
    theirs = load_coco_panoptic_json(
        meta.panoptic_json, meta.image_root, meta.panoptic_root, meta.as_dict()
    )
    assert len(theirs) == len(records) == 8
    for ours, ref in zip(records, theirs, strict=True):
        for key in ("file_name", "image_id", "pan_seg_file_name", "segments_info"):
            assert ours[key] == ref[key], key
        assert os.path.isfile(ours["sem_seg_file_name"])
    segments = [s for r in records for s in r["segments_info"]]
    things = [s["category_id"] for s in segments if s["isthing"]]
    stuff = [s["category_id"] for s in segments if not s["isthing"]]
    assert set(things) == {0, 1, 2} and set(stuff) == {1, 2, 3}
    # The metadata has the keys detectron2's register_coco_panoptic(_separated) set.
    for key, value in {
        "evaluator_type": "coco_panoptic_seg",
        "ignore_label": 255,
        "label_divisor": 1000,
        "image_root": meta.image_root,
    }.items():
        assert meta.get(key) == value
    assert meta.json_file.endswith("instances_train.json") and os.path.isdir(meta.sem_seg_root)


def test_unknown_category_in_the_json_names_file_annotation_and_segment(tmp_path):
    """The JSON check (data/json_checks.py) or the id conversion: either names all four."""
    generate_split(str(tmp_path), "val", SyntheticSpec(image_size=32, num_images=2, seed=3))
    path = tmp_path / "panoptic_val.json"
    data = json.loads(path.read_text())
    seg = data["annotations"][1]["segments_info"][0]
    seg["category_id"] = 77
    path.write_text(json.dumps(data))
    register_panoptic_dataset("convention_bad", str(tmp_path / "val"), "x", str(path))
    try:
        with pytest.raises(
            ValueError, match=rf"(?s)panoptic_val.json.*val_000001.png.*{seg['id']}.*77"
        ):
            DatasetCatalog.get("convention_bad")
    finally:
        DatasetCatalog.remove("convention_bad")
        MetadataCatalog.remove("convention_bad")
    # Registered categories that lack one of the JSON's: the id conversion names it.
    generate_split(str(tmp_path / "b"), "val", SyntheticSpec(image_size=32, num_images=2, seed=3))
    categories = [c for c in SYNTHETIC_CATEGORIES if c["name"] != "ground"]
    b = tmp_path / "b"
    register_panoptic_dataset("convention_cats", str(b / "val"), str(b / "panoptic_val"),
                              str(b / "panoptic_val.json"), categories=categories)  # fmt: skip
    try:
        with pytest.raises(ValueError, match=r"panoptic_val.json: annotation val_00000\d.png: "
                                             r"segment \d+ has category_id 30"):  # fmt: skip
            DatasetCatalog.get("convention_cats")
    finally:
        DatasetCatalog.remove("convention_cats")
        MetadataCatalog.remove("convention_cats")


def test_detectron2_dataset_mapper_reads_our_dicts(records):
    """detectron2's own mapper: same image, and its sem_seg (from sem_seg_file_name) equals the
    things-as-one target our mapper derives from the panoptic PNG."""
    cfg = build_cfg(config_path("quick_schedules/panoptic_fpn_synthetic.yaml"), SIZE_OPTS, "cpu")
    cfg.defrost()
    cfg.DATASETS.TRAIN = ("synthetic_panoptic_train",)
    theirs_mapper = DatasetMapper(cfg, is_train=True)
    ours_mapper = PanopticDatasetMapper(cfg, is_train=True)
    labels = set()
    for record in records:
        theirs = theirs_mapper(copy.deepcopy(record))
        ours = ours_mapper(copy.deepcopy(record))
        assert torch.equal(theirs["image"], ours["image"])
        assert torch.equal(theirs["sem_seg"], ours["sem_seg"])
        labels |= set(ours["sem_seg"].unique().tolist())
    assert {0, 1, 2, 3} <= labels  # things and every stuff class were compared


def test_mapper_refuses_dicts_without_isthing(records):
    record = copy.deepcopy(next(r for r in records if len(r["segments_info"]) >= 4))
    for seg in record["segments_info"]:
        del seg["isthing"]
    cfg = build_cfg(config_path("quick_schedules/panoptic_fpn_synthetic.yaml"), (), "cpu")
    with pytest.raises(PanopticLabelError, match=r"train_\d+\.png.*isthing.*convention"):
        PanopticDatasetMapper(cfg, is_train=True)(record)


def test_colors_from_json_else_distinct_colormap_colors():
    cats = [{"id": i + 1, "name": f"c{i}", "isthing": i % 2} for i in range(160)]
    cats[5]["color"] = [1, 2, 3]
    colors = category_colors(cats)
    assert colors[5] == (1, 2, 3)
    assert len(set(colors)) == 160  # ADE20K-sized: every class its own colour
    # The first colours without a JSON colour are detectron2's colormap, in its order.
    from detectron2.utils.colormap import colormap

    assert colors[0] == tuple(colormap(rgb=True)[0].round().astype(int).tolist())
    meta = metadata_from_categories(cats)
    assert len(set(meta["thing_colors"] + meta["stuff_colors"][1:])) == 160
    cats[7]["color"] = [0.5, 0.2, 0.1]
    with pytest.raises(ValueError, match=r"category 8 \(c7\).*0\.5"):
        category_colors(cats, "my.json")


def _detectron2_script(relpath: str, dest) -> str:
    """A script of detectron2's source tree (``tools/...``) for the installed detectron2: from
    its source folder (editable / local install), the archive it was installed from, or
    ``$DETECTRON2_SRC``; extracted into ``dest``."""
    import detectron2

    here = os.path.join(os.path.dirname(os.path.dirname(detectron2.__file__)), relpath)
    if os.path.isfile(here):
        return here
    sources = [os.environ.get("DETECTRON2_SRC", "")]
    direct = importlib_metadata.distribution("detectron2").read_text("direct_url.json")
    if direct:
        url = json.loads(direct).get("url", "")
        sources.insert(0, unquote(urlparse(url).path) if url.startswith("file://") else "")
    for src in filter(None, sources):
        if os.path.isfile(os.path.join(src, relpath)):
            return os.path.join(src, relpath)
        if os.path.isfile(src) and tarfile.is_tarfile(src):
            with tarfile.open(src) as tar:
                member = next((m for m in tar.getmembers() if m.name.endswith("/" + relpath)), None)
                if member is not None:
                    tar.extract(member, dest, filter="data")
                    return os.path.join(dest, member.name)
    pytest.skip(f"no detectron2 source tree with {relpath} (installed from {sources})")


def _coco_layout(root, src):
    """The synthetic split under the builtin COCO names (coco_2017_val_panoptic_ext)."""
    shutil.copytree(f"{src}/val", root / "coco/val2017")
    shutil.copytree(f"{src}/panoptic_val", root / "coco/panoptic_val2017")
    shutil.copytree(f"{src}/panoptic_semseg_val", root / "coco/panoptic_stuff_val2017")
    os.makedirs(root / "coco/annotations")
    shutil.copy(f"{src}/panoptic_val.json", root / "coco/annotations/panoptic_val2017.json")


def test_detectron2_visualize_data_draws_our_dataset(tmp_path):
    script = _detectron2_script("tools/visualize_data.py", str(tmp_path / "d2"))
    src, root = str(tmp_path / "src"), tmp_path / "datasets"
    generate_split(src, "val", SyntheticSpec(image_size=128, num_images=3, seed=5))
    _coco_layout(root, src)
    out = tmp_path / "vis"
    env = dict(os.environ, PYTHONPATH=REPO, DETECTRON2_DATASETS=str(root))
    # A Panoptic FCN config: its MODEL.PANOPTIC_FCN keys merge into detectron2's get_cfg().
    argv = [sys.executable, "-m", "panoptic_ext.cli.detectron2_tool", script,
            "--source", "annotation", "--output-dir", str(out),
            "--config-file", config_path("quick_schedules/panoptic_fcn_synthetic.yaml"),
            "DATASETS.TRAIN", "('coco_2017_val_panoptic_ext',)"]  # fmt: skip
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    meta = metadata_from_categories(json.load(open(f"{src}/panoptic_val.json"))["categories"])
    with open(f"{src}/panoptic_val.json") as f:
        data = json.load(f)
    checked = 0
    for img, ann in zip(data["images"], data["annotations"], strict=True):
        drawn = cv2.imread(str(out / img["file_name"]))[:, :, ::-1].astype(np.float64)
        image = np.asarray(Image.open(f"{src}/val/{img['file_name']}"), dtype=np.float64)
        assert drawn.shape == image.shape
        ids = np.asarray(Image.open(f"{src}/panoptic_val/{ann['file_name']}"), dtype=np.int64)
        ids = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
        for seg in ann["segments_info"]:
            stuff = meta["stuff_dataset_id_to_contiguous_id"].get(seg["category_id"])
            inner = cv2.erode((ids == seg["id"]).astype(np.uint8), np.ones((5, 5))) > 0
            if stuff is None or inner.sum() < 1000:  # small regions are mostly label text
                continue
            # Semantic and panoptic overlays, each alpha 0.5, in the metadata's stuff colour.
            expected = 0.25 * image[inner] + 0.75 * np.array(meta["stuff_colors"][stuff])
            diff = np.abs(np.median(drawn[inner], axis=0) - np.median(expected, axis=0))
            assert diff.max() < 6, (seg, diff)
            checked += 1
    assert checked >= 3
