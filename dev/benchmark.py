#!/usr/bin/env python3
"""Side-by-side cost of detectron2 / panoptic_ext models built from configs (random init).

For every config: parameters, inference FLOPs (fvcore, one image), median train-step time
(forward + backward + SGD step on a batch), median inference time (one image) and peak memory
(CUDA ``max_memory_allocated`` on GPU; on CPU the peak resident-set growth during one train step).
``--amp fp16|bf16`` runs the steps under autocast; ``--calibrate-bn`` sets every FrozenBatchNorm's
statistics from one batch first (random-init ResNets otherwise grow features to ~1e3..1e6, which
overflow fp16 and make proposals and masks meaningless).
The configs are measured in one process and their iterations are interleaved, so a shared or
throttled machine slows them alike; ratios against the first config are printed::

    python -m dev.benchmark \\
        --config-file configs/Base-RCNN-FPN.yaml::MODEL.MASK_ON=True \\
        --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_PAFPN_1x.yaml \\
        --config-file configs/COCO-InstanceSegmentation/panet_R_50_1x.yaml \\
        --input-size 800x1333 --iters 3 --warmup 1 MODEL.RESNETS.DEPTH 50

``path::KEY=VALUE,KEY=VALUE`` overrides keys of one config; trailing ``KEY VALUE`` pairs apply to
all. ``--same-weights`` loads the first model's weights into every other one (strict: same
parameter names) and compares their inference outputs with the first one's (e.g. our Panoptic
FPN vs detectron2's with ``MODEL.SEM_SEG_HEAD.NAME=SemSegFPNHead``); ``--no-train`` times
inference only. Inputs are random images with random box-shaped instances and random semantic
labels. Random heads score every class near 1/K, so ``ROI_HEADS.SCORE_THRESH_TEST`` is set to 0
(unless ``--keep-score-thresh``) to make inference run the mask head on DETECTIONS_PER_IMAGE
boxes, as a trained model does.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.analysis import FlopCountAnalysis
from detectron2.utils.events import EventStorage

from dev import common
from dev.common import calibrate_random_init, random_init_cfg, sync


@dataclass
class Bench:
    """One config under test and its measurements (times in seconds, memory in MiB)."""

    name: str
    cfg: CfgNode
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_inputs: list[dict]
    train_times: list[float] = field(default_factory=list)
    infer_times: list[float] = field(default_factory=list)
    params: int = 0
    gflops: float = float("nan")
    # Wall time, or process CPU time (``--clock cpu``: with one thread, independent of load).
    clock: Callable[[], float] = time.perf_counter
    train_mem: float = float("nan")
    amp: torch.dtype | None = None  # autocast dtype of the timed steps (None: fp32)


def parse_size(text: str) -> tuple[int, int]:
    """ "800x1333" -> (800, 1333) for argparse."""
    try:
        return common.parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--input-size: {e}") from e


def bench_cfg(spec: str, opts: list[str], device: str, keep_score_thresh: bool) -> CfgNode:
    """Config from ``path[::KEY=VALUE,...]`` plus global ``opts``; random init on ``device``."""
    path, _, local = spec.partition("::")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    overrides = list(opts)
    for item in filter(None, local.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} in {spec!r} must be KEY=VALUE")
        overrides += [key, value]
    if not keep_score_thresh:
        overrides += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]
    return random_init_cfg(path, overrides, device=device, freeze=False)


def make_inputs(cfg: CfgNode, height: int, width: int, num_images: int, seed: int) -> list[dict]:
    """Random detectron2 inputs: uint8 image, 8 box-shaped instances, semantic labels (+ void)."""
    g = torch.Generator().manual_seed(seed)
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    num_sem = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    inputs = []
    for _ in range(num_images):
        n = 8
        wh = torch.rand(n, 2, generator=g) * 0.4 + 0.1
        xy = torch.rand(n, 2, generator=g) * (1 - wh)
        scale = torch.tensor([width, height], dtype=torch.float32)
        boxes = torch.cat([xy * scale, (xy + wh) * scale], dim=1)
        ys = torch.arange(height)[None, :, None]
        xs = torch.arange(width)[None, None, :]
        masks = (
            (xs >= boxes[:, 0, None, None])
            & (xs < boxes[:, 2, None, None])
            & (ys >= boxes[:, 1, None, None])
            & (ys < boxes[:, 3, None, None])
        )
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        inst.gt_masks = BitMasks(masks)
        sem = torch.randint(0, num_sem, (height, width), generator=g)
        sem[: height // 16] = 255
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
        inputs.append(
            {"image": image, "instances": inst, "sem_seg": sem, "height": height, "width": width}
        )
    return inputs


def _rss_mib(field_name: str) -> float:
    """VmRSS / VmHWM of this process in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def peak_memory(device: str, out: Callable[[float], None]):
    """Reports the peak memory growth (MiB) of the block: CUDA allocator, or process RSS on CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        yield
        torch.cuda.synchronize()
        out((torch.cuda.max_memory_allocated() - before) / 2**20)
        return
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back so RSS growth is visible
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the VmHWM high-water mark to the current RSS
    except OSError:
        yield
        out(float("nan"))
        return
    before = _rss_mib("VmRSS")
    yield
    out(_rss_mib("VmHWM") - before)


AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: str, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device``'s type with ``dtype``; a no-op context for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def calibrate_frozen_bn(model: torch.nn.Module, inputs: list[dict]) -> int:
    """Give every ``FrozenBatchNorm2d`` the batch statistics of its input on ``inputs`` (one
    inference pass, :func:`dev.common.calibrate_random_init`); returns the number of layers."""
    return calibrate_random_init(model, inputs)


def train_step(bench: Bench, inputs: list[dict]) -> float:
    bench.model.train()
    sync(bench.cfg.MODEL.DEVICE)
    start = bench.clock()
    with EventStorage(), autocast(bench.cfg.MODEL.DEVICE, bench.amp):
        losses = bench.model(inputs)
    loss = sum(losses.values())
    bench.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    bench.optimizer.step()
    sync(bench.cfg.MODEL.DEVICE)
    return bench.clock() - start


def infer_step(bench: Bench, inputs: list[dict]) -> float:
    bench.model.eval()
    sync(bench.cfg.MODEL.DEVICE)
    start = bench.clock()
    with torch.no_grad(), autocast(bench.cfg.MODEL.DEVICE, bench.amp):
        bench.model(inputs)
    sync(bench.cfg.MODEL.DEVICE)
    return bench.clock() - start


def count_gflops(bench: Bench, inputs: list[dict]) -> float:
    """Inference GFLOPs (fvcore counts one fused multiply-add as one flop) on one image."""
    bench.model.eval()
    with torch.no_grad():
        analysis = FlopCountAnalysis(bench.model, [{"image": inputs[0]["image"]}])
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return analysis.total() / 1e9


def share_weights(benches: list[Bench]) -> None:
    """Load the first model's state dict into every other model (strict)."""
    state = benches[0].model.state_dict()
    for b in benches[1:]:
        try:
            b.model.load_state_dict(state)
        except RuntimeError as e:
            raise SystemExit(f"--same-weights: {b.name} has other parameters: {e}") from e


def _flat_outputs(out: dict) -> dict[str, torch.Tensor]:
    """Named tensors of one detectron2 output dict (segments_info as its own entries)."""
    flat = {}
    if "sem_seg" in out:
        flat["sem_seg"] = out["sem_seg"]
    if "panoptic_seg" in out:
        pan, info = out["panoptic_seg"]
        flat["panoptic_seg"] = pan
        flat["segments_info"] = torch.tensor(
            [[s["id"], s["category_id"], s["isthing"]] for s in info], dtype=torch.float64
        ).view(-1, 3)
    inst = out.get("instances")
    if inst is not None:
        for k in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
            if inst.has(k):
                v = inst.get(k)
                flat[f"instances.{k}"] = v.tensor if hasattr(v, "tensor") else v
    return flat


def compare_inference_outputs(benches: list[Bench], inputs: list[dict]) -> str:
    """One line per config: identical to the first config's outputs, or the differences."""
    outputs = []
    for b in benches:
        b.model.eval()
        with torch.no_grad():
            outputs.append(_flat_outputs(b.model(inputs)[0]))
    lines = []
    for b, out in zip(benches[1:], outputs[1:]):
        diffs = []
        for k, ref in outputs[0].items():
            v = out.get(k)
            if v is None or v.shape != ref.shape:
                diffs.append(f"{k} shape {None if v is None else tuple(v.shape)}")
            elif not torch.equal(v, ref):
                diffs.append(f"{k} max abs {float((v.double() - ref.double()).abs().max()):.2e}")
        verdict = "identical outputs" if not diffs else "; ".join(diffs)
        lines.append(f"{b.name} vs {benches[0].name}: {verdict}")
    return "\n".join(lines)


def _ratio(value: float, ref: float) -> str:
    return f"{value / ref:.3f}" if ref and ref == ref and value == value else "-"


def format_table(benches: list[Bench]) -> str:
    """Markdown table: absolute numbers and ratios vs the first config."""
    ref = benches[0]
    rows = [
        "| config | params (M) | GFLOPs inf | train step (s) | inference (s) | train peak mem (MiB)"
        " | x params | x GFLOPs | x train | x inference | x mem |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    rtr = statistics.median(ref.train_times) if ref.train_times else nan
    rinf = statistics.median(ref.infer_times) if ref.infer_times else nan
    for b in benches:
        tr = statistics.median(b.train_times) if b.train_times else nan
        inf = statistics.median(b.infer_times) if b.infer_times else nan
        ratios = [
            _ratio(b.params, ref.params),
            _ratio(b.gflops, ref.gflops),
            _ratio(tr, rtr),
            _ratio(inf, rinf),
            _ratio(b.train_mem, ref.train_mem),
        ]
        rows.append(
            f"| {b.name} | {b.params / 1e6:.2f} | {b.gflops:.1f} | {tr:.3f} | {inf:.3f} | "
            f"{b.train_mem:.0f} | " + " | ".join(ratios) + " |"
        )
    return "\n".join(rows)


def run_iterations(benches: list[Bench], infer_inputs: list[dict], args) -> None:
    """Warm-up, then ``args.iters`` rounds; in each round every config runs once (interleaved)."""
    for _ in range(args.warmup if args.iters else 0):
        for b in benches:
            if not args.no_train:
                train_step(b, b.train_inputs)
            infer_step(b, infer_inputs)
    for it in range(args.iters):
        for b in benches:
            if args.no_train:
                pass
            elif it == args.iters - 1:
                with peak_memory(args.device, lambda v, b=b: setattr(b, "train_mem", v)):
                    b.train_times.append(train_step(b, b.train_inputs))
            else:
                b.train_times.append(train_step(b, b.train_inputs))
            b.infer_times.append(infer_step(b, infer_inputs))
            print(f"iteration {it + 1}/{args.iters}: {b.name} done", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> list[Bench]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", action="append", required=True, metavar="PATH[::K=V,...]")
    parser.add_argument("--input-size", type=parse_size, default=(800, 1333), metavar="HxW")
    parser.add_argument("--batch-size", type=int, default=2, help="images per train step")
    parser.add_argument(
        "--iters", type=int, default=5, help="timed iterations per config (0: params/FLOPs only)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per config")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (jit trace)")
    parser.add_argument("--keep-score-thresh", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), help="autocast dtype (default fp32)")
    parser.add_argument(
        "--calibrate-bn", action="store_true", help="FrozenBN statistics from the train batch"
    )
    parser.add_argument("--same-weights", action="store_true", help="first model's weights")
    parser.add_argument("--no-train", action="store_true", help="time inference only")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: process time"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs for every config")
    args = parser.parse_args(argv)
    if args.iters < 0 or args.warmup < 0:
        parser.error("--iters and --warmup must be >= 0")

    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = args.input_size
    benches = []
    for spec in args.config_file:
        cfg = bench_cfg(spec, args.opts, args.device, args.keep_score_thresh)
        torch.manual_seed(args.seed)
        model = build_model(cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        # lr 0: the step costs the same, and random-init FrozenBN ResNets cannot diverge.
        optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9)
        # Same seed: every config sees the same images and boxes (labels sized to its classes).
        inputs = make_inputs(cfg, height, width, args.batch_size, args.seed)
        num_params = sum(p.numel() for p in model.parameters())
        if args.calibrate_bn:
            calibrate_frozen_bn(model, inputs)
        amp = AMP_DTYPES.get(args.amp)
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        benches.append(
            Bench(spec, cfg, model, optimizer, inputs, params=num_params, amp=amp, clock=clock)
        )
    image = benches[0].train_inputs[0]["image"]
    infer_inputs = [{"image": image, "height": height, "width": width}]
    if args.same_weights:
        share_weights(benches)

    run_iterations(benches, infer_inputs, args)
    if not args.no_flops:
        for b in benches:
            b.gflops = count_gflops(b, infer_inputs)

    print(
        f"device {args.device}, input {height}x{width}, train batch {args.batch_size}, "
        f"median of {args.iters} iterations after {args.warmup} warm-up, "
        f"torch threads {torch.get_num_threads()}, {args.clock} clock, {args.amp or 'fp32'}"
        + (", calibrated FrozenBN" if args.calibrate_bn else "")
    )
    print(format_table(benches))
    if args.same_weights:
        print(compare_inference_outputs(benches, infer_inputs))
    return benches


if __name__ == "__main__":
    main()
