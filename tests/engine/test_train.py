"""End to end through detectron2: train steps, inference, evaluation, reload, two processes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.utils.events import EventStorage
from helpers import REPO, TINY_OPTS, build_tiny_model, load_cfg, tiny_batch

from panoptic_ext.engine import main

FAMILIES = {
    "panoptic_fpn": "quick_schedules/panoptic_fpn_synthetic.yaml",
    "semantic_fpn": "quick_schedules/semantic_fpn_synthetic.yaml",
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_train_step_and_inference(family):
    cfg = load_cfg(FAMILIES[family], *TINY_OPTS)
    batch = tiny_batch(cfg, indices=(0, 3))  # image 0 has no things
    assert len(batch[0]["instances"]) == 0 and len(batch[1]["instances"]) > 0
    model = build_tiny_model(cfg).train()
    with EventStorage():
        losses = model(batch)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        outputs = model(tiny_batch(cfg, indices=(0, 3), is_train=False))
    assert len(outputs) == 2
    for out in outputs:
        assert out["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 64, 64)
        if family == "panoptic_fpn":
            seg, infos = out["panoptic_seg"]
            assert seg.shape == (64, 64) and seg.dtype == torch.int32
            assert sorted(set(seg.unique().tolist()) - {0}) == sorted(s["id"] for s in infos)


def _args(config, out, *opts, eval_only=False):
    import argparse

    return argparse.Namespace(
        config_file=os.path.join(REPO, "configs", config),
        opts=[str(o) for o in (*TINY_OPTS, "OUTPUT_DIR", out, *opts)],
        eval_only=eval_only,
        resume=False,
        num_gpus=1,
    )


def test_short_training_loss_falls_and_checkpoint_reproduces_pq(tmp_path):
    out = str(tmp_path / "run")
    opts = ("SOLVER.MAX_ITER", 40, "SOLVER.WARMUP_ITERS", 5, "SOLVER.STEPS", "(30,)")
    results = main(_args(FAMILIES["panoptic_fpn"], out, *opts))
    with open(os.path.join(out, "metrics.json")) as f:
        losses = [json.loads(line)["total_loss"] for line in f if "total_loss" in line]
    # detectron2 logs every 20 iterations: iteration 19 vs 39
    assert len(losses) == 2 and losses[-1] < 0.8 * losses[0]
    pq = results["panoptic_seg"]
    assert 0.0 <= pq["PQ"] <= 100.0 and 0.0 <= pq["PQ_st"] <= 100.0
    assert pq["PQ_st"] > 0  # stuff is learnt within 40 iterations
    assert "segm" in results and "bbox" in results and 0 <= results["sem_seg"]["mIoU"] <= 100
    # The written checkpoint is a detectron2-style checkpoint that reproduces the numbers.
    weights = os.path.join(out, "model_final.pth")
    again = main(
        _args(
            FAMILIES["panoptic_fpn"],
            str(tmp_path / "eval"),
            "MODEL.WEIGHTS",
            weights,
            eval_only=True,
        )
    )
    assert again["panoptic_seg"]["PQ"] == pytest.approx(pq["PQ"], abs=1e-9)
    assert again["sem_seg"]["mIoU"] == pytest.approx(results["sem_seg"]["mIoU"], abs=1e-9)
    ckpt = torch.load(weights, weights_only=True)
    assert "model" in ckpt and any(k.startswith("sem_seg_head.p5.") for k in ckpt["model"])


def test_two_process_gloo_run(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        os.path.join(REPO, "train_net.py"),
        "--num-gpus",
        "2",
        "--config-file",
        os.path.join(REPO, "configs", FAMILIES["panoptic_fpn"]),
        *[str(o) for o in TINY_OPTS],
        "SOLVER.MAX_ITER",
        "3",
        "OUTPUT_DIR",
        str(tmp_path),
        "TEST.EVALUATORS",
        "['panoptic']",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "PQ,SQ,RQ" in log
    assert os.path.isfile(tmp_path / "model_final.pth")


def test_custom_dataset_registered_from_config_trains_and_evaluates(tmp_path):
    """A plain COCO-panoptic folder, named only in the config, trains and evaluates."""
    from panoptic_ext.data.datasets.synthetic import SyntheticSpec, generate_split

    root = tmp_path / "my_dataset"
    generate_split(str(root), "val", SyntheticSpec(image_size=64, num_images=4, seed=7))
    entry = (
        "my_panoptic",
        str(root / "val"),
        str(root / "panoptic_val"),
        str(root / "panoptic_val.json"),
    )
    opts = (
        "DATASETS.REGISTER_PANOPTIC",
        repr([entry]),
        "DATASETS.TRAIN",
        "('my_panoptic',)",
        "DATASETS.TEST",
        "('my_panoptic',)",
        "SOLVER.MAX_ITER",
        2,
        "TEST.EVALUATORS",
        "['panoptic']",
    )
    results = main(_args(FAMILIES["panoptic_fpn"], str(tmp_path / "out"), *opts))
    assert 0.0 <= results["panoptic_seg"]["PQ"] <= 100.0
    from detectron2.data import MetadataCatalog

    assert MetadataCatalog.get("my_panoptic").thing_classes == ["disk", "box", "triangle"]
