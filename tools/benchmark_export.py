#!/usr/bin/env python3
"""ONNX Runtime vs eager PyTorch latency per model family, side by side, same weights and input.

    python tools/benchmark_export.py --families semantic_fpn panoptic_fpn panet panoptic_fcn \\
        --size 800x1216 --repeats 5 --threads 2

For each family: its paper config (R-50) is built with random init (seed 0) made informative by
:func:`calibrate_random_init` (BN statistics and output-layer spread from the input), exported with
``panoptic_ext.export.export_model`` (which checks exported vs eager results at two sizes and
refuses on a difference), then one image (``--image``, default a synthetic val image, resized to
``--size``) runs ``--repeats`` times through both, interleaved (eager network, ONNX network,
eager end to end, exported end to end), after one warm-up each. Printed: medians, the median of
the per-repeat ratios eager / ONNX, the counts of instances / segments (a degenerate run shows)
and the comparison figures. Both runtimes use ``--threads`` intra-op threads.

"network" = the family's tensor-only forward (what the ONNX graph holds) in eager PyTorch vs the
ONNX Runtime session; "end to end" = the eager model's ``forward`` vs ``ExportedPredictor``
(session + the shared detectron2 post-processing), so the post-processing is timed in both.
Under a shared, overloaded CPU use ``--threads 1``: OpenMP's barriers make 2-thread PyTorch
many times slower when its threads are descheduled, which says nothing about the runtimes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.layers import Conv2d, FrozenBatchNorm2d  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from panoptic_ext.config import build_cfg  # noqa: E402
from panoptic_ext.data.datasets import register_synthetic_datasets  # noqa: E402
from panoptic_ext.export import (  # noqa: E402
    ExportCheckError,
    ExportedPredictor,
    ExportFormat,
    compare_results,
    export_model,
    family_of,
)
from panoptic_ext.model_zoo import get_config_file  # noqa: E402

FAMILY_CONFIGS = {
    "semantic_fpn": ("ADE20K/semantic_fpn_R_50_160k.yaml", []),
    "panoptic_fpn": ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", []),
    "panet": ("COCO-PanopticSegmentation/panoptic_fpn_R_50_panet_1x.yaml", []),
    "panoptic_fcn": ("COCO-PanopticSegmentation/panoptic_fcn_R_50_3x.yaml", []),
}
# Output layers whose random init is near zero (std 0.001-0.01): scaled to this logit spread, so
# scores, masks and labels are decided (not all ties at sigmoid 0.5 / softmax 1/K).
_CALIBRATED_OUTPUTS = {
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


@dataclass
class Timings:
    """Seconds per repeat of each measured call."""

    runs: dict[str, list[float]] = field(default_factory=dict)
    # Idle time before each call: the other runtime's worker threads spin-wait for a while
    # after its call returns (OpenMP for PyTorch, ONNX Runtime's pool) and, on a 2-core CPU,
    # took cycles from the call that followed (ONNX 2.50 s after eager calls, 2.32 s alone).
    settle_s: float = 0.0

    def add(self, name: str, fn: Callable[[], object]) -> object:
        if self.settle_s:
            time.sleep(self.settle_s)
        start = time.perf_counter()
        out = fn()
        self.runs.setdefault(name, []).append(time.perf_counter() - start)
        return out

    def median(self, name: str) -> float:
        return statistics.median(self.runs[name])

    def ratio(self, num: str, den: str) -> float:
        """Median over repeats of num/den (both measured in the same repeat)."""
        return statistics.median(a / b for a, b in zip(self.runs[num], self.runs[den]))


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


@torch.no_grad()
def calibrate_random_init(model: torch.nn.Module, sample: dict) -> None:
    """Make random-init weights informative (in place), data-dependently on ``sample``.

    Every FrozenBatchNorm2d gets the statistics of its input (a random ResNet otherwise grows its
    activations ~10x per stage, which no trained model does), and the output layers of
    ``_CALIBRATED_OUTPUTS`` get their target spread (bias kept).
    """
    hooks = []

    def bn_stats(mod, args):
        x = args[0]
        mod.running_mean.copy_(x.mean((0, 2, 3)))
        mod.running_var.copy_(x.var((0, 2, 3)).clamp(min=1e-4) - mod.eps)

    def spread(target):
        def hook(mod, args, out):
            if getattr(mod, "_calibrated", False):
                return None
            bias = 0 if mod.bias is None else mod.bias
            bias = bias.view(1, -1, *[1] * (out.dim() - 2)) if out.dim() > 1 else bias
            scale = float((out - bias).std()) / target
            mod.weight.div_(scale)
            mod._calibrated = True
            return (out - bias) / scale + bias

        return hook

    def centre(mod, args, out):  # activation detached meanwhile: ``out`` is pre-ReLU
        mean = out.mean((0, 2, 3))
        mod.bias.sub_(mean)
        return torch.relu(out - mean.view(1, -1, 1, 1))

    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            hooks.append(m.register_forward_pre_hook(bn_stats))
    # Panoptic FCN: zero-mean pre-ReLU encoder maps, or every thing mask covers the image.
    encoder = getattr(model, "encoder", None)
    centred = [
        m
        for m in (encoder.tower.modules() if encoder is not None else ())
        if isinstance(m, Conv2d) and m.activation is not None and m.bias is not None
    ]
    activations = [m.activation for m in centred]
    for m in centred:
        m.activation = None
        hooks.append(m.register_forward_hook(centre))
    for name, target in _CALIBRATED_OUTPUTS.items():
        module = dict(model.named_modules()).get(name)
        if module is not None:
            hooks.append(module.register_forward_hook(spread(target)))
    model([sample])
    for h in hooks:
        h.remove()
    for m, activation in zip(centred, activations):
        m.activation = activation


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
    opts = ["MODEL.WEIGHTS", "", *family_opts, *args.opts]
    cfg = build_cfg(get_config_file(config), opts, device="cpu")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    h, w = image.shape[-2:]
    sample = {"image": image, "height": h, "width": w}
    calibrate_random_init(model, sample)
    start = time.perf_counter()
    exported = export_model(model, cfg, ExportFormat.ONNX, os.path.join(out_dir, name), [sample])
    export_s = time.perf_counter() - start
    predictor = ExportedPredictor(exported.path, ["CPUExecutionProvider"], threads=args.threads)
    network = family_of(cfg.MODEL.META_ARCHITECTURE).network(model).eval()

    calls = {
        "eager network": lambda: network(image),
        "onnx network": lambda: predictor.backend(image),
        "eager end to end": lambda: model([sample])[0],
        "onnx end to end": lambda: predictor.run_tensor(image, h, w),
    }
    for fn in calls.values():  # warm-up (allocator, oneDNN / ORT kernel selection)
        fn()
    t = Timings(settle_s=args.settle)
    for _ in range(args.repeats):
        results = {k: t.add(k, fn) for k, fn in calls.items()}
    tolerance = family_of(cfg.MODEL.META_ARCHITECTURE).tolerance  # the export check's
    same = compare_results(results["eager end to end"], results["onnx end to end"], tolerance)
    lines = [
        f"## {name}: {config} ({cfg.MODEL.META_ARCHITECTURE}), input {h}x{w}, "
        f"export + check {export_s:.0f} s",
        f"outputs: {counts(results['eager end to end'])}; same results: {same.ok} "
        f"{same.problems or ''}",
        f"figures: { {k: round(v, 7) for k, v in same.figures.items()} }",
        "| stage | eager PyTorch s | ONNX Runtime s | eager / ONNX |",
        "|---|---|---|---|",
    ]
    for stage in ("network", "end to end"):
        e, o = f"eager {stage}", f"onnx {stage}"
        lines.append(f"| {stage} | {t.median(e):.3f} | {t.median(o):.3f} | {t.ratio(e, o):.2f}x |")
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
