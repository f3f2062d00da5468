"""demo/demo.py and the predictor it calls (engine/predictor.py) give the evaluation path's
segmentation, check INPUT.FORMAT, read inputs."""

import importlib
import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from helpers import (
    KEEP_ALL_DETECTIONS_OPTS,
    TINY_OPTS,
    build_tiny_model,
    config_path,
    load_cfg,
    register_tiny,
)
from PIL import Image

from panoptic_ext.cli.demo_inputs import expand_inputs
from panoptic_ext.engine import Trainer
from panoptic_ext.engine.launch import build_cfg_with_datasets
from panoptic_ext.engine.predictor import (
    DemoPredictor,
    check_input_format,
    demo_metadata,
    panoptic_record,
)
from panoptic_ext.vis.predictions import fit_for_drawing

CONFIG = "quick_schedules/panoptic_fpn_synthetic.yaml"
OPTS = [*TINY_OPTS, *KEEP_ALL_DETECTIONS_OPTS]


def _demo():
    return importlib.import_module("panoptic_ext.cli.demo")


class _Capture(DatasetEvaluator):
    def reset(self):
        self.outputs = {}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            self.outputs[inp["file_name"]] = out["panoptic_seg"]

    def evaluate(self):
        return {}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    register_tiny()
    cfg = load_cfg(CONFIG, *OPTS)
    path = str(tmp_path_factory.mktemp("demo") / "model.pth")
    torch.save({"model": build_tiny_model(cfg).state_dict()}, path)
    return path


def test_demo_matches_evaluation_path(weights, tmp_path):
    demo = _demo()
    cfg = load_cfg(CONFIG, *OPTS, "MODEL.WEIGHTS", weights)
    model = Trainer.build_model(cfg)
    Trainer.build_checkpointer(cfg, model).resume_or_load(weights, resume=False)
    capture = _Capture()
    inference_on_dataset(model, Trainer.build_test_loader(cfg, "synthetic_panoptic_val"), capture)
    files = sorted(capture.outputs)
    assert len(files) == 4

    out = str(tmp_path / "out")
    pattern = os.path.dirname(files[0]) + "/*_000003.jpg"  # a glob that matches files[3]
    argv = ["--config-file", config_path(CONFIG), "--input", *files[:2], pattern,
            "--output", f"{out}/vis", "--panoptic-out", f"{out}/pan",
            *map(str, OPTS), "MODEL.WEIGHTS", weights]  # fmt: skip
    assert demo.main(argv) == 0
    with open(f"{out}/pan/predictions.json") as f:
        records = {r["file_name"]: r for r in json.load(f)["annotations"]}
    meta = MetadataCatalog.get("synthetic_panoptic_val")
    num_things = 0
    for path in (files[0], files[1], files[3]):
        stem = os.path.splitext(os.path.basename(path))[0]
        colors, ref = panoptic_record(
            {"panoptic_seg": capture.outputs[path]}, meta, stem, stem + ".png"
        )
        png = cv2.imread(f"{out}/pan/{stem}.png")[:, :, ::-1]
        np.testing.assert_array_equal(png, colors)
        ours = records[stem + ".png"]["segments_info"]
        for a, b in zip(ours, ref["segments_info"], strict=True):
            assert a.pop("score", None) == pytest.approx(b.pop("score", None), abs=1e-6)
            assert a == b
        assert len(ours) >= 2
        num_things += sum(s["isthing"] for s in ours)
        vis = cv2.imread(f"{out}/vis/{stem}.png")
        assert vis.shape == png.shape and not np.array_equal(vis, cv2.imread(path))
    assert num_things > 0  # the comparison covers things, not only stuff


def test_frame_path_equals_file_path_and_video(weights, tmp_path):
    demo = _demo()
    cfg = build_cfg_with_datasets(config_path(CONFIG), [*map(str, OPTS), "MODEL.WEIGHTS", weights])
    predictor = DemoPredictor(cfg)
    path = DatasetCatalog.get("synthetic_panoptic_val")[2]["file_name"]
    rgb, from_file = predictor(path)
    rgb2, from_frame = predictor.on_frame(np.asarray(Image.open(path))[:, :, ::-1])
    np.testing.assert_array_equal(rgb, rgb2)
    assert torch.equal(from_file["panoptic_seg"][0], from_frame["panoptic_seg"][0])

    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 64))
    for _ in range(2):
        writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
    writer.release()
    out = str(tmp_path / "clip_out.mp4")
    argv = ["--config-file", config_path(CONFIG), "--video-input", video, "--output", out,
            *map(str, OPTS), "MODEL.WEIGHTS", weights]  # fmt: skip
    assert demo.main(argv) == 0
    reader = cv2.VideoCapture(out)
    frames = 0
    while reader.read()[0]:
        frames += 1
    assert frames == 2


def test_input_format_check_and_input_expansion(tmp_path):
    cfg = load_cfg(CONFIG)
    assert cfg.INPUT.FORMAT == "BGR" and check_input_format(cfg) is None
    cfg.INPUT.FORMAT = "RGB"
    message = check_input_format(cfg)
    assert "INPUT.FORMAT is RGB" in message and "BGR order" in message
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    assert check_input_format(cfg) is None
    cfg.MODEL.PIXEL_MEAN = [110.0, 110.0, 112.0]  # too close to tell
    assert check_input_format(cfg) is None

    for name in ("b.jpg", "a.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert expand_inputs([str(tmp_path)]) == [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]
    assert expand_inputs([str(tmp_path / "*.jpg"), str(tmp_path / "a.png")]) == [
        str(tmp_path / "b.jpg"),
        str(tmp_path / "a.png"),
    ]
    with pytest.raises(FileNotFoundError, match="missing_\\*.jpg"):
        expand_inputs([str(tmp_path / "missing_*.jpg")])


def test_metadata_fallback_for_coco_configs_without_files():
    cfg = load_cfg("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml")
    meta = demo_metadata(cfg)  # COCO is not on disk here
    assert len(meta.thing_classes) == 80 and meta.stuff_classes[0] == "things"
    assert demo_metadata(cfg, "synthetic_panoptic_val").thing_classes == [
        "disk",
        "box",
        "triangle",
    ]


def test_class_names_of_a_dataset_registered_by_the_config(tmp_path):
    """A user's dataset named only in DATASETS.REGISTER_PANOPTIC gives the demo its names."""
    from panoptic_ext.data.datasets.synthetic import SyntheticSpec, generate_split

    root = tmp_path / "mine"
    generate_split(str(root), "val", SyntheticSpec(image_size=32, num_images=2, seed=3))
    data = json.load(open(root / "panoptic_val.json"))
    for c in data["categories"]:
        c["name"] = f"my_{c['name']}"
    json.dump(data, open(root / "panoptic_val.json", "w"))
    entry = ("demo_mine", *(str(root / f) for f in ("val", "panoptic_val", "panoptic_val.json")))
    cfg = build_cfg_with_datasets(
        config_path(CONFIG),
        ["DATASETS.REGISTER_PANOPTIC", repr([entry]), "DATASETS.TEST", "('demo_mine',)"],
    )
    meta = demo_metadata(cfg)
    assert meta.thing_classes == ["my_disk", "my_box", "my_triangle"]
    stuff = meta.stuff_classes[1:]  # [0] is the merged "things" class
    assert stuff and all(n.startswith("my_") for n in stuff), meta.stuff_classes


def test_overlay_inputs_are_fitted_to_the_drawing_cap():
    """Instances and semantic logits of a 3000x1000 image are drawn at 2048x683; a small image
    is passed through unchanged."""
    from detectron2.structures import Boxes, Instances

    fit = fit_for_drawing
    rgb = np.zeros((1000, 3000, 3), np.uint8)
    masks = torch.zeros(1, 1000, 3000, dtype=torch.bool)
    masks[0, 500:, 1500:] = True
    boxes = Boxes(torch.tensor([[1500.0, 500, 3000, 1000]]))
    instances = Instances((1000, 3000), pred_boxes=boxes, pred_masks=masks)
    small, drawn = fit(rgb, {"instances": instances}, max_side=2048)
    assert small.shape == (683, 2048, 3) and drawn["instances"].image_size == (683, 2048)
    np.testing.assert_allclose(drawn["instances"].pred_boxes.tensor[0].tolist(),
                               [1024, 341.5, 2048, 683], atol=0.5)  # fmt: skip
    assert drawn["instances"].pred_masks.shape == (1, 683, 2048)
    assert drawn["instances"].pred_masks.dtype == torch.bool
    assert abs(drawn["instances"].pred_masks.float().mean().item() - 0.25) < 0.01
    logits = torch.zeros(3, 1000, 3000)
    logits[2, :, :1500] = 1
    _, drawn = fit(rgb, {"sem_seg": logits}, max_side=2048)
    labels = drawn["sem_seg"].argmax(dim=0)
    assert (
        labels.shape == (683, 2048)
        and (labels[:, :1020] == 2).all()
        and (labels[:, 1030:] == 0).all()
    )
    tiny = np.zeros((64, 64, 3), np.uint8)
    outputs = {"sem_seg": torch.zeros(3, 64, 64)}
    assert fit(tiny, outputs)[0] is tiny and fit(tiny, outputs)[1] is outputs
