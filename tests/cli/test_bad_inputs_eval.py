"""Bad-input matrix, evaluation side: ground truth whose PNGs disagree with its JSON is refused by
``panoptic-ext-train --eval-only`` before inference (and by training before the first iteration),
with the file, segment and values named; ``panoptic-ext-validate-dataset`` reports the same
problem; a failing metric step keeps the finished inference on disk."""

import json
import os
import shutil

import numpy as np
import pytest
from bad_input_matrix import CFG, TRAIN, train_tiny
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers import one_thread, register_tiny
from PIL import Image

from panoptic_ext.cli import train, validate_dataset
from panoptic_ext.data.gt_checks import GroundTruthError
from panoptic_ext.structures.panoptic_ids import id_to_rgb, rgb_to_id

VAL = "synthetic_panoptic_val"


def _val_copy(tmp_path, mutate) -> tuple[str, str, str]:
    """A copy of the tiny validation set (JSON + PNG folder) that ``mutate(data, png_root)``
    damages; returns (DATASETS.REGISTER_PANOPTIC entry, JSON path, PNG folder)."""
    register_tiny()
    DatasetCatalog.get(VAL)  # generated on first use
    meta = MetadataCatalog.get(VAL)
    png_root = str(tmp_path / "pngs")
    shutil.copytree(meta.panoptic_root, png_root)
    data = json.load(open(meta.panoptic_json))
    mutate(data, png_root)
    path = str(tmp_path / "val.json")
    json.dump(data, open(path, "w"))
    entry = f"[('bad_val', '{os.path.abspath(meta.image_root)}', '{png_root}', '{path}')]"
    return entry, path, png_root


def _eval_only(run: str, out: str, entry: str, *extra: str):
    with one_thread():
        return train.main(["--config-file", CFG, "--eval-only", *TRAIN,
                           "DATASETS.REGISTER_PANOPTIC", entry, "DATASETS.TEST", "('bad_val',)",
                           "MODEL.WEIGHTS", os.path.join(run, "model_final.pth"),
                           "OUTPUT_DIR", out, *extra])  # fmt: skip


def _png(png_root: str, data: dict, i: int = 1) -> tuple[str, np.ndarray, list[dict]]:
    ann = data["annotations"][i]
    path = os.path.join(png_root, ann["file_name"])
    return path, rgb_to_id(np.asarray(Image.open(path).convert("RGB"))), ann["segments_info"]


def _stray_block(data, png_root):
    path, ids, _ = _png(png_root, data)
    ids[:8, :8] = 777  # an id no segment lists
    Image.fromarray(id_to_rgb(ids)).save(path)


def _as_jpeg(data, png_root):
    path, ids, _ = _png(png_root, data)
    Image.fromarray(id_to_rgb(ids)).save(path, format="JPEG", quality=95)


def _as_gray(data, png_root):
    path, _, _ = _png(png_root, data)
    Image.open(path).convert("L").save(path)


def _area_times_ten(data, png_root):
    for seg in data["annotations"][1]["segments_info"]:
        seg["area"] *= 10


def _area_seventy_percent(data, png_root):
    seg = data["annotations"][1]["segments_info"][1]
    seg["area"] = int(seg["area"] * 0.7)


def _thing_area_zero(data, png_root):
    cats = {c["id"]: c["isthing"] for c in data["categories"]}
    ann = next(
        a for a in data["annotations"] if any(cats[s["category_id"]] for s in a["segments_info"])
    )
    next(s for s in ann["segments_info"] if cats[s["category_id"]])["area"] = 0


def _area_nan(data, png_root):
    data["annotations"][1]["segments_info"][0]["area"] = float("nan")


def _area_negative(data, png_root):
    data["annotations"][1]["segments_info"][0]["area"] = -5


def _absent_segment(data, png_root):
    data["annotations"][1]["segments_info"].append(
        {"id": 4242, "category_id": 9, "iscrowd": 0, "area": 50, "bbox": [0, 0, 5, 10]}
    )


def _all_void(data, png_root):
    for ann in data["annotations"]:
        path = os.path.join(png_root, ann["file_name"])
        size = Image.open(path).size
        Image.new("RGB", size).save(path)
        ann["segments_info"] = []


PNG1 = r"val_000001.png \(id "  # the damaged image's PNG, then the segment id
CASES = [
    (_stray_block, "unlabeled_png_id", PNG1 + r"777\): 64 pixels have an id with no segment"),
    (_as_jpeg, "unsupported_png", r"val_000001.png.*is a JPEG file"),
    (_as_gray, "unsupported_png", r"val_000001.png.*is a gray PNG"),
    (_area_times_ten, "area_mismatch", PNG1 + r"12342002\): area 10220 but the PNG has 1022 "),
    (_area_seventy_percent, "area_mismatch", PNG1 + r"4490239\): area 1526 but the PNG has 2180"),
    (_thing_area_zero, "area_mismatch", r"\(id \d+\): area 0 but the PNG has \d+ pixels"),
    (_area_nan, "bad_area", r"\(id 12342002\): .*'area' is nan; need a finite number"),
    (_area_negative, "bad_area", r"\(id 12342002\): .*'area' is -5; need a finite number"),
    (_absent_segment, "empty_segment", PNG1 + r"4242\): no pixel in the PNG \(JSON area 50\)"),
    (_all_void, "void_dataset", r"all 4 PNGs are void"),
]  # fmt: skip
IDS = [c[1] + "-" + c[0].__name__.strip("_") for c in CASES]


@pytest.mark.parametrize("mutate, code, message", CASES, ids=IDS)
def test_eval_only_refuses_bad_ground_truth_before_inference(
    run, tmp_path, capsys, mutate, code, message
):
    entry, path, png_root = _val_copy(tmp_path, mutate)
    out = str(tmp_path / "eval")
    with pytest.raises(GroundTruthError, match=rf"\[{code}\] .*{message}") as err:
        _eval_only(run, out, entry)
    assert str(err.value).startswith(path)
    assert "Start inference" not in open(os.path.join(out, "log.txt")).read()
    # The validator reports the same problem (and does not crash on a NaN area).
    argv = ["--json", path, "--panoptic-root", png_root, "--no-images"]
    assert validate_dataset.main(argv) == 1
    assert f"[{code}]" in capsys.readouterr().out


def test_panopticapi_evaluator_refuses_too(run, tmp_path):
    entry, _, _ = _val_copy(tmp_path, _stray_block)
    with pytest.raises(GroundTruthError, match=r"\[unlabeled_png_id\]"):
        _eval_only(run, str(tmp_path / "eval"), entry, "TEST.PANOPTIC_EVALUATOR", "panopticapi")


def test_training_refuses_bad_test_ground_truth_before_the_first_iteration(tmp_path):
    entry, _, _ = _val_copy(tmp_path, _area_nan)
    out = str(tmp_path / "out")
    with pytest.raises(GroundTruthError, match=r"\[bad_area\].*'area' is nan"):
        train_tiny(out, "DATASETS.REGISTER_PANOPTIC", entry, "DATASETS.TEST", "('bad_val',)")
    assert not [f for f in os.listdir(out) if f.endswith(".pth")]


def test_clean_ground_truth_still_evaluates(run, tmp_path):
    entry, _, _ = _val_copy(tmp_path, lambda data, root: None)
    only_pq = ("TEST.EVALUATORS", "('panoptic',)")
    assert _eval_only(run, str(tmp_path / "eval"), entry, *only_pq) == 0
    with one_thread():
        assert train.main(["--config-file", CFG, "--eval-only", *TRAIN, "DATASETS.TEST",
                           f"('{VAL}',)", "MODEL.WEIGHTS", os.path.join(run, "model_final.pth"),
                           "OUTPUT_DIR", str(tmp_path / "ref"), *only_pq]) == 0  # fmt: skip

    def metrics(out: str) -> list[str]:
        log = open(os.path.join(out, "log.txt")).read().splitlines()
        # The last run's lines (in-process runs may repeat log handlers).
        return [line.split("copypaste: ")[1] for line in log if "copypaste: " in line][-3:]

    # The checked copy scores exactly as the original.
    assert metrics(str(tmp_path / "eval"))[1].startswith("PQ,SQ,RQ")
    assert metrics(str(tmp_path / "eval")) == metrics(str(tmp_path / "ref"))


@pytest.mark.parametrize("kind", ["fast", "panopticapi"])
def test_failed_metric_step_keeps_the_inference(run, tmp_path, monkeypatch, kind):
    """A metric step that fails after inference says where the finished inference is kept."""
    import panopticapi.evaluation

    from panoptic_ext.evaluation import evaluator

    def broken(*args, **kwargs):
        raise ArithmeticError("metric step broke")

    target = (evaluator, "pq_average") if kind == "fast" else (panopticapi.evaluation, "pq_compute")
    monkeypatch.setattr(*target, broken)
    entry, _, _ = _val_copy(tmp_path, lambda data, root: None)
    out = str(tmp_path / "eval")
    with pytest.raises(RuntimeError, match="metric step broke") as err:
        _eval_only(run, out, entry, "TEST.PANOPTIC_EVALUATOR", kind)
    inference = os.path.join(out, "inference")
    if kind == "fast":
        path = os.path.join(inference, "pq_stats_bad_val.json")
        assert f"predictions are kept in {path}" in str(err.value)
        kept = json.load(open(path))
        assert kept["images"] == 4 and len(kept["categories"]) == 6
        assert sum(c["tp"] + c["fn"] for c in kept["categories"]) > 0
    else:
        pngs = os.path.join(inference, "panoptic_predictions")
        assert f"the 4 predictions are kept: {inference}/predictions.json and the PNGs in {pngs}" \
            in str(err.value)  # fmt: skip
        assert len(os.listdir(pngs)) == 4
        assert len(json.load(open(os.path.join(inference, "predictions.json")))["annotations"]) == 4
