#!/usr/bin/env python3
"""Accuracy of one trained model in eager PyTorch, ONNX Runtime fp32 and ONNX Runtime INT8.

    python -m dev.evaluate_export \\
        --config-file configs/quick_schedules/panoptic_fpn_synthetic.yaml \\
        --weights output/panoptic_fpn_synthetic/model_final.pth --calibration-images 16 --threads 1

The model is exported as ``panoptic-ext-export --quantize int8`` exports it (the product's
``export_model``: fp32 check, calibration on ``DATASETS.TRAIN[0]``, INT8 outcome check), then
the eager model and each exported file are evaluated on every dataset of the config's
``DATASETS.TEST`` through the trainer's evaluators, as ``--run-eval`` does
(:mod:`panoptic_ext.export.evaluate`). Printed: one table, metric rows (PQ, SQ, RQ, things /
stuff PQ, box AP, mask AP, mIoU, as the evaluators give them) x runtime columns, with the
differences "ORT fp32 - eager" (float rounding: about 0) and "ORT INT8 - ORT fp32" (the
quantization's cost). A family without an INT8 export is reported and measured in fp32 only.

``--threads`` sets PyTorch's and ONNX Runtime's intra-op threads (1 by default: accuracy does
not need more, and a shared CPU runs one thread per process best). ``--output DIR`` keeps the
exported files and the evaluators' outputs (default: a temporary folder, removed).
``--bf16`` adds a column for the eager model under ``torch.autocast("cpu", torch.bfloat16)``
(difference "eager bf16 - eager"). ``--no-int8-gate`` reports the INT8 check's figures
instead of refusing on them, so that a model the gate refuses can still be measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from typing import Any

import torch
from detectron2.structures import Boxes, Instances

from panoptic_ext.cli.export_model import calibration_options, sample_inputs
from panoptic_ext.engine import Trainer
from panoptic_ext.engine.launch import build_cfg_with_datasets
from panoptic_ext.evaluation.compare import worst_figures
from panoptic_ext.export import (
    CalibrationMethod,
    ExportCheckError,
    ExportFormat,
    OutcomeTolerance,
    export_model,
    family_of,
)
from panoptic_ext.export.evaluate import comparison_table, evaluate, evaluate_exported

EAGER, BF16, FP32, INT8 = "eager", "eager bf16", "ORT fp32", "ORT INT8"


def _to_float32(x: Any) -> Any:
    """``x`` (a result, or a list / dict / tuple / ``Instances`` / ``Boxes`` of them) with its
    bfloat16 tensors as float32: the evaluators convert tensors to numpy, which has no bf16."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.dtype == torch.bfloat16 else x
    if isinstance(x, Boxes):
        return Boxes(_to_float32(x.tensor))
    if isinstance(x, Instances):
        return Instances(x.image_size, **{k: _to_float32(v) for k, v in x.get_fields().items()})
    if isinstance(x, dict):
        return {k: _to_float32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float32(v) for v in x)
    return x


class Bf16Autocast(torch.nn.Module):
    """``model``'s inference under ``torch.autocast("cpu", torch.bfloat16)`` (convolutions and
    matmuls in bf16, the rest float32), results returned in float32."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = self.model(inputs)
        return _to_float32(outputs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="the trained model (MODEL.WEIGHTS)")
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument(
        "--calibration-method",
        choices=[m.value for m in CalibrationMethod],
        default=CalibrationMethod.MINMAX.value,
    )
    parser.add_argument("--calibration-dataset", default="")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of both runtimes")
    parser.add_argument("--output", default="", help="keep the files here (default: temporary)")
    parser.add_argument(
        "--no-int8-gate", action="store_true", help="report the INT8 check, do not enforce it"
    )
    parser.add_argument(
        "--bf16", action="store_true", help="also evaluate eager PyTorch under bf16 autocast"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = build_cfg_with_datasets(
        args.config_file, [*args.opts, "MODEL.WEIGHTS", args.weights], device="cpu"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    model = Trainer.build_model(cfg)
    Trainer.build_checkpointer(cfg, model, inference=True).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=False
    )
    family = family_of(cfg.MODEL.META_ARCHITECTURE)
    quantize = None
    if family.int8_float_nodes is None:
        print(f"INT8: {family.name} has no INT8 export (refused by export_model): fp32 only")
    else:
        quantize = calibration_options(
            cfg, args.calibration_images, args.calibration_method, args.calibration_dataset
        )
    # Zero shares: every outcome passes, the figures are still computed and stored.
    gate = OutcomeTolerance(0.0, 0.0, 0.0) if args.no_int8_gate else None
    print(f"load average at start: {os.getloadavg()}")
    with contextlib.ExitStack() as stack:
        folder = args.output or stack.enter_context(tempfile.TemporaryDirectory())
        try:
            result = export_model(
                model,
                cfg,
                ExportFormat.ONNX,
                folder,
                sample_inputs(cfg, [], 2),
                threads=args.threads,
                quantize=quantize,
                int8_tolerance=gate,
            )
        except ExportCheckError as e:
            print(f"export refused: {e}", file=sys.stderr)
            return 1
        columns = {EAGER: evaluate(cfg, model, os.path.join(folder, "eval_eager"), "eager")}
        if args.bf16:
            columns[BF16] = evaluate(cfg, Bf16Autocast(model), os.path.join(folder, "eval_bf16"))
        exported = {FP32: result} | ({INT8: result.int8} if result.int8 is not None else {})
        for label, written in exported.items():
            print(f"{label}: {written.path}, check {worst_figures(written.spec.checks)}")
            out = os.path.join(folder, f"eval_{os.path.basename(written.path)}")
            columns[label] = evaluate_exported(cfg, written.path, out, args.threads)
    differences = [(EAGER, FP32)] + ([(FP32, INT8)] if INT8 in columns else [])
    differences += [(EAGER, BF16)] if BF16 in columns else []
    print(f"load average at end: {os.getloadavg()}")
    print(f"{args.config_file} ({args.weights}), {args.threads} thread(s), INT8: "
          f"{args.calibration_images} images, {args.calibration_method}")  # fmt: skip
    print(comparison_table(columns, differences))
    return 0


if __name__ == "__main__":
    sys.exit(main())
