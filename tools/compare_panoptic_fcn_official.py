#!/usr/bin/env python3
"""Output parity of our Panoptic FCN with the official implementation (dvlab-research/PanopticFCN).

    python tools/compare_panoptic_fcn_official.py --official-root /path/to/PanopticFCN \\
        [--config-file OURS.yaml] [--official-config-file THEIRS.yaml] [--weights OURS.pth] \\
        [--num-images N] [--size HxW] [--images dataset|random|blank] [--our-batch]
        [--no-calibrate] [KEY VALUE ...]

The official package ``panopticfcn`` is imported at run time from the user's checkout
(``--official-root``); nothing of it is part of this project. Both models are built on CPU and
get the SAME weights:

* ``--weights OURS.pth`` (e.g. a model trained with train_net.py): our checkpoint, renamed to
  the official names by ``official_keys.ours_to_official`` and loaded strictly into the official
  model;
* otherwise the official model's random init, made informative by ``--calibrate`` (default on:
  data-dependent FrozenBN statistics and predictor scales, computed on the first image, because
  plain random weights give tied, sub-threshold scores), then converted to ours with
  ``official_keys.convert_official_state_dict`` (the converter's code path).

Configs: ours from ``--config-file`` + ``KEY VALUE`` overrides (our key names). The official
config is the official defaults (``add_panopticfcn_config``) + ``--official-config-file`` if
given, then every model/inference key of ours is translated to the official name
(``OFFICIAL_KEYS``). With an official yaml, the keys it sets differently from ours are listed,
and any of them not given as ``KEY VALUE`` is an error, so the pair really is the same model.
Our keys that the official code hard-codes (per-level candidate cap = TOP_NUM // 2, smoothing
pools [3,3,3,5,5], peak pool 3, score floor 0.05) must keep those values.

Both run in eval mode, one image per forward (the official inference only supports batch 1), on
the same dataset dicts ``{"image": uint8 CxHxW in INPUT.FORMAT, "height", "width"}``: images of
``DATASETS.TEST[0]`` through our test mapper (resized per our cfg, or to ``--size``), smooth
random images, or a uniform grey image (``blank``). With ``--our-batch`` our model runs all
images as ONE batch (the official one still one by one). Compared per image:

* intermediates via forward hooks: backbone P2-P7, encoded feature, position-head and
  kernel-head maps per level (fail above a relative difference of ``INTERMEDIATE_RTOL``), and the
  embedded thing kernels of the candidates (reported only: their order depends on score ties);
* outputs: ``panoptic_seg`` segments matched one to one (IoU > 0.5) with equal category_id,
  isthing and |score difference| <= ``Tolerance.score_atol``; pixel agreement of the panoptic
  maps after the matching >= ``Tolerance.min_pixel_agreement``; instance counts, classes and
  scores; ``sem_seg`` max abs difference <= ``Tolerance.sem_seg_atol``.
  Tolerances are float-rounding sized: 1e-4 on scores/probabilities; 99.99 % pixels, since a
  probability within rounding of the 0.4 mask threshold may flip a pixel.
Exit status 1 when any image differs beyond the tolerances (or the official code raises).

Run-time shims (only inside this process; none changes the maths):

1. ``detectron2.layers.deform_conv.modulated_deform_conv`` (no CPU kernel in detectron2) is
   replaced by ``torchvision.ops.deform_conv2d`` with the same arguments. Both use the DCNv2
   layout: offset channels (dy, dx) per kernel tap, mask (N, 9, H, W), same bilinear sampling
   with zeros outside the map.
2. Registry clash: both packages register ``PanopticFCN`` in ``META_ARCH_REGISTRY``; ours is
   taken out of the registry while ``panopticfcn`` is imported and put back afterwards; the
   official model is built by calling its class directly.
3. The official config is built on its own ``CfgNode`` (``add_panopticfcn_config`` replaces
   ``MODEL.SEM_SEG_HEAD``), ``MODEL.DEVICE`` cpu, ``MODEL.WEIGHTS`` unused.
"""

import argparse
import contextlib
import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import META_ARCH_REGISTRY, build_model

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from panoptic_ext.checkpoint.safe_load import load_checkpoint_file  # noqa: E402
from panoptic_ext.cli.convert_panoptic_fcn_official import panoptic_fcn_cpu_config  # noqa: E402
from panoptic_ext.data import PanopticDatasetMapper  # noqa: E402
from panoptic_ext.data.datasets import register_synthetic_datasets  # noqa: E402
from panoptic_ext.modeling.panoptic_fcn.official_keys import (  # noqa: E402
    convert_official_state_dict,
    ours_to_official,
)
from panoptic_ext.utils.yaml_config import merge_config_file  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs/COCO-PanopticSegmentation/panoptic_fcn_R_50_1x.yaml")
INTERMEDIATE_RTOL = 1e-3

_P = "MODEL.PANOPTIC_FCN."
# Our key -> official key, for every key that changes the official model or its inference.
OFFICIAL_KEYS: dict[str, str] = {
    _P + "IGNORE_VALUE": "MODEL.IGNORE_VALUE",
    _P + "HEAD_IN_FEATURES": "MODEL.FEATURE_ENCODER.IN_FEATURES",
    **{
        _P + f"SEMANTIC_FPN.{k}": f"MODEL.SEMANTIC_FPN.{k}"
        for k in ("IN_FEATURES", "CONVS_DIM", "COMMON_STRIDE", "NORM")
    },
    **{
        _P + f"{node}.{k}": f"MODEL.{node}.{k}"
        for node in ("FEATURE_ENCODER", "POSITION_HEAD", "KERNEL_HEAD")
        for k in ("NUM_CONVS", "CONVS_DIM", "NORM", "DEFORM", "COORD")
    },
    _P + "KERNEL_HEAD.INSTANCE_SCALES": "MODEL.KERNEL_HEAD.INSTANCE_SCALES",
    **{
        _P + f"POSITION_HEAD.THING.{k}": f"MODEL.POSITION_HEAD.THING.{k}"
        for k in (
            "CENTER_TYPE",
            "POS_NUM",
            "NUM_CLASSES",
            "BIAS_VALUE",
            "MIN_OVERLAP",
            "GAUSSIAN_SIGMA",
            "THRES",
            "TOP_NUM",
        )
    },
    **{
        _P + f"POSITION_HEAD.STUFF.{k}": f"MODEL.POSITION_HEAD.STUFF.{k}"
        for k in ("NUM_CLASSES", "WITH_THING", "THRES")
    },
    _P + "LOSS.POSITION_WEIGHT": "MODEL.LOSS_WEIGHT.POSITION",
    _P + "LOSS.SEGMENT_WEIGHT": "MODEL.LOSS_WEIGHT.SEGMENT",
    _P + "LOSS.FOCAL_ALPHA": "MODEL.LOSS_WEIGHT.FOCAL_LOSS_ALPHA",
    _P + "LOSS.FOCAL_GAMMA": "MODEL.LOSS_WEIGHT.FOCAL_LOSS_GAMMA",
    **{
        _P + f"INFERENCE.{k}": f"MODEL.INFERENCE.{k}"
        for k in ("INST_THRES", "SIMILAR_THRES", "CLASS_SPECIFIC")
    },
    **{
        _P + f"INFERENCE.COMBINE.{k}": f"MODEL.INFERENCE.COMBINE.{k}"
        for k in ("ENABLE", "OVERLAP_THRESH", "STUFF_AREA_LIMIT", "INST_THRESH")
    },
    # detectron2 keys both models read under the same name.
    **{
        k: k
        for k in (
            "MODEL.PIXEL_MEAN",
            "MODEL.PIXEL_STD",
            "MODEL.BACKBONE.FREEZE_AT",
            "MODEL.FPN.IN_FEATURES",
            "MODEL.FPN.OUT_CHANNELS",
            "MODEL.FPN.NORM",
            "MODEL.FPN.FUSE_TYPE",
            "INPUT.FORMAT",
        )
    },
    **{
        f"MODEL.RESNETS.{k}": f"MODEL.RESNETS.{k}"
        for k in (
            "DEPTH",
            "NORM",
            "OUT_FEATURES",
            "NUM_GROUPS",
            "WIDTH_PER_GROUP",
            "STRIDE_IN_1X1",
            "RES5_DILATION",
            "RES2_OUT_CHANNELS",
            "STEM_OUT_CHANNELS",
            "DEFORM_ON_PER_STAGE",
            "DEFORM_MODULATED",
            "DEFORM_NUM_GROUPS",
        )
    },
}
# Our inference keys whose values the official code hard-codes (for its default 5 levels).
HARD_CODED = {
    _P + "POSITION_HEAD.THING.PEAK_SMOOTH_SIZES": [3, 3, 3, 5, 5],
    _P + "POSITION_HEAD.THING.PEAK_POOL_SIZE": 3,
    _P + "INFERENCE.SCORE_FLOOR": 0.05,
}


# ---------------------------------------------------------------------------------------------
# Output comparison (no official code needed; unit-tested in tests/test_panoptic_fcn_compare.py)
# ---------------------------------------------------------------------------------------------
@dataclass
class Tolerance:
    """Float-rounding tolerances of the final outputs."""

    score_atol: float = 1e-4
    sem_seg_atol: float = 1e-4
    min_pixel_agreement: float = 0.9999


@dataclass
class Comparison:
    """Result of :func:`compare_outputs` for one image."""

    pixel_agreement: float
    num_segments: tuple[int, int]  # (ours, official)
    num_matched: int
    num_instances: tuple[int, int]
    max_score_diff: float  # over matched thing segments and instances
    sem_seg_max_diff: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def match_segments(
    pan_a: torch.Tensor, pan_b: torch.Tensor
) -> tuple[dict[int, int], torch.Tensor, torch.Tensor]:
    """One-to-one matching of the segment ids of two panoptic maps by IoU > 0.5.

    Args:
        pan_a, pan_b: (H, W) integer id maps, 0 = void.
    Returns:
        {id_a: id_b} for the non-void pairs with IoU > 0.5 (one to one by construction), and the
        sorted ids present in ``pan_a`` and in ``pan_b``.
    """
    a, b = pan_a.long().flatten(), pan_b.long().flatten()
    ids_a, inv_a = torch.unique(a, return_inverse=True)
    ids_b, inv_b = torch.unique(b, return_inverse=True)
    na, nb = len(ids_a), len(ids_b)
    inter = torch.bincount(inv_a * nb + inv_b, minlength=na * nb).view(na, nb).double()
    union = inter.sum(1, keepdim=True) + inter.sum(0, keepdim=True) - inter
    iou = inter / union.clamp(min=1)
    pairs = torch.nonzero(iou > 0.5).tolist()
    mapping = {int(ids_a[i]): int(ids_b[j]) for i, j in pairs if ids_a[i] != 0 and ids_b[j] != 0}
    return mapping, ids_a, ids_b


def _instances_fields(inst: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, classes) of an ``Instances``, sorted by (score rounded to 1e-6, class) so that
    the arbitrary order of exactly tied scores does not count; empty tensors for the official
    list-valued empty ``Instances``."""
    if len(inst.scores) == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    scores = _tensor(inst.scores).float().cpu()
    classes = _tensor(inst.pred_classes).long().cpu()
    order = torch.argsort(classes, stable=True)
    key = (scores[order].double() * 1e6).round()
    order = order[torch.argsort(key, descending=True, stable=True)]
    return scores[order], classes[order]


def compare_outputs(ours: dict, theirs: dict, tol: Tolerance | None = None) -> Comparison:
    """Compare two detectron2 Panoptic FCN output dicts of one image.

    Args:
        ours, theirs: {"panoptic_seg": ((H, W) ids, segments_info), "sem_seg": (S, H, W),
            "instances": Instances with scores / pred_classes (tensors, or the official empty
            lists)}; "instances" and "sem_seg" are optional.
    Returns:
        a :class:`Comparison`; ``problems`` lists every difference beyond ``tol``.
    """
    tol = tol or Tolerance()
    problems: list[str] = []
    pan_a, info_a = ours["panoptic_seg"]
    pan_b, info_b = theirs["panoptic_seg"]
    pan_a, pan_b = _tensor(pan_a).cpu(), _tensor(pan_b).cpu()
    if pan_a.shape != pan_b.shape:
        problems.append(f"panoptic_seg shapes differ: {tuple(pan_a.shape)} vs {tuple(pan_b.shape)}")
        return Comparison(0.0, (len(info_a), len(info_b)), 0, (0, 0), np.inf, np.inf, problems)
    mapping, ids_a, _ = match_segments(pan_a, pan_b)
    lut = torch.full((int(ids_a.max()) + 1,), -1, dtype=torch.long)
    lut[0] = 0
    for i, j in mapping.items():
        lut[i] = j
    agreement = float((lut[pan_a.long()] == pan_b.long()).double().mean())
    if agreement < tol.min_pixel_agreement:
        problems.append(f"panoptic pixel agreement {agreement:.6f} < {tol.min_pixel_agreement}")

    by_id_a = {s["id"]: s for s in info_a}
    by_id_b = {s["id"]: s for s in info_b}
    max_score = 0.0
    for s in info_a:
        if s["id"] not in mapping:
            problems.append(f"our segment {_describe(s)} has no official match")
    matched_b = set(mapping.values())
    for s in info_b:
        if s["id"] not in matched_b:
            problems.append(f"official segment {_describe(s)} has no match in ours")
    for i, j in mapping.items():
        sa, sb = by_id_a.get(i), by_id_b.get(j)
        if sa is None or sb is None:
            problems.append(f"segment id {i if sa is None else j} painted but not in segments_info")
            continue
        if (bool(sa["isthing"]), int(sa["category_id"])) != (
            bool(sb["isthing"]),
            int(sb["category_id"]),
        ):
            problems.append(
                f"matched segments differ: ours {_describe(sa)}, official {_describe(sb)}"
            )
        if sa["isthing"] and sb["isthing"]:
            max_score = max(max_score, abs(float(sa["score"]) - float(sb["score"])))

    n_inst = (0, 0)
    if "instances" in ours and "instances" in theirs:
        sc_a, cl_a = _instances_fields(ours["instances"])
        sc_b, cl_b = _instances_fields(theirs["instances"])
        n_inst = (len(sc_a), len(sc_b))
        if n_inst[0] != n_inst[1]:
            problems.append(f"instance counts differ: ours {n_inst[0]}, official {n_inst[1]}")
        else:
            if not torch.equal(cl_a, cl_b):
                problems.append("instance classes differ (in score order, ties by class)")
            if len(sc_a):
                max_score = max(max_score, float((sc_a - sc_b).abs().max()))
    if max_score > tol.score_atol:
        problems.append(f"max score difference {max_score:.3g} > {tol.score_atol}")

    sem_diff = 0.0
    if "sem_seg" in ours and "sem_seg" in theirs:
        sa, sb = _tensor(ours["sem_seg"]).cpu().float(), _tensor(theirs["sem_seg"]).cpu().float()
        sem_diff = float((sa - sb).abs().max()) if sa.shape == sb.shape else float("inf")
        if sem_diff > tol.sem_seg_atol:
            problems.append(f"sem_seg max abs difference {sem_diff:.3g} > {tol.sem_seg_atol}")
    return Comparison(
        agreement,
        (len(info_a), len(info_b)),
        len(mapping),
        n_inst,
        max_score,
        sem_diff,
        problems,
    )


def _describe(s: dict) -> str:
    kind = "thing" if s["isthing"] else "stuff"
    score = f" score {float(s['score']):.4f}" if "score" in s else ""
    return f"#{s['id']} ({kind} {int(s['category_id'])}{score})"


# ---------------------------------------------------------------------------------------------
# Official package, configs and weights
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
    ours = META_ARCH_REGISTRY._obj_map.pop("PanopticFCN")
    sys.path.insert(0, os.path.abspath(root))
    try:
        return importlib.import_module("panopticfcn")
    finally:
        sys.path.pop(0)
        META_ARCH_REGISTRY._obj_map["PanopticFCN"] = ours


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
    expected = dict(HARD_CODED, **{_P + "POSITION_HEAD.THING.LEVEL_TOP_NUM": p.TOP_NUM // 2})
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
            for k, theirs in OFFICIAL_KEYS.items()
            if _plain(_get(file_cfg, theirs)) != _plain(_get(ours, k))
        ]
        if diff:
            print("config values that differ (ours are used on both sides):")
            for d in diff:
                print("    " + d)
        bad = [
            theirs
            for k, theirs in OFFICIAL_KEYS.items()
            if k not in overridden and _plain(_get(file_cfg, theirs)) != _plain(_get(ours, k))
        ]
        if bad:
            raise SystemExit(f"{official_file} and our config differ in {bad} (not overridden)")
    for k, theirs in OFFICIAL_KEYS.items():
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


@torch.no_grad()
def calibrate_random_init(model: torch.nn.Module, batched_inputs: list[dict]) -> None:
    """Make a randomly initialised official model informative (weights changed in place).

    Data-dependent init on ``batched_inputs``: every FrozenBN gets the batch statistics of its
    input (so the random backbone keeps unit-scale features instead of ~1e3), the center/region
    predictors and the kernel head output get unit output spread (predictor biases kept), the
    encoder convs zero-mean pre-ReLU outputs (bias shift), and the two kernel embeddings are
    scaled so mask logits have a spread of ~3.
    """
    hooks = []

    def bn_stats(mod, args):
        x = args[0]
        mod.running_mean.copy_(x.mean((0, 2, 3)))
        mod.running_var.copy_(x.var((0, 2, 3)).clamp(min=1e-4) - mod.eps)

    def unit_spread(target):
        def hook(mod, args, out):
            if getattr(mod, "_calibrated", False):
                return None
            bias = 0 if mod.bias is None else mod.bias.view(1, -1, 1, 1)
            s = float((out - bias).std()) / target
            mod.weight.div_(s)
            mod._calibrated = True
            return (out - bias) / s + bias

        return hook

    def centre(mod, args, out):  # runs with mod.activation None: out is the pre-ReLU map
        mean = out.mean((0, 2, 3))
        mod.bias.sub_(mean)
        return torch.relu(out - mean.view(1, -1, 1, 1))

    for m in model.backbone.modules():
        if isinstance(m, FrozenBatchNorm2d):
            hooks.append(m.register_forward_pre_hook(bn_stats))
    # Zero-mean pre-ReLU encoder maps, so that thing masks do not cover the whole image.
    encoder_convs = [
        m
        for m in model.feature_encoder.modules()
        if getattr(m, "activation", None) is not None and getattr(m, "bias", None) is not None
    ]
    for m in encoder_convs:
        m.activation = None
        hooks.append(m.register_forward_hook(centre))
    pos, ker = model.position_head, model.kernel_head
    for conv in (pos.out_inst, pos.out_sem, ker.out_conv):
        hooks.append(conv.register_forward_hook(unit_spread(1.0)))
    for gen in (model.thing_generator, model.stuff_generator):
        hooks.append(gen.embed_extractor.register_forward_hook(unit_spread(1.0)))
    model(batched_inputs)
    for h in hooks:
        h.remove()
    for m in encoder_convs:
        m.activation = F.relu

    spreads = {}

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


# ---------------------------------------------------------------------------------------------
def parse_size(s: str | None) -> tuple[int, int] | None:
    if not s:
        return None
    h, w = s.lower().split("x")
    return int(h), int(w)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-root", required=True, help="checkout of PanopticFCN")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="our config")
    parser.add_argument("--official-config-file", default=None, help="official yaml to check")
    parser.add_argument("--weights", default=None, help="our checkpoint (else official init)")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--size", default=None, help="HxW model input size")
    parser.add_argument("--images", choices=("dataset", "random", "blank"), default="dataset")
    parser.add_argument("--no-calibrate", action="store_true", help="plain random init")
    parser.add_argument("--our-batch", action="store_true", help="ours: all images in one batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE (our key names)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    official = import_official(args.official_root)
    cfg = our_config(args.config_file, args.opts)
    overridden = frozenset(args.opts[0::2])
    ocfg = official_config(official, cfg, args.official_config_file, overridden)
    inputs = make_inputs(cfg, args.images, args.num_images, parse_size(args.size))

    with official_shims():
        theirs = official.PanopticFCN(ocfg).eval()
        ours = build_model(cfg).eval()
        if args.weights:
            ckpt = load_checkpoint_file(args.weights)
            state = ckpt.get("model", ckpt)
            ours.load_state_dict(state)  # strict: the checkpoint must fit our config
            theirs.load_state_dict(ours_to_official_state(ours.state_dict(), cfg))
            print(f"weights: {args.weights} -> ours; reverse mapping -> official (strict)")
        else:
            if not args.no_calibrate:
                calibrate_random_init(theirs, [dict(inputs[0])])
            converted, report = convert_official_state_dict(theirs.state_dict(), ours.state_dict())
            if report["unmatched"] or report["missing"] or report["shape_mismatch"]:
                print({k: v[:5] for k, v in report.items() if k != "matched"})
                return 1
            ours.load_state_dict(converted)
            calib = "calibrated " if not args.no_calibrate else ""
            print(
                f"weights: official {calib}random init -> converter -> ours "
                f"({len(report['matched'])} tensors)"
            )

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
        tol = Tolerance()
        failed = 0
        print(
            f"\ntolerances: score {tol.score_atol}, sem_seg {tol.sem_seg_atol}, pixel agreement "
            f">= {tol.min_pixel_agreement}, intermediates relative {INTERMEDIATE_RTOL}"
        )
        header = (
            f"{'image':<22}{'input':>10}{'segs o/t':>9}{'match':>6}{'inst o/t':>9}"
            f"{'pix agree':>11}{'max dscore':>11}{'sem max d':>10}{'interm rel':>11}  result"
        )
        print(header)
        print("-" * len(header))
        batch_out, batch_rec = None, None
        if args.our_batch:  # ours: all images in one forward; official: one at a time
            if len({tuple(it["image"].shape) for it in inputs}) != 1:
                raise SystemExit("--our-batch needs equal input sizes (padding changes features)")
            with torch.no_grad():
                batch_out = ours(
                    [{k: it[k] for k in ("image", "height", "width")} for it in inputs]
                )
            batch_rec = rec_a.pop()
            print(f"ours: one batch of {len(inputs)} images")
        for idx, item in enumerate(inputs):
            x = {k: item[k] for k in ("image", "height", "width")}
            with torch.no_grad():
                out_a = batch_out[idx] if batch_out else ours([dict(x)])[0]
                try:
                    out_b = theirs([dict(x)])[0]
                except Exception as e:  # the official code's crash paths (see docstring)
                    rec_a.pop()
                    rec_b.pop()
                    print(f"{item['name']:<22} official raised {type(e).__name__}: {e}")
                    failed += 1
                    continue
            ours_rec, ours_idx = (batch_rec, idx) if batch_rec else (rec_a.pop(), 0)
            inter = compare_intermediates(
                flatten_intermediates(ours_rec, False, ours_idx),
                flatten_intermediates(rec_b.pop(), True),
            )
            worst = max((r for r in inter if r[3]), key=lambda r: r[2], default=("-", 0, 0, 1))
            res = compare_outputs(out_a, out_b, tol)
            problems = list(res.problems)
            if worst[2] > INTERMEDIATE_RTOL:
                problems.append(f"intermediate {worst[0]} relative difference {worst[2]:.3g}")
            size = "x".join(map(str, x["image"].shape[-2:]))
            print(
                f"{item['name']:<22}{size:>10}{res.num_segments[0]:>4}/{res.num_segments[1]:<4}"
                f"{res.num_matched:>6}{res.num_instances[0]:>4}/{res.num_instances[1]:<4}"
                f"{res.pixel_agreement:>11.6f}{res.max_score_diff:>11.2e}"
                f"{res.sem_seg_max_diff:>10.2e}{worst[2]:>11.2e}  "
                + ("OK" if not problems else "DIFF")
            )
            for p in problems:
                print("    " + p)
            if os.environ.get("PFCN_COMPARE_VERBOSE"):
                for name, d, rel, _ in inter:
                    print(f"    {name:<20} max abs {d:.3e}  rel {rel:.3e}")
                for s in out_b["panoptic_seg"][1]:
                    print("    official", _describe(s))
            failed += bool(problems)
    print(f"\n{len(inputs) - failed}/{len(inputs)} images agree within the tolerances")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
