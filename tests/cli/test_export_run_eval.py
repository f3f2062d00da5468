"""``panoptic-ext-export --run-eval``: the exported model evaluated through the trainer's
evaluators gives the eager model's metrics, written next to the model."""

import json

import pytest
from detectron2.checkpoint import DetectionCheckpointer
from export_helpers import FAMILY_CONFIGS, SMALL_OPTS, family_model
from helpers import config_path

from panoptic_ext.cli import export_model
from panoptic_ext.export.evaluate import evaluate, headline

DATASET = "synthetic_panoptic_val"


# The test size below the images' 64 px: results are resized back to 64x64 (height, width).
OPTS = [*SMALL_OPTS, *FAMILY_CONFIGS["semantic_fpn"][1], "INPUT.MIN_SIZE_TEST", 48]


def _argv(tmp_path, weights: str, *extra: str) -> list[str]:
    name = FAMILY_CONFIGS["semantic_fpn"][0]
    opts = [*OPTS, "MODEL.WEIGHTS", weights]
    return ["--config-file", config_path(name), "--output", str(tmp_path / "export"),
            "--num-samples", "1", *extra, *(str(v) for v in opts)]  # fmt: skip


def test_run_eval_gives_the_eager_metrics(tmp_path):
    cfg, model = family_model("semantic_fpn", *OPTS[len(SMALL_OPTS) :])
    DetectionCheckpointer(model, str(tmp_path)).save("model")
    argv = _argv(tmp_path, str(tmp_path / "model.pth"), "--run-eval")
    assert export_model.main(argv) == 0

    written = json.loads((tmp_path / "export" / "eval_model.json").read_text())
    assert written["model"] == "model.onnx" and written["precision"] == "fp32"
    exported = written["datasets"][DATASET]["sem_seg"]
    assert {"mIoU", "fwIoU", "mACC", "pACC"} <= set(exported)
    assert (tmp_path / "export" / "eval_model" / DATASET).is_dir()  # the evaluator's files

    # The eager model (the weights the CLI loaded) through the same evaluator.
    eager = evaluate(cfg, model.eval(), str(tmp_path / "eager"))[DATASET]["sem_seg"]
    assert set(eager) == set(exported)
    # Float rounding may flip a near-tied pixel of 4 64x64 images (the export check allows
    # 0.1 %): 0.05 points of a per-class figure is about 2 pixels.
    for key, value in eager.items():
        assert exported[key] == pytest.approx(value, abs=0.05), key
    assert headline({DATASET: {"sem_seg": exported}}) == {(DATASET, "mIoU"): exported["mIoU"]}


def test_run_eval_refuses_to_replace_a_foreign_file(tmp_path):
    (tmp_path / "export").mkdir()
    theirs = tmp_path / "export" / "eval_model.json"
    theirs.write_text('{"mine": 1}')
    argv = _argv(tmp_path, str(tmp_path / "missing.pth"), "--run-eval")
    with pytest.raises(FileExistsError, match="eval_model.json exists and is not the output"):
        export_model.main(argv)
    assert theirs.read_text() == '{"mine": 1}'
    assert not (tmp_path / "export" / "model.onnx").exists()
