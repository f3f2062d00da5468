"""``panoptic-ext-export`` writes a checked model that ``panoptic-ext-demo --onnx`` runs with the
eager demo's results (same weights, same images)."""

import json
import logging
import os

import cv2
import pytest
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from export_helpers import FAMILY_CONFIGS, SMALL_OPTS, family_model, val_dicts
from helpers import config_path, load_cfg

from panoptic_ext.cli import demo, export_model
from panoptic_ext.engine.launch import register_config_datasets
from panoptic_ext.export import ExportedPredictor


def _saved(family: str, folder) -> str:
    """A saved random-init tiny model of ``family`` (the CLI loads weights like any user's)."""
    _, model = family_model(family)
    DetectionCheckpointer(model, str(folder)).save("model")
    return str(folder / "model.pth")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _saved("panoptic_fpn", tmp_path_factory.mktemp("weights"))


def _opts(weights, family="panoptic_fpn"):
    name, extra = FAMILY_CONFIGS[family]
    opts = [*SMALL_OPTS, *extra, "TEST.DETECTIONS_PER_IMAGE", 20, "MODEL.WEIGHTS", weights]
    return config_path(name), [str(v) for v in opts]


@pytest.mark.parametrize("family", ["panoptic_fpn", "panoptic_fcn"])
def test_export_then_demo_matches_the_eager_demo(family, weights, tmp_path):
    if family != "panoptic_fpn":
        weights = _saved(family, tmp_path)
    cfg_file, opts = _opts(weights, family)
    images = [d["file_name"] for d in val_dicts()[:3]]
    argv = ["--config-file", cfg_file, "--output", str(tmp_path / "export")]
    assert export_model.main([*argv, "--sample-image", images[0], *opts]) == 0
    onnx_file = str(tmp_path / "export" / "model.onnx")
    assert ExportedPredictor(onnx_file).spec.checks  # checked before it was written

    runs = {
        "eager": ["--config-file", cfg_file],
        "onnx": ["--onnx", onnx_file, "--config-file", cfg_file],  # config: class names only
    }
    for run, args in runs.items():
        out = tmp_path / run
        argv = [*args, "--input", *images, "--output", str(out), "--panoptic-out", str(out / "p")]
        assert demo.main([*argv, *opts]) == 0
    eager, onnx = (json.loads((tmp_path / r / "p" / "predictions.json").read_text()) for r in runs)
    assert len(eager["annotations"]) == 3

    def strip(record):
        return [(s["category_id"], s["isthing"]) for s in record["segments_info"]]

    for e, o in zip(eager["annotations"], onnx["annotations"]):
        assert strip(e) == strip(o) and any(s["isthing"] for s in e["segments_info"])
        for s, t in zip(e["segments_info"], o["segments_info"]):
            assert s.get("score", 0) == pytest.approx(t.get("score", 0), abs=1e-3)
        pngs = [cv2.imread(str(tmp_path / r / "p" / e["file_name"])) for r in runs]
        assert (pngs[0] == pngs[1]).all(axis=2).mean() >= 0.999
        overlays = [tmp_path / r / e["file_name"] for r in runs]
        assert all(os.path.getsize(f) > 0 for f in overlays)


def test_demo_onnx_needs_no_config(weights, tmp_path):
    cfg_file, opts = _opts(weights)
    image = val_dicts()[1]["file_name"]
    argv = ["--config-file", cfg_file, "--format", "torchscript", "--output", str(tmp_path)]
    assert export_model.main([*argv, "--sample-image", image, *opts]) == 0
    out = tmp_path / "overlay.png"
    assert (
        demo.main(["--onnx", str(tmp_path / "model.ts"), "--input", image, "--output", str(out)])
        == 0
    )
    assert cv2.imread(str(out)).shape == (64, 64, 3)


def test_export_without_samples_names_the_option(weights, tmp_path):
    cfg_file, opts = _opts(weights)
    with pytest.raises(ValueError, match="DATASETS.TEST is empty: pass --sample-image"):
        export_model.main(["--config-file", cfg_file, "--output", str(tmp_path), *opts,
                           "DATASETS.TEST", "()"])  # fmt: skip
    assert not os.listdir(tmp_path)


def test_demo_needs_a_config_or_a_model():
    with pytest.raises(SystemExit):
        demo.parse_args(["--input", "x.png"])


def test_export_int8_then_demo_runs_it(tmp_path):
    """``--quantize int8`` writes the checked fp32 and INT8 models (the tiny Semantic FPN passes
    the default outcome check); ``demo --onnx`` runs the INT8 one unchanged."""
    cfg_file, opts = _opts(_saved("semantic_fpn", tmp_path), "semantic_fpn")
    image = val_dicts()[1]["file_name"]
    argv = ["--config-file", cfg_file, "--output", str(tmp_path / "export"), "--sample-image",
            image, "--quantize", "int8", "--calibration-images", "2"]  # fmt: skip
    assert export_model.main([*argv, *opts]) == 0
    int8 = tmp_path / "export" / "model_int8.onnx"
    spec = ExportedPredictor(str(int8)).spec
    assert spec.quantization["calibration_dataset"] == "synthetic_panoptic_train"
    assert spec.quantization["calibration_images"] == 2
    assert all(c["sem_seg_agreement"] >= 0.9 for c in spec.checks)
    out = tmp_path / "overlay.png"
    assert demo.main(["--onnx", str(int8), "--input", image, "--output", str(out)]) == 0
    assert cv2.imread(str(out)).shape == (64, 64, 3)


def test_export_int8_needs_onnx(weights, tmp_path):
    cfg_file, opts = _opts(weights)
    argv = ["--config-file", cfg_file, "--format", "torchscript", "--output", str(tmp_path),
            "--quantize", "int8", *opts]  # fmt: skip
    with pytest.raises(ValueError, match="--quantize int8 needs --format onnx"):
        export_model.main(argv)


@pytest.mark.parametrize(
    "option, problem",
    [
        (["--calibration-images", "0"], "--calibration-images must be at least 1, got 0"),
        (["--calibration-dataset", "no_such_set"], "--calibration-dataset 'no_such_set' is not a"),
    ],
)
def test_export_int8_refuses_bad_calibration_options_before_the_model(
    weights, tmp_path, option, problem
):
    cfg_file, opts = _opts(weights)
    argv = ["--config-file", cfg_file, "--output", str(tmp_path), "--quantize", "int8", *option]
    with pytest.raises(ValueError, match=problem):
        export_model.main([*argv, *opts])
    assert not any(tmp_path.iterdir())  # nothing written


def test_calibration_on_a_smaller_set_than_asked_uses_what_there_is(caplog):
    cfg = load_cfg("quick_schedules/semantic_fpn_synthetic.yaml")
    register_config_datasets(cfg)
    available = len(DatasetCatalog.get("synthetic_panoptic_val"))
    with caplog.at_level(logging.WARNING, logger="panoptic_ext.export"):
        options = export_model.calibration_options(
            cfg, available + 5, dataset="synthetic_panoptic_val"
        )
    assert len(options.images) == available
    assert f"calibrating on {available} images" in caplog.text
