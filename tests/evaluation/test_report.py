"""The per-class PQ report: class names in the table and in pq_per_class.json, counts that
reproduce the numbers, PNG plots next to it; and train_net shows the table in the console and
log.txt (our loggers are set up next to detectron2's)."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers import (
    KEEP_ALL_DETECTIONS_OPTS,
    REPO,
    TINY_OPTS,
    build_tiny_model,
    config_path,
    load_cfg,
    register_tiny,
)
from PIL import Image

from panoptic_ext.data.datasets.synthetic_predictions import predictions_from_ground_truth
from panoptic_ext.evaluation import FastPanopticEvaluator

NAMES = {3: "disk", 7: "box", 12: "triangle", 9: "sky", 21: "wall", 30: "ground"}


def test_report_json_table_and_plots(tmp_path, caplog):
    register_tiny()
    meta = MetadataCatalog.get("synthetic_panoptic_val")
    evaluator = FastPanopticEvaluator("synthetic_panoptic_val", str(tmp_path))
    evaluator.reset()
    for r in DatasetCatalog.get("synthetic_panoptic_val"):
        inputs = [{k: r[k] for k in ("file_name", "image_id", "height", "width")}]
        evaluator.process(inputs, [predictions_from_ground_truth(r, meta, seed=2, detections=0)])
    with caplog.at_level(logging.INFO, logger="panoptic_ext.evaluation.evaluator"):
        res = evaluator.evaluate()["panoptic_seg"]
    per_class = json.loads((tmp_path / "pq_per_class.json").read_text())
    assert {int(k): v["name"] for k, v in per_class.items()} == NAMES
    assert {int(k) for k, v in per_class.items() if v["isthing"]} == {3, 7, 12}
    for entry in per_class.values():
        tp, fp, fn = entry["tp"], entry["fp"], entry["fn"]
        if tp + fp + fn:  # the counts reproduce RQ and PQ = SQ * RQ
            assert abs(entry["rq"] - tp / (tp + 0.5 * fp + 0.5 * fn)) < 1e-12
            assert abs(entry["pq"] - entry["sq"] * entry["rq"]) < 1e-12
    present = [v for v in per_class.values() if v["tp"] + v["fp"] + v["fn"]]
    assert abs(res["PQ"] - 100 * np.mean([v["pq"] for v in present])) < 1e-9
    assert sum(v["fp"] + v["fn"] for v in present) > 0  # the plots show errors, not only TPs
    table = caplog.text.split("Per-class panoptic results:")[1]
    for name in NAMES.values():
        assert f"| {name} " in table
    for png in ("pq_per_class.png", "pq_errors_per_class.png"):
        image = np.asarray(Image.open(tmp_path / png).convert("RGB"))
        assert image.shape[0] > 300 and image.shape[1] > 600
        assert image.std() > 20  # drawn on, not blank
    # Bars in the class colours: sky's colour is in the PQ plot.
    pq_plot = np.asarray(Image.open(tmp_path / "pq_per_class.png").convert("RGB"))
    sky = np.array(meta.stuff_colors[meta.stuff_dataset_id_to_contiguous_id[9]])
    assert (np.abs(pq_plot.astype(int) - sky).max(axis=2) <= 2).sum() > 100


def test_train_net_logs_the_per_class_table_to_console_and_log_txt(tmp_path):
    out = tmp_path / "out"
    # A complete (random-init) checkpoint: --eval-only refuses empty MODEL.WEIGHTS.
    cfg = load_cfg("quick_schedules/panoptic_fpn_synthetic.yaml", *TINY_OPTS)
    weights = str(tmp_path / "random_init.pth")
    torch.save({"model": build_tiny_model(cfg).state_dict()}, weights)
    argv = [sys.executable, os.path.join(REPO, "train_net.py"), "--eval-only",
            "--config-file", config_path("quick_schedules/panoptic_fpn_synthetic.yaml"),
            *map(str, TINY_OPTS), *map(str, KEEP_ALL_DETECTIONS_OPTS), "TEST.EVALUATORS",
            "['panoptic']", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(out)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=REPO)
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    log = (out / "log.txt").read_text()
    for text in (run.stdout + run.stderr, log):
        per_class = text.split("Per-class panoptic results:")[1]
        assert all(f"| {name} " in per_class for name in NAMES.values())
    assert (out / "inference" / "pq_per_class.png").stat().st_size > 0
