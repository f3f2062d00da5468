#!/usr/bin/env python3
"""Our Panoptic FCN vs the official implementation (dvlab-research/PanopticFCN): output parity
and side-by-side speed on the same weights and images.

    python -m dev.compare_panoptic_fcn_official --official-root /path/to/PanopticFCN \\
        [--config-file OURS.yaml] [--official-config-file THEIRS.yaml] [--weights OURS.pth] \\
        [--save-weights OUT.pth] [--num-images N] [--size HxW] [--images dataset|random|blank] \\
        [--our-batch] [--no-calibrate] [--time [--repeats R] [--batch-sizes 1,2,4] \\
        [--variant NAME:KEY=VALUE,...] [--train-step] [--threads T]] [KEY VALUE ...]

The official package ``panopticfcn`` is imported at run time from the user's checkout
(``--official-root``); nothing of it is part of this project. Both models are built on CPU and
get the SAME weights:

* ``--weights OURS.pth`` (e.g. a model trained with train_net.py, or weights saved by
  ``--save-weights``): our checkpoint, renamed to the official names by
  ``official_keys.ours_to_official`` and loaded strictly into the official model;
* otherwise the official model's random init, made informative by calibration (default on:
  data-dependent FrozenBN statistics and predictor scales, computed on the first image, because
  plain random weights give tied, sub-threshold scores), then converted to ours with
  ``official_keys.convert_official_state_dict`` (the converter's code path).

Configs: ours from ``--config-file`` + ``KEY VALUE`` overrides (our key names). The official
config is the official defaults (``add_panopticfcn_config``) + ``--official-config-file`` if
given, then every model/inference key of ours is translated to the official name
(``official_keys.OFFICIAL_CONFIG_KEYS``). With an official yaml, the keys it sets differently
from ours are listed, and any of them not given as ``KEY VALUE`` is an error, so the pair really
is the same model. Our keys that the official code hard-codes (per-level candidate cap =
TOP_NUM // 2, smoothing pools [3,3,3,5,5], peak pool 3, score floor 0.05) must keep those values.

Inputs (``{"image": uint8 CxHxW in INPUT.FORMAT, "height", "width"}``): images of
``DATASETS.TEST[0]`` through our test mapper (resized per our cfg, or to ``--size``), smooth
random images, or a uniform grey image (``blank``).

Parity (default mode): both run in eval mode, the official one image per forward (its inference
only supports batch 1); with ``--our-batch`` ours runs all images as ONE batch. Compared per
image: intermediates via forward hooks (backbone P2-P7, encoded feature, position-head and
kernel-head maps per level; fail above ``INTERMEDIATE_RTOL`` relative; the embedded thing
kernels are reported only, their order depends on score ties) and the outputs through
``panoptic_ext.evaluation.compare`` at ``PARITY_TOLERANCE`` (segments matched one to one,
scores within 1e-4, >= 99.99 % pixels, instances matched by class, score and mask, sem_seg
within 1e-4). Exit status 1 when any
image differs beyond the tolerances (or the official code raises).

Timing (``--time``): after ``--warmup`` rounds, ``--repeats`` rounds in which the official model
(batch 1) and ours at every ``--batch-sizes`` entry run alternately on the same images, so a
shared machine slows them alike; medians per image of the total and of four stages timed by
forward hooks on both models: backbone+FPN, encoder (semantic FPN + encoder tower), heads
(position + kernel heads over all levels, DCN included), inference/merge (the rest: input
normalisation, candidates, masks, panoptic merge). Each ``--variant`` adds one more of our
models (same weights, config overrides after the colon) to the alternation, so that speed
options can be measured one at a time. Counts per image (official candidates,
instances, segments) show a degenerate run. ``--train-step`` times forward + backward of both
in train mode on the same annotated batch (synthetic train images at ``INPUT.MIN_SIZE_TRAIN``).
``--clock cpu`` times with this process's CPU time instead of wall time: with ``--threads 1``
that is the work done, unaffected by other load on a shared machine.

Run-time shims (only inside this process; none changes the maths):

1. ``detectron2.layers.deform_conv.modulated_deform_conv`` (no CPU kernel in detectron2) is
   replaced by ``torchvision.ops.deform_conv2d`` with the same arguments. Both use the DCNv2
   layout: offset channels (dy, dx) per kernel tap, mask (N, 9, H, W), same bilinear sampling
   with zeros outside the map.
2. Registry clash: both packages register ``PanopticFCN``; the official package is imported
   while ``detectron2.modeling.meta_arch.build.META_ARCH_REGISTRY`` (the name it registers into)
   is a private registry, so ours stays registered; the official model is built by calling its
   class directly.
3. The official config is built on its own ``CfgNode`` (``add_panopticfcn_config`` replaces
   ``MODEL.SEM_SEG_HEAD``), ``MODEL.DEVICE`` cpu, ``MODEL.WEIGHTS`` unused.
"""

import argparse
import contextlib
import importlib
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch import build as meta_arch_build
from detectron2.utils.events import EventStorage
from fvcore.common.registry import Registry

from dev import common
from dev.common import config_path
from panoptic_ext.checkpoint.safe_load import load_checkpoint_file
from panoptic_ext.cli.convert_panoptic_fcn_official import panoptic_fcn_cpu_config
from panoptic_ext.data import PanopticDatasetMapper
from panoptic_ext.data.datasets import register_synthetic_datasets
from panoptic_ext.evaluation.compare import (
    PARITY_TOLERANCE,
    Tolerance,
    compare_results,
    describe_segment,
)
from panoptic_ext.modeling.panoptic_fcn.official_keys import (
    OFFICIAL_CONFIG_KEYS,
    OFFICIAL_HARD_CODED,
    convert_official_state_dict,
    ours_to_official,
)
from panoptic_ext.utils.yaml_config import merge_config_file

DEFAULT_CONFIG = config_path("COCO-PanopticSegmentation/panoptic_fcn_R_50_1x.yaml")
INTERMEDIATE_RTOL = 1e-3
_P = "MODEL.PANOPTIC_FCN."
# Short names used by the tests and older notes.
OFFICIAL_KEYS, HARD_CODED = OFFICIAL_CONFIG_KEYS, OFFICIAL_HARD_CODED


# ---------------------------------------------------------------------------------------------
# Official package and configs
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def official_shims():
    """Shim 1 of the module docstring: torchvision's CPU/GPU DCNv2 for detectron2's."""
    from detectron2.layers import deform_conv
    from torchvision.ops import deform_conv2d

    def modulated_deform_conv(x, offset, mask, weight, bias, stride, padding, dilation, *rest):
        groups, deformable_groups = (rest + (1, 1))[:2]
        if groups != 1 or offset.shape[1] != 2 * deformable_groups * weight[0, 0].numel():
            raise NotImplementedError("shim covers groups=1 with matching deformable groups")
        return deform_conv2d(
            x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask
        )

    saved = deform_conv.modulated_deform_conv
    deform_conv.modulated_deform_conv = modulated_deform_conv
    try:
        yield
    finally:
        deform_conv.modulated_deform_conv = saved


def import_official(root: str):
    """Import ``panopticfcn`` from the checkout at ``root`` (shim 2: registry clash)."""
    if not os.path.isfile(os.path.join(root, "panopticfcn", "__init__.py")):
        raise SystemExit(f"--official-root {root}: no panopticfcn/__init__.py there")
    shared = meta_arch_build.META_ARCH_REGISTRY
    meta_arch_build.META_ARCH_REGISTRY = Registry("META_ARCH_OFFICIAL")
    sys.path.insert(0, os.path.abspath(root))
    try:
        return importlib.import_module("panopticfcn")
    finally:
        sys.path.pop(0)
        meta_arch_build.META_ARCH_REGISTRY = shared


def _get(cfg: CfgNode, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _set(cfg: CfgNode, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        cfg = cfg[part]
    cfg[last] = value


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def our_config(config_file: str, opts: list[str]) -> CfgNode:
    cfg = panoptic_fcn_cpu_config(config_file, opts)
    if cfg.MODEL.BACKBONE.NAME != "build_resnet_fpn_p6p7_from_p5_backbone":
        raise SystemExit(f"MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME}: no official equivalent")
    p = cfg.MODEL.PANOPTIC_FCN.POSITION_HEAD.THING
    expected = dict(
        OFFICIAL_HARD_CODED, **{_P + "POSITION_HEAD.THING.LEVEL_TOP_NUM": p.TOP_NUM // 2}
    )
    bad = [f"{k}={_get(cfg, k)} (official: {v})" for k, v in expected.items() if _get(cfg, k) != v]
    if bad:
        raise SystemExit("the official code hard-codes these values: " + "; ".join(bad))
    return cfg


def official_config(
    official, ours: CfgNode, official_file: str | None, overridden: frozenset[str] = frozenset()
) -> CfgNode:
    """Official cfg: its defaults [+ its yaml], then our values under the official names.

    Raises SystemExit when the official yaml sets a model key differently from ours, unless
    that key of ours is in ``overridden`` (given on the command line for both sides).
    """
    cfg = get_cfg()
    official.add_panopticfcn_config(cfg)
    if official_file:
        merge_config_file(cfg, official_file)
        file_cfg = CfgNode(cfg)  # values after the yaml, before ours are applied
        diff = [
            f"{theirs}: official {_plain(_get(file_cfg, theirs))} vs ours {_plain(_get(ours, k))}"
            for k, theirs in OFFICIAL_CONFIG_KEYS.items()
            if _plain(_get(file_cfg, theirs)) != _plain(_get(ours, k))
        ]
        if diff:
            print("config values that differ (ours are used on both sides):")
            for d in diff:
                print("    " + d)
        bad = [
            theirs
            for k, theirs in OFFICIAL_CONFIG_KEYS.items()
            if k not in overridden and _plain(_get(file_cfg, theirs)) != _plain(_get(ours, k))
        ]
        if bad:
            raise SystemExit(f"{official_file} and our config differ in {bad} (not overridden)")
    for k, theirs in OFFICIAL_CONFIG_KEYS.items():
        _set(cfg, theirs, _get(ours, k))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def deform_towers(cfg: CfgNode) -> frozenset[str]:
    p = cfg.MODEL.PANOPTIC_FCN
    towers = {
        "encoder.tower": p.FEATURE_ENCODER.DEFORM,
        "position_head.tower": p.POSITION_HEAD.DEFORM,
        "kernel_head.tower": p.KERNEL_HEAD.DEFORM,
    }
    return frozenset(k for k, v in towers.items() if v)


def ours_to_official_state(state: dict[str, torch.Tensor], cfg: CfgNode) -> dict:
    towers = deform_towers(cfg)
    out, unmapped = {}, []
    for k, v in state.items():
        name = ours_to_official(k, towers)
        if name is None:
            unmapped.append(k)
        else:
            out[name] = v
    if unmapped:
        raise SystemExit(f"our parameters without an official name: {unmapped[:5]}")
    return out


# Unit output spread (std) of the official model's center / region predictors, kernel-head output
# and kernel embeddings (biases kept); the embeddings are rescaled again by the second pass.
OFFICIAL_UNIT_SPREAD = {
    name: 1.0
    for name in (
        "position_head.out_inst",
        "position_head.out_sem",
        "kernel_head.out_conv",
        "thing_generator.embed_extractor",
        "stuff_generator.embed_extractor",
    )
}


@torch.no_grad()
def calibrate_random_init(model: torch.nn.Module, batched_inputs: list[dict]) -> None:
    """Make a randomly initialised official model informative (weights changed in place).

    Data-dependent init on ``batched_inputs`` (:func:`dev.common.calibrate_random_init`): every
    FrozenBN of the backbone gets the batch statistics of its input (so the random backbone
    keeps unit-scale features instead of ~1e3), the encoder convs zero-mean pre-ReLU outputs
    (bias shift, so that thing masks do not cover the whole image), the modules of
    :data:`OFFICIAL_UNIT_SPREAD` unit output spread; then a second pass scales the two kernel
    embeddings so that mask logits have a spread of ~3.
    """
    common.calibrate_random_init(
        model,
        batched_inputs,
        bn_root=model.backbone,
        centred=common.activated_convs(model.feature_encoder),
        spreads=OFFICIAL_UNIT_SPREAD,
    )
    _calibrate_mask_logits(model, batched_inputs)


def _calibrate_mask_logits(model: torch.nn.Module, batched_inputs: list[dict]) -> None:
    """Scale both kernel embeddings so that mask logits spread ~3 (one forward)."""
    spreads, hooks = {}, []

    def logits_spread(name):
        def hook(mod, args, out):
            if isinstance(out[0], torch.Tensor):
                spreads[name] = float(out[0].std())

        return hook

    for name in ("thing_generator", "stuff_generator"):
        hooks.append(getattr(model, name).register_forward_hook(logits_spread(name)))
    model(batched_inputs)
    for h in hooks:
        h.remove()
    for name, s in spreads.items():
        emb = getattr(model, name).embed_extractor
        emb.weight.mul_(3.0 / s)
        emb.bias.mul_(3.0 / s)


@dataclass
class Models:
    """Both models in eval mode with the same weights."""

    ours: torch.nn.Module
    theirs: torch.nn.Module
    weights: str  # how the weights were made


def build_models(cfg: CfgNode, ocfg: CfgNode, official, args, first_input: dict) -> Models:
    """Build both models and give them the same weights (see the module docstring)."""
    theirs = official.PanopticFCN(ocfg).eval()
    ours = build_model(cfg).eval()
    if args.weights:
        ckpt = load_checkpoint_file(args.weights)
        ours.load_state_dict(ckpt.get("model", ckpt))  # strict: must fit our config
        theirs.load_state_dict(ours_to_official_state(ours.state_dict(), cfg))
        return Models(ours, theirs, f"{args.weights} -> ours; reverse mapping -> official")
    if not args.no_calibrate:
        calibrate_random_init(theirs, [dict(first_input)])
    converted, report = convert_official_state_dict(theirs.state_dict(), ours.state_dict())
    if report["unmatched"] or report["missing"] or report["shape_mismatch"]:
        raise SystemExit(
            f"converter report: { {k: v[:5] for k, v in report.items() if k != 'matched'} }"
        )
    ours.load_state_dict(converted)
    calib = "calibrated " if not args.no_calibrate else ""
    how = f"official {calib}random init -> converter -> ours ({len(report['matched'])} tensors)"
    return Models(ours, theirs, how)


# ---------------------------------------------------------------------------------------------
# Images and intermediates
# ---------------------------------------------------------------------------------------------
def make_inputs(cfg: CfgNode, source: str, num: int, size: tuple[int, int] | None) -> list:
    """Dataset dicts {"image": uint8 (3, H, W) in INPUT.FORMAT, "height", "width", "name"}."""
    if source == "dataset":
        syn = cfg.DATASETS.SYNTHETIC
        register_synthetic_datasets(syn.IMAGE_SIZE, syn.NUM_TRAIN, syn.NUM_VAL, syn.SEED)
        name = cfg.DATASETS.TEST[0]
        mapper = PanopticDatasetMapper(cfg, is_train=False)
        out = []
        for d in DatasetCatalog.get(name)[:num]:
            m = mapper(dict(d))
            img = m["image"]
            if size is not None:
                img = F.interpolate(img[None].float(), size, mode="bilinear", align_corners=False)
                img = img[0].round().clamp(0, 255).to(torch.uint8)
            item = {"image": img, "height": m["height"], "width": m["width"]}
            out.append(dict(item, name=os.path.basename(d["file_name"])))
        return out
    h, w = size or (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(num):
        if source == "blank":
            img = torch.full((3, h, w), 128, dtype=torch.uint8)
        else:  # smooth random colours: 8x8 noise upsampled, so regions exist
            low = torch.rand((1, 3, 8, 8), generator=gen) * 255
            img = F.interpolate(low, (h, w), mode="bicubic", align_corners=False)[0]
            img = img.round().clamp(0, 255).to(torch.uint8)
        out.append({"image": img, "height": h, "width": w, "name": f"{source}{i}"})
    return out


class Recorder:
    """Forward hooks that record the intermediates of one model, keyed by common names."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.values: dict[str, list] = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name):
        def hook(mod, args, out):
            self.values.setdefault(name, []).append(out)

        return hook

    def pop(self) -> dict[str, list]:
        v, self.values = self.values, {}
        return v


def flatten_intermediates(
    rec: dict[str, list], official: bool, index: int = 0
) -> dict[str, torch.Tensor]:
    """Common-named tensors of batch item ``index``: p2..p7, encode_feat, center/region/kernel
    maps per level, embedded thing kernels."""
    out: dict[str, torch.Tensor] = {}
    sl = slice(index, index + 1)
    for k, v in rec["backbone"][0].items():
        out[f"backbone.{k}"] = v[sl]
    out["encode_feat"] = rec["encoder"][0][sl]
    for lvl, (c, r) in enumerate(rec["position_head"]):
        out[f"center_logits[{lvl}]"] = c[sl]
        out[f"region_logits[{lvl}]"] = r[sl]
    for lvl, k in enumerate(rec["kernel_head"]):
        out[f"kernel_map[{lvl}]"] = k[sl]
    if rec.get("thing_kernels"):
        k = rec["thing_kernels"][0]
        # official: (1, E, n, 1) embed conv output; ours: (N, n_padded, E) before fusion
        out["thing_kernels*"] = k[0, :, :, 0].T if official else k[index]
    return out


def compare_intermediates(ours: dict, theirs: dict) -> list[tuple[str, float, float, bool]]:
    """(name, max abs diff, relative diff, compared-for-failure) per common tensor."""
    rows = []
    for name, b in theirs.items():
        a = ours.get(name)
        if a is None:
            continue
        if name.endswith("*"):  # kernels: ours keeps padded invalid candidates at the end
            a = a[: len(b)]
        if a.shape != b.shape:
            rows.append((name, float("inf"), float("inf"), not name.endswith("*")))
            continue
        diff = float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
        scale = float(b.float().abs().max()) if b.numel() else 0.0
        rows.append((name, diff, diff / max(scale, 1e-12), not name.endswith("*")))
    return rows


def train_inputs(cfg: CfgNode, num: int) -> list[dict]:
    """Annotated images of ``synthetic_panoptic_train`` with things, through our train mapper
    (at ``INPUT.MIN_SIZE_TRAIN``; its ``instances`` and ``sem_seg`` suit both models)."""
    syn = cfg.DATASETS.SYNTHETIC
    register_synthetic_datasets(syn.IMAGE_SIZE, syn.NUM_TRAIN, syn.NUM_VAL, syn.SEED)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TRAIN = ("synthetic_panoptic_train",)  # the mapper reads its metadata
    mapper = PanopticDatasetMapper(cfg, is_train=True)
    mapped = (mapper(dict(d)) for d in DatasetCatalog.get("synthetic_panoptic_train"))
    # The official ground-truth code fails on an image without things.
    return [m for m in mapped if len(m["instances"])][:num]


def _model_input(item: dict) -> dict:
    return {k: item[k] for k in ("image", "height", "width")}


# ---------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------
def _recorders(models: Models) -> tuple[Recorder, Recorder]:
    ours, theirs = models.ours, models.theirs
    rec_a = Recorder(
        {
            "backbone": ours.backbone,
            "encoder": ours.encoder,
            "position_head": ours.position_head,
            "kernel_head": ours.kernel_head,
            "thing_kernels": ours.thing_generator,
        }
    )
    rec_b = Recorder(
        {
            "backbone": theirs.backbone,
            "encoder": theirs.feature_encoder,
            "position_head": theirs.position_head,
            "kernel_head": theirs.kernel_head,
            "thing_kernels": theirs.thing_generator.embed_extractor,
        }
    )
    return rec_a, rec_b


PARITY_HEADER = (
    f"{'image':<22}{'input':>10}{'segs o/t':>9}{'match':>6}{'inst o/t':>9}"
    f"{'pix agree':>11}{'max dscore':>11}{'sem max d':>10}{'interm rel':>11}  result"
)


@torch.no_grad()
def run_parity(models: Models, inputs: list[dict], our_batch: bool) -> int:
    """Compare both models image by image (table on stdout); returns the number that differ."""
    rec_a, rec_b = _recorders(models)
    tol = PARITY_TOLERANCE
    print(
        f"\ntolerances: score {tol.score_atol}, sem_seg {tol.value_rtol}, pixel agreement "
        f">= {tol.pixel_agreement}, intermediates relative {INTERMEDIATE_RTOL}"
    )
    print(PARITY_HEADER + "\n" + "-" * len(PARITY_HEADER))
    batch_out, batch_rec = None, None
    if our_batch:  # ours: all images in one forward; official: one at a time
        if len({tuple(it["image"].shape) for it in inputs}) != 1:
            raise SystemExit("--our-batch needs equal input sizes (padding changes features)")
        batch_out = models.ours([_model_input(it) for it in inputs])
        batch_rec = rec_a.pop()
        print(f"ours: one batch of {len(inputs)} images")
    failed = 0
    for idx, item in enumerate(inputs):
        out_a = batch_out[idx] if batch_out else models.ours([_model_input(item)])[0]
        try:
            out_b = models.theirs([_model_input(item)])[0]
        except Exception as e:  # the official code's crash paths (see docstring)
            rec_a.pop(), rec_b.pop()
            print(f"{item['name']:<22} official raised {type(e).__name__}: {e}")
            failed += 1
            continue
        ours_rec, ours_idx = (batch_rec, idx) if batch_rec else (rec_a.pop(), 0)
        inter = compare_intermediates(
            flatten_intermediates(ours_rec, False, ours_idx),
            flatten_intermediates(rec_b.pop(), True),
        )
        failed += not _parity_row(item, out_a, out_b, inter, tol)
    print(f"\n{len(inputs) - failed}/{len(inputs)} images agree within the tolerances")
    return failed


def _parity_row(item: dict, out_a: dict, out_b: dict, inter: list, tol: Tolerance) -> bool:
    """Print one image's row (and its problems); True when it agrees."""
    worst = max((r for r in inter if r[3]), key=lambda r: r[2], default=("-", 0, 0, 1))
    res = compare_results(out_b, out_a, tol)  # the official outputs are the reference
    problems = list(res.problems)
    if worst[2] > INTERMEDIATE_RTOL:
        problems.append(f"intermediate {worst[0]} relative difference {worst[2]:.3g}")
    size = "x".join(map(str, item["image"].shape[-2:]))
    fig = res.figures
    score = max(fig.get("segment_score_max_diff", 0.0), fig.get("instance_score_max_diff", 0.0))
    print(
        f"{item['name']:<22}{size:>10}{fig['segments_actual']:>4.0f}/{fig['segments']:<4.0f}"
        f"{fig['segments_matched']:>6.0f}"
        f"{fig.get('instances_actual', 0):>4.0f}/{fig.get('instances', 0):<4.0f}"
        f"{fig['panoptic_agreement']:>11.6f}{score:>11.2e}"
        f"{fig.get('sem_seg_max_rel_diff', 0.0):>10.2e}{worst[2]:>11.2e}  "
        + ("OK" if not problems else "DIFF")
    )
    for p in problems:
        print("    " + p)
    if os.environ.get("PFCN_COMPARE_VERBOSE"):
        for name, d, rel, _ in inter:
            print(f"    {name:<20} max abs {d:.3e}  rel {rel:.3e}")
        for s in out_b["panoptic_seg"][1]:
            print("    official", describe_segment(s))
    return not problems


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
STAGES = ("backbone+FPN", "encoder", "heads (incl. DCN)", "inference/merge")
# Timing clocks: wall time, or this process's CPU time (with one thread: the work done,
# whatever else the machine runs).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class StageTimer:
    """Wall time of module calls, summed per stage name (forward pre/post hooks)."""

    def __init__(self, stages: dict[str, list[torch.nn.Module]], clock=time.perf_counter):
        self.clock = clock
        self.totals: dict[str, float] = {}
        self._start: dict[int, float] = {}
        self.handles = []
        for name, modules in stages.items():
            for m in modules:
                self.handles.append(m.register_forward_pre_hook(self._pre))
                self.handles.append(m.register_forward_hook(self._post(name)))

    def _pre(self, mod, args):
        self._start[id(mod)] = self.clock()

    def _post(self, name: str):
        def hook(mod, args, out):
            dt = self.clock() - self._start.pop(id(mod))
            self.totals[name] = self.totals.get(name, 0.0) + dt

        return hook

    def run(self, fn, *args) -> tuple[Any, dict[str, float]]:
        """``fn(*args)`` -> (its result, seconds per stage incl. "total" and the rest)."""
        self.totals = {}
        t0 = self.clock()
        out = fn(*args)
        total = self.clock() - t0
        times = dict(self.totals, total=total)
        times[STAGES[3]] = total - sum(self.totals.values())
        return out, times


def _stage_timers(ours: torch.nn.Module, theirs: torch.nn.Module | None, clock) -> tuple:
    heads = "heads (incl. DCN)"
    timer_a = StageTimer(
        {
            "backbone+FPN": [ours.backbone],
            "encoder": [ours.encoder],
            heads: [ours.position_head, ours.kernel_head],
        },
        clock,
    )
    if theirs is None:
        return timer_a, None
    timer_b = StageTimer(
        {
            "backbone+FPN": [theirs.backbone],
            "encoder": [theirs.semantic_fpn, theirs.feature_encoder],
            heads: [theirs.position_head, theirs.kernel_head],
        },
        clock,
    )
    return timer_a, timer_b


@dataclass
class Series:
    """Per-image timings of one model setting, and what its outputs contained."""

    name: str
    batch: int
    model: torch.nn.Module
    timer: StageTimer
    times: list[dict[str, float]] = field(default_factory=list)
    counts: str = ""

    def median(self, key: str) -> float:
        return statistics.median(t[key] for t in self.times) / self.batch


def build_variants(models: Models, cfg_file: str, opts: list[str], specs: list[str]) -> dict:
    """``--variant NAME:KEY=VALUE,KEY=VALUE``: more of our models, same weights."""
    variants = {}
    for spec in specs:
        name, _, pairs = spec.partition(":")
        extra = [x for pair in pairs.split(",") if pair for x in pair.split("=", 1)]
        model = build_model(our_config(cfg_file, list(opts) + extra))
        model.load_state_dict(models.ours.state_dict())
        variants[name] = model.eval()
    return variants


def _official_counts(theirs: torch.nn.Module) -> tuple[list[int], list]:
    """Hooks that record the official thing / stuff candidate counts of every forward."""
    counts: list[int] = []

    def hook(mod, args):
        n = args[3]
        counts.append(int(n.sum()) if isinstance(n, torch.Tensor) else int(n))

    gens = (theirs.thing_generator, theirs.stuff_generator)
    return counts, [g.register_forward_pre_hook(hook) for g in gens]


def _describe_outputs(outs: list[dict]) -> str:
    segs = sum(len(o["panoptic_seg"][1]) for o in outs) / len(outs)
    inst = sum(len(o["instances"].scores) for o in outs) / len(outs)
    return f"{inst:.0f} instances, {segs:.0f} segments per image"


@torch.no_grad()
def run_timing(models: Models, inputs: list[dict], args, variants: dict) -> None:
    """Alternate the official model, ours at each batch size and each variant (batch 1);
    print medians per image."""
    clock = CLOCKS[args.clock]
    timer_a, timer_b = _stage_timers(models.ours, models.theirs, clock)
    counts, handles = _official_counts(models.theirs)
    series = [Series("official", 1, models.theirs, timer_b)]
    series += [Series("ours", b, models.ours, timer_a) for b in args.batch_sizes]
    series += [Series(k, 1, m, _stage_timers(m, None, clock)[0]) for k, m in variants.items()]
    images = [_model_input(it) for it in inputs]
    for r in range(args.warmup + args.repeats):
        for s in series:
            for start in range(0, len(images), s.batch):
                batch = [images[(start + j) % len(images)] for j in range(s.batch)]
                counts.clear()
                out, times = s.timer.run(s.model, batch)
                if r >= args.warmup:
                    s.times.append(times)
                s.counts = _describe_outputs(out)
                if s.name == "official":
                    s.counts += f", {counts[0]} thing / {counts[1]} stuff candidates"
    for h in handles:
        h.remove()
    _print_timing(series, args)


def _print_timing(series: list[Series], args) -> None:
    ref = series[0]
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(
        f"\nmedian seconds per image over {args.repeats} alternated rounds (after "
        f"{args.warmup} warm-up), {torch.get_num_threads()} threads, {args.clock} clock; {load}"
    )
    head = f"{'model':<20}" + "".join(f"{k:>19}" for k in (*STAGES, "total")) + "  vs official"
    print(head + "\n" + "-" * len(head))
    for s in series:
        cells = "".join(f"{s.median(k):>19.3f}" for k in (*STAGES, "total"))
        ratio = s.median("total") / ref.median("total")
        print(f"{s.name + f' (batch {s.batch})':<20}{cells}  x{ratio:.3f}")
    for s in series:
        print(f"  {s.name} batch {s.batch}: {s.counts}")


def run_train_timing(models: Models, batch: list[dict], args) -> None:
    """Forward + backward of both models in train mode on the same batch, alternated."""
    times: dict[str, list[float]] = {"official": [], "ours": []}
    losses: dict[str, dict] = {}
    for r in range(args.warmup + args.repeats):
        for name, model in (("official", models.theirs), ("ours", models.ours)):
            model.train()
            model.zero_grad(set_to_none=True)
            t0 = CLOCKS[args.clock]()
            with EventStorage():
                loss_dict = model([dict(x) for x in batch])
            sum(loss_dict.values()).backward()
            if r >= args.warmup:
                times[name].append(CLOCKS[args.clock]() - t0)
            losses[name] = {k: round(float(v.detach()), 4) for k, v in loss_dict.items()}
            model.eval()
    size = "x".join(map(str, batch[0]["image"].shape[-2:]))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\ntrain step (forward + backward), batch {len(batch)} at {size}, "
        f"median of {args.repeats}:"
    )
    for name in ("official", "ours"):
        print(
            f"  {name:<9} {med[name]:.3f} s  x{med[name] / med['official']:.3f}  "
            f"losses {losses[name]}"
        )


# ---------------------------------------------------------------------------------------------
def parse_size(s: str | None) -> tuple[int, int] | None:
    if not s:
        return None
    h, w = s.lower().split("x")
    return int(h), int(w)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-root", required=True, help="checkout of PanopticFCN")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="our config")
    parser.add_argument("--official-config-file", default=None, help="official yaml to check")
    parser.add_argument("--weights", default=None, help="our checkpoint (else official init)")
    parser.add_argument("--save-weights", default=None, help="write the weights used (ours)")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--size", default=None, help="HxW model input size")
    parser.add_argument("--images", choices=("dataset", "random", "blank"), default="dataset")
    parser.add_argument("--no-calibrate", action="store_true", help="plain random init")
    parser.add_argument("--our-batch", action="store_true", help="ours: all images in one batch")
    parser.add_argument("--time", action="store_true", help="timing instead of parity")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--batch-sizes", default="1", help="ours, e.g. 1,2,4")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="timing: another of our models, NAME:KEY=VALUE,KEY=VALUE (same weights)",
    )
    parser.add_argument("--train-step", action="store_true", help="also time a train step")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE (our key names)")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    official = import_official(args.official_root)
    cfg = our_config(args.config_file, args.opts)
    ocfg = official_config(official, cfg, args.official_config_file, frozenset(args.opts[0::2]))
    inputs = make_inputs(cfg, args.images, args.num_images, parse_size(args.size))
    with official_shims():
        models = build_models(cfg, ocfg, official, args, _model_input(inputs[0]))
        print(f"weights: {models.weights}")
        if args.save_weights:
            torch.save({"model": models.ours.state_dict()}, args.save_weights)
            print(f"saved our weights to {args.save_weights} (reuse with --weights)")
        if not args.time:
            return 1 if run_parity(models, inputs, args.our_batch) else 0
        variants = build_variants(models, args.config_file, args.opts, args.variant)
        run_timing(models, inputs, args, variants)
        if args.train_step:
            run_train_timing(models, train_inputs(cfg, args.train_batch), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
