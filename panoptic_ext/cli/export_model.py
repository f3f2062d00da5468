"""Export a panoptic_ext model to ONNX or TorchScript (``panoptic-ext-export``).

    panoptic-ext-export --config-file configs/quick_schedules/panoptic_fpn_synthetic.yaml \\
        --format onnx --output export/ \\
        MODEL.WEIGHTS output/panoptic_fpn_synthetic/model_final.pth
    python tools/export_model.py --config-file CFG --format torchscript --output DIR \\
        --sample-image a.jpg --sample-image b.png MODEL.WEIGHTS model.pth

Writes ``DIR/model.onnx`` (or ``DIR/model.ts``) with dynamic image sizes, after running the
exported model next to the eager one on the sample images (default: the first two images of the
config's first test set) at their test size and at a second size: if any result differs beyond
float rounding, nothing is written and the exit status is 1. Run the file with
``panoptic_ext.export.ExportedPredictor`` or ``panoptic-ext-demo --onnx DIR/model.onnx``.
Exports run on the CPU; the exported model runs on CPU or, with ONNX Runtime's CUDA provider,
on a GPU.

    panoptic-ext-export --config-file CFG --output DIR --quantize int8 \\
        --calibration-images 16 --calibration-method minmax MODEL.WEIGHTS model.pth

also writes ``DIR/model_int8.onnx``: ONNX Runtime static INT8 quantization of ``model.onnx``,
calibrated on the first N images of the config's first training set (``--calibration-dataset``
names another registered dataset), mapped by the test mapper, and checked against the eager
model by its outcomes (segments, confident instances); exit status 1 if it fails.

    panoptic-ext-export --config-file CFG --output DIR --quantize int8 --run-eval \\
        MODEL.WEIGHTS model.pth

then evaluates each written file on every dataset of DATASETS.TEST through the evaluators the
trainer builds (PQ, box / mask AP, mIoU, as for ``train_net.py --eval-only``), prints
detectron2's tables and, with --quantize int8, fp32 vs INT8 metric by metric, and writes
``DIR/eval_model.json`` (``eval_model_int8.json``) with the evaluators' files in
``DIR/eval_model/<dataset>/``. Such paths that an earlier --run-eval did not write are refused
before the export starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils

from ..config import build_cfg
from ..data import PanopticDatasetMapper
from ..engine import Trainer
from ..engine.launch import register_config_datasets
from ..evaluation.compare import worst_figures
from ..export import ExportCheckError, ExportFormat, ExportResult, export_model
from ..export.evaluate import (
    check_eval_outputs,
    comparison_table,
    eval_outputs,
    evaluate_exported,
    write_eval_results,
)
from ..export.exporter import INT8_FILE_NAME
from ..export.quantize import CalibrationMethod, QuantizeOptions
from ..utils.paths import refuse_outputs_over_inputs

logger = logging.getLogger("panoptic_ext.export")


def sample_inputs(cfg: CfgNode, images: list[str], count: int) -> list[dict[str, Any]]:
    """Test-time inputs of ``images``, else of the first ``count`` images of the test set."""
    if images:
        dicts = []
        for path in images:
            h, w = utils.read_image(path).shape[:2]
            dicts.append({"file_name": path, "image_id": path, "height": h, "width": w})
    elif cfg.DATASETS.TEST:
        dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:count]
    else:
        raise ValueError("DATASETS.TEST is empty: pass --sample-image")
    mapper = PanopticDatasetMapper(cfg, is_train=False)
    return [mapper(d) for d in dicts]


def calibration_options(
    cfg: CfgNode, count: int, method: str = CalibrationMethod.MINMAX.value, dataset: str = ""
) -> QuantizeOptions:
    """The first ``count`` (``--calibration-images``) images of ``dataset``
    (``--calibration-dataset``, default ``DATASETS.TRAIN[0]``), as the test mapper gives them
    to the exported graph."""
    name = dataset or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "")
    if not name:
        raise ValueError("DATASETS.TRAIN is empty: pass --calibration-dataset")
    if count < 1:
        raise ValueError(f"--calibration-images must be at least 1, got {count}")
    if name not in DatasetCatalog.list():
        option = "--calibration-dataset" if dataset else "DATASETS.TRAIN[0]"
        raise ValueError(
            f"{option} {name!r} is not a registered dataset; the config registers "
            f"{[*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]}"
        )
    dicts = DatasetCatalog.get(name)[:count]
    if not dicts:
        raise ValueError(f"calibration dataset {name!r} has no images")
    if len(dicts) < count:
        logger.warning(
            "calibrating on %d images: %r has fewer than --calibration-images %d",
            len(dicts), name, count,
        )  # fmt: skip
    mapper = PanopticDatasetMapper(cfg, is_train=False)
    images = [mapper(d)["image"] for d in dicts]
    return QuantizeOptions(images, CalibrationMethod(method), name)


def run_eval(
    cfg: CfgNode, result: ExportResult, threads: int = 0, extra: dict[str, Any] | None = None
) -> None:
    """``--run-eval``: evaluate each written file on ``cfg.DATASETS.TEST`` with the trainer's
    evaluators, write its ``eval_<stem>.json`` and print fp32 vs INT8 when both were written."""
    written = [result] + ([result.int8] if result.int8 is not None else [])
    columns = {}
    for exported in written:
        label = "INT8" if exported.spec.quantization else "fp32"
        _, folder = eval_outputs(exported.path)
        results = evaluate_exported(cfg, exported.path, folder, threads)
        json_path = write_eval_results(exported.path, exported.spec, results, extra)
        print(f"evaluated {exported.path} on {list(results)}: {json_path}, {folder}/")
        columns[label] = results
    differences = [tuple(columns)] if len(columns) == 2 else []
    print(comparison_table(columns, differences))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--format", choices=[f.value for f in ExportFormat], default="onnx")
    parser.add_argument("--output", required=True, help="folder of model.onnx / model.ts")
    parser.add_argument(
        "--sample-image",
        action="append",
        default=[],
        help="image to trace and check with (repeatable; default: the test set's first images)",
    )
    parser.add_argument(
        "--num-samples", type=int, default=2, help="test-set images used without --sample-image"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads of the check (default: one per physical core); "
        "an ONNX export is also checked with one thread and must give the same results",
    )
    parser.add_argument(
        "--quantize", choices=["int8"], help="also write model_int8.onnx (ONNX only)"
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=16,
        help="images the INT8 activation ranges are calibrated on (default 16)",
    )
    parser.add_argument(
        "--calibration-method",
        choices=[m.value for m in CalibrationMethod],
        default=CalibrationMethod.MINMAX.value,
        help="how the ranges are chosen (default minmax)",
    )
    parser.add_argument(
        "--calibration-dataset",
        default="",
        help="registered dataset of the calibration images (default: DATASETS.TRAIN[0])",
    )
    parser.add_argument(
        "--run-eval",
        action="store_true",
        help="then evaluate each written model on DATASETS.TEST with the trainer's evaluators "
        "(PQ, box/mask AP, mIoU) into eval_<model>.json next to it",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    cfg = build_cfg(args.config_file, args.opts, device="cpu")
    file_name = ExportFormat(args.format).file_name
    written = [os.path.join(args.output, file_name)]
    written += [os.path.join(args.output, INT8_FILE_NAME)] if args.quantize else []
    evals = [p for w in written for p in eval_outputs(w)] if args.run_eval else []
    refuse_outputs_over_inputs(
        {"--config-file": args.config_file, "MODEL.WEIGHTS": cfg.MODEL.WEIGHTS,
         "--sample-image": args.sample_image},
        {"--output": args.output, f"--output's {file_name}": written[0],
         "--output's model_int8.onnx": os.path.join(args.output, INT8_FILE_NAME),
         "--run-eval's output": evals},
    )  # fmt: skip
    if args.run_eval:
        if not cfg.DATASETS.TEST:
            raise ValueError("--run-eval evaluates on DATASETS.TEST, which is empty")
        check_eval_outputs(written)  # before the export: nothing of the user's is replaced
    register_config_datasets(cfg)  # sample images come from DATASETS.TEST[0]
    quantize = None
    if args.quantize:  # before the model: a wrong calibration option fails fast
        quantize = calibration_options(
            cfg, args.calibration_images, args.calibration_method, args.calibration_dataset
        )
    model = Trainer.build_model(cfg)
    # Refuses empty MODEL.WEIGHTS and weights that leave a head at random initialisation.
    checkpointer = Trainer.build_checkpointer(cfg, model, inference=True)
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    samples = sample_inputs(cfg, args.sample_image, args.num_samples)
    try:
        result = export_model(
            model,
            cfg,
            ExportFormat(args.format),
            args.output,
            samples,
            threads=args.threads,
            quantize=quantize,
        )
    except ExportCheckError as e:
        print(f"export refused: {e}", file=sys.stderr)
        return 1
    checks = result.spec.checks
    sizes = sorted({tuple(c["size"]) for c in checks})
    print(f"wrote {result.path}: same results as PyTorch on {len(checks)} inputs (sizes {sizes})")
    print(f"worst figures: {worst_figures(checks)}")
    if result.int8 is not None:
        print(f"wrote {result.int8.path}: same outcomes as PyTorch on {len(checks)} inputs")
        print(f"worst INT8 figures: {worst_figures(result.int8.spec.checks)}")
    if args.run_eval:
        extra = {"config_file": args.config_file, "weights": cfg.MODEL.WEIGHTS}
        run_eval(cfg, result, args.threads, {**extra, "threads": args.threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
