"""FastSemSegEvaluator: detectron2's SemSegEvaluator's numbers and prediction file, exactly."""

import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from helpers import load_cfg, load_script, register_tiny

from panoptic_ext.engine.evaluators import build_evaluators
from panoptic_ext.evaluation import FastSemSegEvaluator
from panoptic_ext.evaluation.sem_seg import class_map, pair_counts

NAME = "synthetic_panoptic_val"


def _run(evaluator, records, outputs):
    evaluator.reset()
    for r, out in zip(records, outputs):
        evaluator.process([{"file_name": r["file_name"], "image_id": r["image_id"]}], [out])
    return evaluator.evaluate()


def test_same_results_and_files_as_detectron2(tmp_path):
    register_tiny()
    bench = load_script("tools/benchmark_eval.py")
    records = DatasetCatalog.get(NAME)
    meta = MetadataCatalog.get(NAME)
    outputs = [{"sem_seg": bench.model_outputs(r, meta, 3, 0)["sem_seg"]} for r in records]
    outputs[1]["sem_seg"] = torch.randn(outputs[1]["sem_seg"].shape)  # dense, noisy logits
    outputs[2]["sem_seg"] = outputs[2]["sem_seg"].half()  # AMP inference
    ref = _run(SemSegEvaluator(NAME, output_dir=str(tmp_path / "d2")), records, outputs)
    ours = _run(FastSemSegEvaluator(NAME, output_dir=str(tmp_path / "ours")), records, outputs)
    assert list(ours["sem_seg"]) == list(ref["sem_seg"])
    for key, value in ref["sem_seg"].items():
        assert ours["sem_seg"][key] == value or (np.isnan(value) and np.isnan(ours["sem_seg"][key]))
    assert 20 < ref["sem_seg"]["mIoU"] < 95 and "BoundaryIoU-things" in ref["sem_seg"]
    files = [
        json.loads((tmp_path / d / "sem_seg_predictions.json").read_text()) for d in ("d2", "ours")
    ]
    assert files[0] == files[1] and len(files[0]) >= 4 * 3
    # The trainer's table picks it (TEST.SEM_SEG_EVALUATOR "fast", the default).
    cfg = load_cfg("quick_schedules/semantic_fpn_synthetic.yaml")
    assert type(build_evaluators(cfg, NAME, str(tmp_path))) is FastSemSegEvaluator
    cfg.TEST.SEM_SEG_EVALUATOR = "detectron2"
    assert type(build_evaluators(cfg, NAME, str(tmp_path))) is SemSegEvaluator


def test_class_map_is_argmax_with_ties_and_nan():
    logits = torch.zeros(5, 6, 7)
    logits[2, 0, :3] = 1.0
    logits[4, 0, 1:] = 1.0  # ties on row 0: the first maximum wins
    logits[3, 1, 2] = float("inf")
    assert np.array_equal(class_map(logits), logits.argmax(0).numpy())
    assert class_map(logits).dtype == np.uint8
    logits[1, 2, 2] = float("nan")
    assert np.array_equal(class_map(logits), logits.argmax(0).numpy())


def test_pair_counts_matches_bincount_and_fails_alike():
    rng = np.random.default_rng(0)
    a, b = (
        rng.integers(0, 5, (20, 30), dtype=np.uint8),
        rng.integers(0, 5, (20, 30), dtype=np.uint8),
    )
    ref = np.bincount(5 * a.astype(np.int64).ravel() + b.ravel(), minlength=25).reshape(5, 5)
    assert np.array_equal(pair_counts(a, b, 5), ref)
    assert np.array_equal(pair_counts(a.astype(np.int64), b, 5), ref)
    a[0, 0], b[0, 0] = 4, 9  # a label outside the classes: detectron2's reshape fails, so does this
    with pytest.raises(ValueError):
        pair_counts(a, b, 5)
