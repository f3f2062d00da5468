#!/usr/bin/env python3
"""ONNX Runtime vs eager PyTorch latency per model family, side by side, same weights and input.

    python -m dev.benchmark_export --families semantic_fpn panoptic_fpn panet panoptic_fcn \\
        --size 800x1216 --repeats 5 --threads 2

For each family: its paper config (R-50) is built with random init (seed 0) made informative by
:func:`dev.common.calibrate_random_init` (BN statistics, centred encoder and output-layer
spread from the input, :data:`CALIBRATED_OUTPUTS`), exported with
``panoptic_ext.export.export_model`` (which checks exported vs eager results at two sizes and
refuses on a difference), then one image (``--image``, default a synthetic val image, resized to
``--size``) runs ``--repeats`` times through both, interleaved (eager network, ONNX network,
eager end to end, exported end to end), after one warm-up each. Printed: medians, the median of
the per-repeat ratios eager / ONNX, the counts of instances / segments (a degenerate run shows)
and the comparison figures. Both runtimes use ``--threads`` intra-op threads.

"network" = the family's tensor-only forward (what the ONNX graph holds) in eager PyTorch vs the
ONNX Runtime session; "end to end" = the eager model's ``forward`` vs ``ExportedPredictor``
(session + the shared detectron2 post-processing), so the post-processing is timed in both.
With ``--int8`` the INT8 model (``export_model(quantize=...)``, calibrated on the benchmark
image itself: a latency figure, not an accuracy one) is timed too, in the same interleaved
loop ("int8 network", "int8 end to end"), and its outcome figures against eager are printed
(the export check's INT8 rule is reported, not enforced, so a refusal still gets timed).
With ``--profile`` each ONNX file (fp32, and INT8 with ``--int8``) then runs once more under
ONNX Runtime's profiler (``SessionOptions.enable_profiling``) and the ops holding most of its
kernel time are printed, by op type and by node.
Under a shared, overloaded CPU use ``--threads 1``: OpenMP's barriers make 2-thread PyTorch
many times slower when its threads are descheduled, which says nothing about the runtimes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import cv2
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from dev.common import Timings, activated_convs, calibrate_random_init, random_init_cfg
from panoptic_ext.data.datasets import register_synthetic_datasets
from panoptic_ext.export import (
    ExportCheckError,
    ExportedPredictor,
    ExportFormat,
    OutcomeTolerance,
    QuantizeOptions,
    compare_outcomes,
    compare_results,
    export_model,
    family_of,
)
from panoptic_ext.export.runtime import INPUT_NAME
from panoptic_ext.model_zoo import get_config_file

FAMILY_CONFIGS = {
    "semantic_fpn": ("ADE20K/semantic_fpn_R_50_160k.yaml", []),
    "panoptic_fpn": ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", []),
    "panet": ("COCO-PanopticSegmentation/panoptic_fpn_R_50_panet_1x.yaml", []),
    "panoptic_fcn": ("COCO-PanopticSegmentation/panoptic_fcn_R_50_3x.yaml", []),
}
# Output layers whose random init is near zero (std 0.001-0.01): scaled to this logit spread, so
# scores, masks and labels are decided (not all ties at sigmoid 0.5 / softmax 1/K).
CALIBRATED_OUTPUTS = {
    "sem_seg_head.predictor": 3.0,
    "roi_heads.box_predictor.cls_score": 3.0,
    "roi_heads.mask_head.predictor": 3.0,
    # Panoptic FCN: center / region logits, kernels, and embeddings whose dot products with the
    # E = 64 encoder features give mask logits of spread ~3.
    "position_head.out_inst": 1.0,
    "position_head.out_sem": 3.0,
    "kernel_head.out_conv": 1.0,
    "thing_generator.embed_extractor": 0.4,
    "stuff_generator.embed_extractor": 0.4,
}


def bench_image(height: int, width: int, path: str | None = None) -> torch.Tensor:
    """(3, H, W) uint8 BGR: ``path`` (default: a synthetic val image, things and stuff)
    resized to the size."""
    if path is None:
        register_synthetic_datasets(image_size=128, num_train=1, num_val=2, seed=0)
        path = DatasetCatalog.get("synthetic_panoptic_val")[0]["file_name"]
    image = cv2.imread(path)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return torch.as_tensor(image.transpose(2, 0, 1).copy())


def calibrate(model: torch.nn.Module, sample: dict) -> None:
    """:func:`dev.common.calibrate_random_init` on ``sample``: FrozenBN statistics, zero-mean
    pre-ReLU maps in Panoptic FCN's encoder tower (or every thing mask covers the image), and
    the spreads of :data:`CALIBRATED_OUTPUTS`.

    Computed with one PyTorch thread, whatever ``--threads``: the statistics are sums whose
    rounding depends on the thread count, and the calibrated random Panoptic FCN has near-ties
    that such rounding decides, so ``--threads`` would otherwise benchmark another model.
    """
    encoder = getattr(model, "encoder", None)
    centred = activated_convs(encoder.tower) if encoder is not None else []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        calibrate_random_init(model, [sample], centred=centred, spreads=CALIBRATED_OUTPUTS)
    finally:
        torch.set_num_threads(threads)


def ort_profile(path: str, image: torch.Tensor, threads: int, top: int = 8) -> list[str]:
    """Lines naming the ``top`` op types and nodes by kernel time of one ONNX Runtime run of
    ``path`` on ``image`` ((3, H, W) uint8), after one unprofiled warm-up run."""
    import json
    from collections import Counter

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    feed = {INPUT_NAME: image.numpy()}
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, feed)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    by_type, by_node = Counter(), Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_type[e["args"]["op_name"]] += e["dur"]  # microseconds
            by_node[e["name"].removesuffix("_kernel_time")] += e["dur"]
    total = sum(by_type.values())
    lines = [f"profile of {os.path.basename(path)}: {total / 1e6:.2f} s of kernels"]
    for title, counter in (("op type", by_type), ("node", by_node)):
        top_items = counter.most_common(top)
        lines.append(
            f"  by {title}: "
            + ", ".join(f"{k} {v / 1e6:.2f} s ({v / total:.0%})" for k, v in top_items)
        )
    return lines


def counts(result: dict) -> str:
    parts = []
    if "instances" in result:
        parts.append(f"{len(result['instances'])} instances")
    if "panoptic_seg" in result:
        info = result["panoptic_seg"][1]
        things = sum(1 for s in info if s["isthing"])
        parts.append(f"{things} thing + {len(info) - things} stuff segments")
    if "sem_seg" in result:
        parts.append(f"{int(result['sem_seg'].argmax(0).unique().numel())} semantic classes")
    return ", ".join(parts)


@torch.no_grad()
def bench_family(name: str, args: argparse.Namespace, image: torch.Tensor, out_dir: str) -> str:
    config, family_opts = FAMILY_CONFIGS[name]
    cfg = random_init_cfg(get_config_file(config), [*family_opts, *args.opts])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    h, w = image.shape[-2:]
    sample = {"image": image, "height": h, "width": w}
    calibrate(model, sample)
    start = time.perf_counter()
    # INT8: calibrated on the benchmark image; the outcome rule is reported below, not enforced.
    quantize = QuantizeOptions([image]) if args.int8 else None
    exported = export_model(
        model, cfg, ExportFormat.ONNX, os.path.join(out_dir, name), [sample],
        threads=args.threads, quantize=quantize,
        int8_tolerance=OutcomeTolerance(0.0, 0.0, 0.0, 0.5),
    )  # fmt: skip
    export_s = time.perf_counter() - start
    predictor = ExportedPredictor(exported.path, ["CPUExecutionProvider"], threads=args.threads)
    family = family_of(cfg.MODEL.META_ARCHITECTURE)
    network = family.network(model).eval()

    calls = {
        "eager network": lambda: network(image),
        "onnx network": lambda: predictor.backend(image),
        "eager end to end": lambda: model([sample])[0],
        "onnx end to end": lambda: predictor.run_tensor(image, h, w),
    }
    stages = {"onnx": "ONNX Runtime fp32"}
    if exported.int8 is not None:
        int8 = ExportedPredictor(exported.int8.path, ["CPUExecutionProvider"], threads=args.threads)
        calls["int8 network"] = lambda: int8.backend(image)
        calls["int8 end to end"] = lambda: int8.run_tensor(image, h, w)
        stages["int8"] = "ONNX Runtime INT8"
    for fn in calls.values():  # warm-up (allocator, oneDNN / ORT kernel selection)
        fn()
    t = Timings(settle_s=args.settle)
    for _ in range(args.repeats):
        results = {k: t.add(k, fn) for k, fn in calls.items()}
    tolerance = family.tolerance  # the export check's
    same = compare_results(results["eager end to end"], results["onnx end to end"], tolerance)
    lines = [
        f"## {name}: {config} ({cfg.MODEL.META_ARCHITECTURE}), input {h}x{w}, "
        f"export + check {export_s:.0f} s",
        f"outputs: {counts(results['eager end to end'])}; same results: {same.ok} "
        f"{same.problems or ''}",
        f"figures: { {k: round(v, 7) for k, v in same.figures.items()} }",
    ]
    if exported.int8 is not None:
        q = compare_outcomes(results["eager end to end"], results["int8 end to end"])
        sizes = {k: os.path.getsize(v) / 2**20 for k, v in
                 (("fp32", exported.path), ("int8", exported.int8.path))}  # fmt: skip
        lines += [
            f"INT8 outputs: {counts(results['int8 end to end'])}; passes the INT8 check: {q.ok} "
            f"{q.problems or ''}",
            f"INT8 figures: { {k: round(v, 4) for k, v in q.figures.items()} }",
            f"file size: fp32 {sizes['fp32']:.1f} MiB, INT8 {sizes['int8']:.1f} MiB",
        ]
    header = " | ".join(f"{label} s | eager / {label}" for label in stages.values())
    lines += [f"| stage | eager PyTorch s | {header} |", "|---" * (2 + 2 * len(stages)) + "|"]
    for stage in ("network", "end to end"):
        e = f"eager {stage}"
        cells = [f"{t.median(e):.3f}"]
        for kind in stages:
            o = f"{kind} {stage}"
            cells += [f"{t.median(o):.3f}", f"{t.ratio(e, o):.2f}x"]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    if exported.int8 is not None:
        for stage in ("network", "end to end"):
            ratio = t.ratio(f"onnx {stage}", f"int8 {stage}")
            lines.append(f"INT8 / fp32 ONNX Runtime, {stage}: {1 / ratio:.2f}x the time")
    if args.profile:
        paths = [exported.path] + ([exported.int8.path] if exported.int8 is not None else [])
        for path in paths:
            lines += ort_profile(path, image, args.threads)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", default=list(FAMILY_CONFIGS))
    parser.add_argument("--size", default="800x1216", help="HxW of the input image")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both")
    parser.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds idle before each timed call, so neither runtime's spinning threads "
        "overlap the other's call (0: back to back)",
    )
    parser.add_argument("--int8", action="store_true", help="also time the INT8 model")
    parser.add_argument(
        "--profile", action="store_true", help="print ONNX Runtime's profile of each file"
    )
    parser.add_argument("--image", help="input image (default: a synthetic val image)")
    parser.add_argument("--output-dir", help="where the ONNX files go (default: a temp folder)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides (all)")
    args = parser.parse_args(argv)
    unknown = set(args.families) - set(FAMILY_CONFIGS)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; known: {sorted(FAMILY_CONFIGS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    image = bench_image(h, w, args.image)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.output_dir or tmp
        refused = []
        for name in args.families:
            try:
                print(bench_family(name, args, image, out_dir), flush=True)
            except ExportCheckError as e:  # reported; the other families still run
                refused.append(name)
                print(f"## {name}: export refused, not timed: {e}", flush=True)
            print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout)
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
