"""FastPanopticEvaluator / fast_pq give panopticapi's numbers exactly, and fail clearly."""

import contextlib
import io
import json
import logging
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator
from panopticapi.evaluation import pq_compute
from PIL import Image

from panoptic_ext import add_panoptic_ext_config
from panoptic_ext.data.datasets import register_panoptic_dataset
from panoptic_ext.data.datasets.synthetic_predictions import (
    BENCH_CATEGORIES,
    evaluate_pairs,
    make_benchmark_dataset,
)
from panoptic_ext.data.gt_checks import GroundTruthError
from panoptic_ext.evaluation import (
    FastPanopticEvaluator,
    PQCategories,
    build_panoptic_evaluator,
    image_pq_stats,
    pq_average,
    pq_compute_fast,
)
from panoptic_ext.structures.panoptic_ids import id_to_rgb

METRICS = ("pq", "sq", "rq")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """24 random images (48x64) with crowd, void, missed/spurious/relabelled predictions."""
    root = str(tmp_path_factory.mktemp("pq"))
    pairs = make_benchmark_dataset(root, "test_fast_pq_bench", 24, 48, 64, seed=3)
    # A ground-truth PNG id without a segments_info entry (panopticapi tolerates it; the tests
    # compare with check_gt=False).
    gt_json = os.path.join(root, "panoptic_bench.json")
    with open(gt_json) as f:
        data = json.load(f)
    clean_json = os.path.join(root, "panoptic_bench_clean.json")
    with open(clean_json, "w") as f:
        json.dump(data, f)
    meta = MetadataCatalog.get("test_fast_pq_bench")
    register_panoptic_dataset(
        "test_fast_pq_bench_clean", meta.image_root, meta.panoptic_root, clean_json
    )
    dropped = data["annotations"][0]["segments_info"].pop()
    with open(gt_json, "w") as f:
        json.dump(data, f)
    assert dropped["area"] > 0
    return root, pairs


def _write_predictions(root, pairs, meta):
    """Predictions as panopticapi files (dataset category ids)."""
    thing = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
    stuff = {v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items()}
    os.makedirs(os.path.join(root, "pred"), exist_ok=True)
    annotations = []
    for inp, out in pairs:
        ids, segments = out["panoptic_seg"]
        name = f"{inp['image_id']:06d}.png"
        Image.fromarray(id_to_rgb(ids.numpy())).save(os.path.join(root, "pred", name))
        segs = [
            {"id": s["id"], "category_id": (thing if s["isthing"] else stuff)[s["category_id"]]}
            for s in segments
        ]
        annotations.append({"image_id": inp["image_id"], "file_name": name, "segments_info": segs})
    pred_json = os.path.join(root, "pred.json")
    with open(pred_json, "w") as f:
        json.dump({"annotations": annotations, "categories": BENCH_CATEGORIES}, f)
    return pred_json


def test_files_match_pq_compute_per_class(bench):
    root, pairs = bench
    pred_json = _write_predictions(root, pairs, MetadataCatalog.get("test_fast_pq_bench"))
    gt_json, gt_dir, pred_dir = (
        os.path.join(root, n) for n in ("panoptic_bench.json", "panoptic_bench", "pred")
    )
    with contextlib.redirect_stdout(io.StringIO()):
        ref = pq_compute(gt_json, pred_json, gt_folder=gt_dir, pred_folder=pred_dir)
    # The planted PNG id without a segment is refused by default, named with its pixel count.
    with pytest.raises(GroundTruthError, match=r"\[unlabeled_png_id\].*bench_000000.png.*pixels"):
        pq_compute_fast(gt_json, pred_json, gt_dir, pred_dir, workers=2)
    ours = pq_compute_fast(gt_json, pred_json, gt_dir, pred_dir, workers=2, check_gt=False)
    for split in ("All", "Things", "Stuff"):
        assert ours[split]["n"] == ref[split]["n"]
        for m in METRICS:
            assert abs(ours[split][m] - ref[split][m]) < 1e-9, (split, m)
    assert set(ours["per_class"]) == set(ref["per_class"])
    for cat, values in ref["per_class"].items():
        for m in METRICS:
            assert abs(ours["per_class"][cat][m] - values[m]) < 1e-9, (cat, m)
    # The case is not trivial: imperfect but non-zero quality, one category never present.
    assert 0.05 < ours["All"]["pq"] < 0.95
    assert ours["Things"]["n"] == 3 and ours["per_class"][20] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluator_is_drop_in_for_coco_panoptic_evaluator(bench, workers, caplog):
    _, pairs = bench
    ref = evaluate_pairs(COCOPanopticEvaluator("test_fast_pq_bench"), pairs)
    with pytest.raises(GroundTruthError, match=r"\[unlabeled_png_id\]"):
        FastPanopticEvaluator("test_fast_pq_bench", num_workers=workers)
    evaluator = FastPanopticEvaluator("test_fast_pq_bench", num_workers=workers, check_gt=False)
    with caplog.at_level(logging.INFO, logger="panoptic_ext.evaluation.evaluator"):
        ours = evaluate_pairs(evaluator, pairs)
    assert list(ours["panoptic_seg"]) == list(ref["panoptic_seg"])
    for key, value in ref["panoptic_seg"].items():
        assert abs(ours["panoptic_seg"][key] - value) < 1e-7, key  # percent: 1e-9 of [0, 1]
    assert "Per-class panoptic results" in caplog.text and "never_seen" in caplog.text
    # A second round after reset() gives the same numbers (state fully cleared).
    assert evaluate_pairs(evaluator, pairs) == ours


def test_label_divisor_predictions_match(bench):
    """Panoptic-DeepLab style outputs: segments_info None, ids = contiguous class * divisor +
    instance, -1 = void (stuff left void: its 1..S ids would read as things in this metadata)."""
    _, pairs = bench
    divisor = MetadataCatalog.get("test_fast_pq_bench").label_divisor
    converted = []
    for inp, out in pairs:
        ids, segments = out["panoptic_seg"]
        pan = torch.full_like(ids, -1)
        for s in segments:
            if s["isthing"]:
                pan[ids == s["id"]] = s["category_id"] * divisor + s["id"]
        converted.append((inp, {"panoptic_seg": (pan, None)}))
    ref = evaluate_pairs(COCOPanopticEvaluator("test_fast_pq_bench"), converted)
    ours = evaluate_pairs(FastPanopticEvaluator("test_fast_pq_bench", check_gt=False), converted)
    for key, value in ref["panoptic_seg"].items():
        assert abs(ours["panoptic_seg"][key] - value) < 1e-7, key


HAND_CATEGORIES = [
    {"id": 1, "name": "thing", "isthing": 1},
    {"id": 2, "name": "stuff", "isthing": 0},
]


def _hand_case(crowd_order=("C1", "C2"), drop_pred3=False):
    """2x10 image. GT: A (thing, 6 px), crowds C1 (2 px) and C2 (4 px), S (stuff, 6 px), void 2."""
    a, c1, c2, s = 11, 12, 13, 14
    gt = np.array([[a] * 6 + [c1, c1, 0, 0], [c2] * 4 + [s] * 6])
    pred = np.array([[1, 1, 1, 1, 1, 0, 2, 2, 1, 2], [3, 3, 3, 0, 4, 4, 4, 4, 0, 0]])
    crowds = {"C1": {"id": c1, "category_id": 1, "iscrowd": 1, "area": 2},
              "C2": {"id": c2, "category_id": 1, "iscrowd": 1, "area": 4}}  # fmt: skip
    gt_segments = [{"id": a, "category_id": 1, "iscrowd": 0, "area": 6}]
    gt_segments += [crowds[k] for k in crowd_order]
    gt_segments.append({"id": s, "category_id": 2, "iscrowd": 0, "area": 6})
    pred_segments = [{"id": i, "category_id": c} for i, c in ((1, 1), (2, 1), (3, 1), (4, 2))]
    if drop_pred3:
        pred[pred == 3] = 0
        del pred_segments[2]
    return gt, gt_segments, pred, pred_segments


def test_hand_computed_crowd_and_void_rules():
    cats = PQCategories(HAND_CATEGORIES)
    gt, gt_segments, pred, pred_segments = _hand_case()
    stats = image_pq_stats(gt, gt_segments, pred, pred_segments, cats)
    # pred 1 vs A: inter 5, union 6 + 6 - 5 - 1 (pred on void) -> IoU 5/6, a TP.
    # pred 2 (C1 + 1 void px): the crowd region used is the LAST crowd of the category (C2), so
    # only 1/3 is ignored -> FP. pred 3 lies entirely on C2 -> ignored. pred 4 vs S: IoU 4/6.
    np.testing.assert_allclose(stats.iou, [5 / 6, 4 / 6], rtol=0, atol=1e-15)
    assert (
        stats.tp.tolist() == [1, 1] and stats.fp.tolist() == [1, 0] and stats.fn.tolist() == [0, 0]
    )
    res = pq_average(stats, cats)
    assert res["per_class"][1]["pq"] == pytest.approx((5 / 6) / 1.5, abs=1e-12)
    assert res["All"]["pq"] == pytest.approx(((5 / 6) / 1.5 + 4 / 6) / 2, abs=1e-12)
    # Without pred 3: pred 2 is a FP when C2 is listed last, ignored (3/3 void + crowd) when
    # C1 is.
    for order, fp in ((("C1", "C2"), [1, 0]), (("C2", "C1"), [0, 0])):
        gt, gt_segments, pred, pred_segments = _hand_case(order, drop_pred3=True)
        assert image_pq_stats(gt, gt_segments, pred, pred_segments, cats).fp.tolist() == fp


def test_empty_split_is_skipped_with_warning(caplog):
    """No stuff segment anywhere: panopticapi divides by zero, we report n=0 and warn."""
    cats = PQCategories(HAND_CATEGORIES)
    gt = np.array([[5, 5, 5], [5, 5, 0]])
    pred = np.array([[1, 1, 0], [1, 1, 1]])  # IoU = 4 / (5 + 5 - 4 - 1 on void) = 0.8
    stats = image_pq_stats(gt, [{"id": 5, "category_id": 1, "iscrowd": 0, "area": 5}], pred,
                           [{"id": 1, "category_id": 1}], cats)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="panoptic_ext.evaluation.fast_pq"):
        res = pq_average(stats, cats)
    assert res["Stuff"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    assert res["Things"]["n"] == 1 and res["Things"]["pq"] == pytest.approx(4 / 5)
    assert "no stuff category" in caplog.text


@pytest.mark.parametrize(
    "categories, message",
    [
        (
            [{"id": 1, "isthing": 1}, {"id": 1, "isthing": 0}],
            r"\[duplicate_category_id\] gt.json \(id 1\)",
        ),
        (
            [{"id": 1, "isthing": 1}, {"id": 2, "name": "sky"}],
            r"\[missing_isthing\] gt.json \(id 2\)",
        ),
        ([], r"\[no_categories\] gt.json"),
    ],
)
def test_categories_checked_up_front(categories, message):
    with pytest.raises(ValueError, match=message):
        PQCategories(categories, "gt.json")


def test_bad_predictions_name_image_and_ids():
    cats = PQCategories(HAND_CATEGORIES)
    gt, gt_segments, pred, pred_segments = _hand_case()
    with pytest.raises(ValueError, match=r"img7: predicted ids \[4\] are in the map"):
        image_pq_stats(gt, gt_segments, pred, pred_segments[:3], cats, "img7")
    with pytest.raises(ValueError, match=r"img7: predicted category ids \[9\]"):
        image_pq_stats(
            gt, gt_segments, pred, pred_segments[:3] + [{"id": 4, "category_id": 9}], cats, "img7"
        )
    with pytest.raises(ValueError, match=r"img7: predicted segments \[5\] have no pixel"):
        image_pq_stats(
            gt, gt_segments, pred, pred_segments + [{"id": 5, "category_id": 1}], cats, "img7"
        )


def test_config_selects_evaluator(bench):
    cfg = get_cfg()
    add_panoptic_ext_config(cfg)
    assert cfg.TEST.PANOPTIC_EVALUATOR == "fast"
    cfg.TEST.PQ_WORKERS = 3
    evaluator = build_panoptic_evaluator(cfg, "test_fast_pq_bench_clean")
    assert isinstance(evaluator, FastPanopticEvaluator) and evaluator._num_workers == 3
    cfg.TEST.PANOPTIC_EVALUATOR = "panopticapi"
    evaluator = build_panoptic_evaluator(cfg, "test_fast_pq_bench_clean")
    assert isinstance(evaluator, COCOPanopticEvaluator)
    # Both implementations refuse the ground truth with the planted PNG id when built.
    for kind in ("fast", "panopticapi"):
        cfg.TEST.PANOPTIC_EVALUATOR = kind
        with pytest.raises(GroundTruthError, match=r"\[unlabeled_png_id\].*917 pixels"):
            build_panoptic_evaluator(cfg, "test_fast_pq_bench")
    cfg.TEST.PANOPTIC_EVALUATOR = "slow"
    with pytest.raises(ValueError, match="TEST.PANOPTIC_EVALUATOR='slow'"):
        build_panoptic_evaluator(cfg, "test_fast_pq_bench")


def test_prediction_class_outside_metadata_is_named(bench):
    _, pairs = bench
    inp, out = pairs[0]
    ids, segments = out["panoptic_seg"]
    bad = [dict(segments[0], category_id=17, isthing=True)] + [dict(s) for s in segments[1:]]
    evaluator = FastPanopticEvaluator("test_fast_pq_bench", check_gt=False)
    with pytest.raises(ValueError, match="predicted thing class 17 is outside"):
        evaluator.process([inp], [{"panoptic_seg": (ids, bad)}])
