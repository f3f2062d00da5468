"""FastCOCOEvaluator (faster-coco-eval) gives detectron2's COCOEvaluator's numbers, every key."""

import math

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from helpers import load_cfg

from panoptic_ext.data.datasets import register_panoptic_dataset
from panoptic_ext.data.datasets.synthetic import SyntheticSpec, generate_split
from panoptic_ext.data.datasets.synthetic_predictions import predictions_from_ground_truth
from panoptic_ext.evaluation import FastCOCOEvaluator, build_coco_evaluator

NAME = "test_fast_coco_val"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco"))
    generate_split(root, "val", SyntheticSpec(image_size=96, num_images=12, seed=7))
    register_panoptic_dataset(
        NAME, f"{root}/val", f"{root}/panoptic_val", f"{root}/panoptic_val.json",
        instances_json=f"{root}/instances_val.json",
    )  # fmt: skip
    yield DatasetCatalog.get(NAME)
    DatasetCatalog.remove(NAME)
    MetadataCatalog.remove(NAME)


def _evaluate(evaluator, records, tmp_path):
    meta = MetadataCatalog.get(NAME)
    evaluator.reset()
    for r in records:
        inputs = [{k: r[k] for k in ("file_name", "image_id", "height", "width")}]
        evaluator.process(inputs, [predictions_from_ground_truth(r, meta, seed=1, detections=20)])
    return evaluator.evaluate()


def test_same_stats_as_detectron2(dataset, tmp_path):
    tasks = ("bbox", "segm")
    dirs = {side: tmp_path / side for side in ("d2", "ours")}
    ref = _evaluate(COCOEvaluator(NAME, tasks=tasks, output_dir=str(dirs["d2"])), dataset,
                    tmp_path)  # fmt: skip
    ours = _evaluate(FastCOCOEvaluator(NAME, tasks=tasks, output_dir=str(dirs["ours"])), dataset,
                     tmp_path)  # fmt: skip
    assert set(ours) == set(ref) == set(tasks)
    for task in tasks:
        assert list(ours[task]) == list(ref[task])  # AP, AP50, ..., AP-<class> for 3 classes
        assert len(ref[task]) == 6 + 3
        for key, value in ref[task].items():
            if math.isnan(value):
                assert math.isnan(ours[task][key]), (task, key)
            else:
                assert abs(ours[task][key] - value) < 1e-12, (task, key, ours[task][key], value)
        assert 10 < ref[task]["AP"] < 90  # imperfect predictions: a non-trivial comparison
    # Same results file, byte for byte (boxes, scores, classes and the mask RLEs).
    files = [(d / "coco_instances_results.json").read_bytes() for d in dirs.values()]
    assert files[0] == files[1] and b'"segmentation"' in files[0]


def test_config_switch(dataset):
    cases = {"auto": FastCOCOEvaluator, "faster_coco_eval": FastCOCOEvaluator,
             "detectron2": COCOEvaluator}  # fmt: skip
    for impl, cls in cases.items():
        cfg = load_cfg("quick_schedules/panoptic_fpn_synthetic.yaml", "TEST.COCO_EVAL_IMPL", impl)
        assert type(build_coco_evaluator(cfg, NAME, ("bbox",), None)) is cls
    cfg = load_cfg("quick_schedules/panoptic_fpn_synthetic.yaml", "TEST.COCO_EVAL_IMPL", "fast")
    with pytest.raises(ValueError, match=r"TEST.COCO_EVAL_IMPL='fast'.*faster_coco_eval"):
        build_coco_evaluator(cfg, NAME, ("bbox",), None)
