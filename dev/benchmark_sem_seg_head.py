#!/usr/bin/env python3
"""Semantic FPN head variants side by side: params, FLOPs, train step and inference time.

Heads are measured alone on random FPN features (256 channels, strides 4..32), interleaved in one
process so a noisy machine slows them alike; ratios are against the first variant::

    python -m dev.benchmark_sem_seg_head --input-size 512x512 --num-classes 150 --iters 5
"""

import argparse

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from fvcore.nn import FlopCountAnalysis

from dev.common import Timings
from panoptic_ext.config import build_cfg
from panoptic_ext.modeling import SemanticFPNHead

VARIANTS = {
    "detectron2 SemSegFPNHead": (SemSegFPNHead, {}),
    "SemanticFPNHead standard": (SemanticFPNHead, {}),
    "SemanticFPNHead fused": (SemanticFPNHead, {"FUSED_UPSAMPLE": True}),
    "SemanticFPNHead separable": (SemanticFPNHead, {"CONV_TYPE": "separable"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input-size", default="512x512", help="HxW of the (padded) image")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=54)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    h, w = (int(v) for v in args.input_size.split("x"))
    shapes = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 6)}
    feats = {
        k: torch.randn(args.batch_size, 256, h // s.stride, w // s.stride, device=args.device)
        for k, s in shapes.items()
    }
    targets = torch.randint(0, args.num_classes, (args.batch_size, h, w), device=args.device)
    heads = {}
    for name, (cls, extra) in VARIANTS.items():
        options = [v for key, value in extra.items() for v in (f"MODEL.SEMANTIC_FPN.{key}", value)]
        cfg = build_cfg(None, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", args.num_classes, *options])
        heads[name] = cls(cfg, shapes).to(args.device)
    timings = {n: Timings(device=args.device) for n in heads}
    for it in range(args.iters + 1):  # first round is warm-up (timed into a throw-away)
        for name, head in heads.items():
            t = timings[name] if it else Timings(device=args.device)
            head.train()
            t.add("train", lambda head=head: head(feats, targets)[1]["loss_sem_seg"].backward())
            head.eval()
            with torch.no_grad():
                t.add("infer", lambda head=head: head(feats))

    base = None
    print(f"input {h}x{w}, batch {args.batch_size}, {args.num_classes} classes, {args.device}")
    print(f"{'variant':28s} {'params':>10s} {'GFLOPs':>8s} {'train s':>8s} {'infer s':>8s}  ratios")
    for name, head in heads.items():
        head.eval()
        with torch.no_grad():
            flops = FlopCountAnalysis(head, ({k: v[:1] for k, v in feats.items()},))
            flops.unsupported_ops_warnings(False)
            gflops = flops.total() / 1e9
        row = (
            sum(p.numel() for p in head.parameters()),
            gflops,
            timings[name].median("train"),
            timings[name].median("infer"),
        )
        base = base or row
        ratio = " ".join(f"{a / b:.2f}" for a, b in zip(row, base))
        print(f"{name:28s} {row[0]:>10,d} {row[1]:>8.2f} {row[2]:>8.3f} {row[3]:>8.3f}  {ratio}")


if __name__ == "__main__":
    main()
