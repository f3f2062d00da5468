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
loop; the export check's INT8 rule is reported, not enforced, so a refusal still gets timed.
With ``--bf16`` eager PyTorch also runs under ``torch.autocast("cpu", torch.bfloat16)``.
One table per family: a row per runtime with network and end-to-end seconds and their ratio to
ONNX Runtime fp32, the file size (eager: the state dict), the peak memory that loading the model
and running its network once adds to a fresh process (``VmHWM``, one child process per runtime)
and the outcome against eager fp32 (:func:`panoptic_ext.export.compare_outcomes`).
With ``--profile`` each ONNX file (fp32, and INT8 with ``--int8``) then runs once more under
ONNX Runtime's profiler (``SessionOptions.enable_profiling``) and the ops holding most of its
kernel time are printed, by op type and by node.
Under a shared, overloaded CPU use ``--threads 1``: OpenMP's barriers make 2-thread PyTorch
many times slower when its threads are descheduled, which says nothing about the runtimes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

import cv2
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from dev.common import Timings, activated_convs, calibrate_random_init, random_init_cfg
from panoptic_ext.checkpoint.safe_load import load_checkpoint_file
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


def bf16(fn):
    """``fn`` under CPU bfloat16 autocast (convolutions and matmuls in bf16, the rest fp32)."""

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn()

    return run


# Runtimes of one row each: the key prefix of their calls, and the table label.
RUNTIMES = {
    "eager": "eager PyTorch fp32",
    "bf16": "eager PyTorch bf16 autocast",
    "onnx": "ONNX Runtime fp32",
    "int8": "ONNX Runtime INT8",
}


# compare_outcomes figures shown in the table: what share of eager fp32's outcome is kept.
OUTCOME_SHARES = (
    ("segment_match_share", "segments matched"),
    ("instance_match_share", "confident instances matched"),
    ("panoptic_agreement", "panoptic pixels"),
    ("sem_seg_agreement", "sem_seg argmax"),
)


def peak_memory_mib(kind: str, model_path: str, image_path: str, threads: int, cfg_path: str):
    """Peak resident memory (MiB) that loading ``model_path`` and running its network once on
    the saved image adds to a fresh interpreter with the libraries imported, measured in a child
    process (a peak covers a whole process: one runtime per process)."""
    cmd = [sys.executable, "-m", "dev.benchmark_export", "--peak-memory-child", kind,
           model_path, image_path, str(threads), cfg_path]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


@torch.no_grad()
def _peak_memory_child(kind: str, model_path: str, image_path: str, threads: str, cfg: str):
    import onnxruntime  # noqa: F401  (imported before the baseline, as torch is)

    torch.set_num_threads(int(threads))
    image = load_checkpoint_file(image_path)
    before = _peak_rss_kib()
    if kind in ("eager", "bf16"):
        model_cfg = random_init_cfg(cfg, [])
        model = build_model(model_cfg).eval()
        model.load_state_dict(load_checkpoint_file(model_path))
        network = family_of(model_cfg.MODEL.META_ARCHITECTURE).network(model).eval()
        run = bf16(lambda: network(image)) if kind == "bf16" else lambda: network(image)
    else:
        predictor = ExportedPredictor(model_path, ["CPUExecutionProvider"], threads=int(threads))
        run = lambda: predictor.backend(image)  # noqa: E731
    run()
    print(json.dumps({"peak_mib": (_peak_rss_kib() - before) / 1024}))


def _peak_rss_kib() -> int:
    """This process's peak resident set (``VmHWM``), KiB. Not ``ru_maxrss``: Linux carries that
    over ``exec`` from the forking parent, so a child of the benchmark would report its size."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


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
    family_dir = os.path.join(out_dir, name)
    exported = export_model(
        model, cfg, ExportFormat.ONNX, family_dir, [sample],
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
    if args.bf16:
        calls["bf16 network"] = bf16(calls["eager network"])
        calls["bf16 end to end"] = bf16(calls["eager end to end"])
    if exported.int8 is not None:
        int8 = ExportedPredictor(exported.int8.path, ["CPUExecutionProvider"], threads=args.threads)
        calls["int8 network"] = lambda: int8.backend(image)
        calls["int8 end to end"] = lambda: int8.run_tensor(image, h, w)
    kinds = [k for k in RUNTIMES if f"{k} network" in calls]
    for fn in calls.values():  # warm-up (allocator, oneDNN / ORT kernel selection)
        fn()
    t = Timings(settle_s=args.settle)
    for _ in range(args.repeats):
        results = {k: t.add(k, fn) for k, fn in calls.items()}

    files = {"onnx": exported.path}
    if exported.int8 is not None:
        files["int8"] = exported.int8.path
    weights = os.path.join(family_dir, "eager.pth")
    torch.save(model.state_dict(), weights)
    image_path = os.path.join(family_dir, "image.pt")
    torch.save(image, image_path)
    cfg_path = os.path.join(family_dir, "config.yaml")  # with --families' and the user's opts
    with open(cfg_path, "w") as f:
        f.write(cfg.dump())
    memory = {
        k: peak_memory_mib(k, files.get(k, weights), image_path, args.threads, cfg_path)
        for k in kinds
    }

    eager = results["eager end to end"]
    same = compare_results(eager, results["onnx end to end"], family.tolerance)
    lines = [
        f"## {name}: {config} ({cfg.MODEL.META_ARCHITECTURE}), input {h}x{w}, "
        f"{args.threads} threads, export + check {export_s:.0f} s",
        f"eager outputs: {counts(eager)}",
        f"ONNX Runtime fp32 same results as eager (export check's standard): {same.ok} "
        f"{same.problems or ''}; figures { {k: round(v, 7) for k, v in same.figures.items()} }",
        "| runtime | network s | network / ORT fp32 | end to end s | end to end / ORT fp32 "
        "| file MiB | peak memory MiB | outcome vs eager fp32 |",
        "|---" * 8 + "|",
    ]
    for kind in kinds:
        net, e2e = f"{kind} network", f"{kind} end to end"
        size = os.path.getsize(files.get(kind, weights)) / 2**20
        if kind == "eager":
            outcome = counts(results[e2e])
        else:
            q = compare_outcomes(eager, results[e2e]).figures
            shares = [f"{label} {100 * q[k]:.1f} %" for k, label in OUTCOME_SHARES if k in q]
            outcome = f"{counts(results[e2e])}; " + ", ".join(shares)
        lines.append(
            f"| {RUNTIMES[kind]} | {t.median(net):.3f} | {t.ratio(net, 'onnx network'):.2f}x "
            f"| {t.median(e2e):.3f} | {t.ratio(e2e, 'onnx end to end'):.2f}x | {size:.1f} "
            f"| {memory[kind]:.0f} | {outcome} |"
        )
    if args.profile:
        for path in files.values():
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
        "--bf16", action="store_true", help="also time eager PyTorch under bf16 autocast"
    )
    parser.add_argument(
        "--profile", action="store_true", help="print ONNX Runtime's profile of each file"
    )
    parser.add_argument("--peak-memory-child", nargs=5, help=argparse.SUPPRESS)
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
    if args.peak_memory_child:
        _peak_memory_child(*args.peak_memory_child)
        return 0
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
