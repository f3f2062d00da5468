#!/usr/bin/env python3
"""Which Panoptic FCN layers stay float in INT8: each group of ``PANOPTIC_FCN.int8_float_nodes``
quantized in turn (and the encoder's last layer kept float), measured on a trained model.

    python -m dev.int8_float_layers \\
        --config-file configs/quick_schedules/panoptic_fcn_synthetic.yaml \\
        --weights output/panoptic_fcn_synthetic/model_final.pth --calibration-images 16

The model is exported to fp32 ONNX once (``export_model``, with its fp32 check); each candidate
float set is quantized from that file (``quantize_int8``, calibrated on the first
``--calibration-images`` images of ``DATASETS.TRAIN[0]``) and run by ``ExportedPredictor`` on
every image of ``DATASETS.TEST[0]`` (``--val-images`` caps them). Printed per candidate: the
number of layers left float, how many images pass the default INT8 outcome check
(``OutcomeTolerance()`` against eager), the mean and worst outcome figures, PQ / PQ_th / PQ_st
of the INT8 results, and the INT8 / fp32 ONNX Runtime network time on the first test image
(``--repeats`` interleaved calls, median of the per-repeat ratios). PyTorch and ONNX Runtime run
with ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from typing import Any

import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from dev.common import Timings
from panoptic_ext.checkpoint.checkpointer import SafeCheckpointer
from panoptic_ext.data import PanopticDatasetMapper
from panoptic_ext.engine.launch import build_cfg_with_datasets
from panoptic_ext.evaluation.compare import worst_figures
from panoptic_ext.evaluation.evaluator import FastPanopticEvaluator
from panoptic_ext.export import (
    ExportedPredictor,
    ExportFormat,
    QuantizeOptions,
    compare_outcomes,
    export_model,
)
from panoptic_ext.export.panoptic_fcn import PANOPTIC_FCN
from panoptic_ext.export.quantize import quantize_int8

CHOSEN = PANOPTIC_FCN.int8_float_nodes
# The groups of the chosen set, each quantized in turn by an "int8-<group>" candidate.
GROUPS = {
    "position": (r"/position_head/out_inst", r"/position_head/out_sem"),
    "kernels": (r"/kernel_head/out_conv",),
    "embeddings": (r"/thing_generator/", r"/stuff_generator/"),
    "matmuls": (r"^/MatMul(_\d+)?$",),
}
CANDIDATES = {
    "chosen": CHOSEN,
    **{f"int8-{g}": tuple(p for p in CHOSEN if p not in pats) for g, pats in GROUPS.items()},
    # The encoder's last layer: the features the kernels are dotted with.
    "float-encoder": (*CHOSEN, r"/encoder/tower/layer3/"),
    "all-int8": (),
}


def panoptic_quality(dataset: str, inputs: list[dict], results: list[dict]) -> dict[str, float]:
    """PQ, PQ_th, PQ_st of ``results`` (one result dict per mapped input of ``dataset``)."""
    evaluator = FastPanopticEvaluator(dataset)
    evaluator.reset()
    for x, r in zip(inputs, results):
        evaluator.process([x], [r])
    pq = evaluator.evaluate()["panoptic_seg"]
    return {k: round(pq[k], 2) for k in ("PQ", "PQ_th", "PQ_st")}


def outcome_summary(expected: list[dict], actual: list[dict]) -> str:
    """Images passing the default INT8 check, mean and worst figures of ``actual`` vs eager."""
    comparisons = [compare_outcomes(e, a) for e, a in zip(expected, actual)]
    figures = [c.figures for c in comparisons]
    shares = [k for k in figures[0] if k.endswith(("_share", "_agreement"))]
    mean = {k: round(statistics.mean(f[k] for f in figures), 3) for k in shares}
    worst = {k: round(v, 3) for k, v in worst_figures(figures).items() if k in shares}
    passed = sum(c.ok for c in comparisons)
    return f"pass {passed}/{len(comparisons)}, mean {mean}, worst {worst}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--val-images", type=int, default=0, help="0: all of DATASETS.TEST[0]")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    unknown = set(args.candidates) - set(CANDIDATES)
    if unknown:
        parser.error(f"unknown candidates {sorted(unknown)}; known: {list(CANDIDATES)}")
    return args


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = build_cfg_with_datasets(args.config_file, ["MODEL.WEIGHTS", args.weights], "cpu")
    model = build_model(cfg).eval()
    SafeCheckpointer(model).load(args.weights)  # no code runs from the file
    mapper = PanopticDatasetMapper(cfg, is_train=False)
    dataset = cfg.DATASETS.TEST[0]
    val = DatasetCatalog.get(dataset)[: args.val_images or None]
    inputs: list[dict[str, Any]] = [mapper(dict(d)) for d in val]
    train = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[: args.calibration_images]
    calibration = QuantizeOptions([mapper(dict(d))["image"] for d in train])
    eager = [model([x])[0] for x in inputs]
    print(f"eager: {panoptic_quality(dataset, inputs, eager)} on {len(inputs)} images")

    def run(predictor: ExportedPredictor) -> list[dict]:
        return [predictor.run_tensor(x["image"], x["height"], x["width"]) for x in inputs]

    with tempfile.TemporaryDirectory() as out:
        fp32_path = export_model(model, cfg, ExportFormat.ONNX, out, inputs[:1]).path
        fp32 = ExportedPredictor(fp32_path, threads=args.threads)
        results = run(fp32)
        print(f"fp32 ORT: {panoptic_quality(dataset, inputs, results)}")
        image = inputs[0]["image"]
        for name in args.candidates:
            path = f"{out}/{name}.onnx"
            kept = quantize_int8(fp32_path, path, calibration, CANDIDATES[name])
            int8 = ExportedPredictor(path, threads=args.threads)
            results = run(int8)
            t = Timings()
            for _ in range(args.repeats):
                t.add("fp32", lambda: fp32.backend(image))
                t.add("int8", lambda p=int8: p.backend(image))
            print(
                f"{name}: {len(kept)} float; {outcome_summary(eager, results)}; "
                f"{panoptic_quality(dataset, inputs, results)}; "
                f"INT8 / fp32 network {t.ratio('int8', 'fp32'):.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
