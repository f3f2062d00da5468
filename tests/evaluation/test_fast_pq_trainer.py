"""The trainer's evaluator table follows TEST.PANOPTIC_EVALUATOR; both evaluators agree."""

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from helpers import KEEP_ALL_DETECTIONS_OPTS, TINY_OPTS, build_tiny_model, load_cfg, register_tiny
from torch import nn

from panoptic_ext.data.panoptic_io import read_panoptic_png
from panoptic_ext.engine import Trainer, build_evaluators
from panoptic_ext.evaluation import FastPanopticEvaluator

OPTS = [*TINY_OPTS, *KEEP_ALL_DETECTIONS_OPTS, "TEST.EVALUATORS", ["panoptic"]]


class ShiftedGroundTruth(nn.Module):
    """A stand-in model with known, imperfect quality: the ground truth shifted by 3 px, with
    contiguous ids and isthing like PanopticFPN's output, so PQ is neither 0 nor 100."""

    def __init__(self, dataset_name):
        super().__init__()
        self.records = {r["image_id"]: r for r in DatasetCatalog.get(dataset_name)}

    def forward(self, batched_inputs):
        outputs = []
        for inp in batched_inputs:
            record = self.records[inp["image_id"]]
            gt = np.roll(read_panoptic_png(record["pan_seg_file_name"]).astype(np.int64), 3, axis=1)
            ids = torch.zeros(gt.shape, dtype=torch.int32)
            segments = []
            for k, s in enumerate(record["segments_info"], start=1):
                # Dataset dicts carry contiguous ids and isthing, as the model outputs them.
                ids[torch.from_numpy(gt == s["id"])] = k
                segments.append({"id": k, "category_id": s["category_id"], "isthing": s["isthing"]})
            present = set(torch.unique(ids).tolist())
            outputs.append({"panoptic_seg": (ids, [s for s in segments if s["id"] in present])})
        return outputs


def _test_both(tmp_path, make_model):
    results = {}
    for kind in ("fast", "panopticapi"):
        cfg = load_cfg(
            "quick_schedules/panoptic_fpn_synthetic.yaml", *OPTS,
            "TEST.PANOPTIC_EVALUATOR", kind, "OUTPUT_DIR", str(tmp_path),
        )  # fmt: skip
        evaluator = build_evaluators(cfg, "synthetic_panoptic_val")
        assert isinstance(evaluator, FastPanopticEvaluator) == (kind == "fast")
        results[kind] = Trainer.test(cfg, make_model(cfg))["panoptic_seg"]
    assert results["fast"].keys() == results["panopticapi"].keys()
    for key, value in results["panopticapi"].items():
        assert abs(results["fast"][key] - value) < 1e-7, key
    return results["fast"]


def test_trainer_fast_and_panopticapi_agree(tmp_path):
    register_tiny()
    res = _test_both(tmp_path, lambda cfg: ShiftedGroundTruth("synthetic_panoptic_val"))
    assert 20 < res["PQ"] < 99 and 20 < res["PQ_th"] < 99 and 20 < res["PQ_st"] < 99
    # A real random-init Panoptic FPN: its output format goes through both evaluators.
    _test_both(tmp_path, build_tiny_model)
