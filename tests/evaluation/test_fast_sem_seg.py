"""FastSemSegEvaluator: detectron2's SemSegEvaluator's numbers and prediction file, exactly."""

import copy
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from helpers import TINY_OPTS, load_cfg, register_tiny

from panoptic_ext.data import PanopticDatasetMapper
from panoptic_ext.data.datasets.synthetic_predictions import predictions_from_ground_truth
from panoptic_ext.engine.evaluator_table import build_evaluators
from panoptic_ext.evaluation import FastSemSegEvaluator, PanopticSemSegEvaluator
from panoptic_ext.evaluation.sem_seg import class_map, pair_counts

NAME = "synthetic_panoptic_val"


def _run(evaluator, records, outputs):
    evaluator.reset()
    for r, out in zip(records, outputs):
        evaluator.process([{"file_name": r["file_name"], "image_id": r["image_id"]}], [out])
    return evaluator.evaluate()


def _outputs(seed):
    """The synthetic val dicts and model-like sem_seg logits for them."""
    register_tiny()
    records = DatasetCatalog.get(NAME)
    meta = MetadataCatalog.get(NAME)
    return records, [
        {"sem_seg": predictions_from_ground_truth(r, meta, seed, 0)["sem_seg"]} for r in records
    ]


def test_same_results_and_files_as_detectron2(tmp_path):
    records, outputs = _outputs(3)
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
    # The trainer's table (TEST.SEM_SEG_EVALUATOR "fast", the default): a panoptic dataset gets
    # its labels from the panoptic PNGs (tested below), detectron2's reads the derived PNGs.
    cfg = load_cfg("quick_schedules/semantic_fpn_synthetic.yaml")
    assert type(build_evaluators(cfg, NAME, str(tmp_path))) is PanopticSemSegEvaluator
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


def test_panoptic_ground_truth_things_as_one_equals_derived_pngs(tmp_path):
    records, outputs = _outputs(4)
    ref = _run(SemSegEvaluator(NAME, output_dir=str(tmp_path / "d2")), records, outputs)
    ours = _run(PanopticSemSegEvaluator(NAME, "things_as_one", output_dir=str(tmp_path / "p")),
                records, outputs)  # fmt: skip
    assert ours == ref
    files = [(tmp_path / d / "sem_seg_predictions.json").read_text() for d in ("d2", "p")]
    assert files[0] == files[1]


def test_panoptic_ground_truth_all_classes_matches_the_mapper_targets():
    """Semantic FPN on all T + S classes: the evaluator's ground truth is the mapper's target."""
    register_tiny()
    cfg = load_cfg("quick_schedules/semantic_fpn_synthetic.yaml", *TINY_OPTS,
                   "INPUT.SEM_SEG_FORMAT", "all_classes", "INPUT.RANDOM_FLIP", "none")  # fmt: skip
    cfg.DATASETS.TRAIN = (NAME,)
    mapper = PanopticDatasetMapper(cfg, is_train=True)
    evaluator = build_evaluators(cfg, NAME)
    assert type(evaluator) is PanopticSemSegEvaluator and evaluator._num_classes == 6
    rng = np.random.default_rng(0)
    conf = np.zeros((7, 7), np.int64)
    evaluator.reset()
    for r in DatasetCatalog.get(NAME):
        target = mapper(copy.deepcopy(r))["sem_seg"].numpy()
        logits = torch.from_numpy(rng.random((6, *target.shape), dtype=np.float32))
        pred = logits.argmax(0).numpy()
        gt = np.where(target == 255, 6, target)
        conf += np.bincount(7 * pred.ravel() + gt.ravel(), minlength=49).reshape(7, 7)
        evaluator.process([{"file_name": r["file_name"]}], [{"sem_seg": logits}])
    res = evaluator.evaluate()["sem_seg"]
    tp, pos_gt, pos_pred = np.diag(conf)[:6], conf[:6, :6].sum(0), conf[:6, :6].sum(1)
    iou = tp / (pos_gt + pos_pred - tp)
    miou = iou[pos_gt > 0].mean()  # detectron2's mean: over the classes in the ground truth
    assert res["mIoU"] == pytest.approx(100 * miou, abs=1e-9) and 0 < miou < 0.5
    names = ["disk", "box", "triangle", "sky", "wall", "ground"]
    assert [k[4:] for k in res if k.startswith("IoU-")] == names
