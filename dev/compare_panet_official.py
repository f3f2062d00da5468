#!/usr/bin/env python3
"""Our PANet vs the official implementation (ShuLiu1993/PANet): output parity on the same weights
and images, component by component.

    python -m dev.compare_panet_official --official-root /path/to/PANet \\
        --variant {mask_2x,det_1x,det_2fc_1x} [--weights OURS.pth] [--num-images N] \\
        [--size HxW] [--images dataset|random] [--num-boxes B] [--seed S] [--no-calibrate] \\
        [--accept-postprocess] [--threads T] [KEY VALUE ...]
    python -m dev.compare_panet_official --official-root /path/to/PANet --dump-official-keys OUT

The official code (a Detectron.pytorch code base of the PyTorch 0.4 era) is imported at run time
from ``<official-root>/lib``; nothing of it is part of this project, and the checkout is not
modified (the shims below replace what no longer imports, in this process only).

Models. The official ``Generalized_RCNN`` is built from ``configs/panet/<variant yaml>`` merged
the Detectron way (defaults, ``merge_cfg_from_file``, ``MODEL.NUM_CLASSES 81``, no ImageNet
weight file, ``assert_and_infer_cfg``); ours from the matching config of this project
(``OUR_CONFIGS``) + ``KEY VALUE`` overrides (our key names). The settings that must agree (pixel
means, pooler type, sampling ratio, head sizes, thresholds...) are checked (``config_pairs``);
a mismatch fails the run.

Weights. ``--weights OURS.pth`` is refused: it would need the ours -> official direction, which
is not implemented. Otherwise the official model's random init is made informative: every bias
and every norm affine (GroupNorm, AffineChannel2d) is drawn at random (seeded, never the zero
init), the frozen AffineChannel2d of the ResNet are set from the statistics of the first image
(per-channel mean/std, so the trunk keeps unit-scale activations), and the logits of the RPN and
of the box/mask predictors are scaled so that scores spread (many proposals and detections
above the thresholds); ``--no-calibrate`` skips this data-dependent step. The result goes
through the project's converter (``convert_panet_official_state_dict``; every list of its
report but "matched" must be empty) into ours.

Inputs: images of ``synthetic_panoptic_val`` (resized to ``--size``) or smooth random images,
uint8 BGR; both models see them at that size (Detectron's test scale is set to it, im_scale 1).
Sizes must be multiples of 32 (the FPN's coarsest stride: no padding on either side).

Compared per image, in eval mode (max abs, and max relative = max abs / max |official|):

* ``input``: the normalised image tensors;
* ``neck p2..p6``: official ``Conv_Body`` outputs (P6, N5..N2, reversed) vs our backbone;
* ``rpn logits/deltas p2..p6``: raw RPN head outputs (same anchor order per location: aspect
  ratios 0.5, 1, 2; deltas (dx, dy, dw, dh) per anchor);
* on the SAME fixed boxes (official proposals + boxes of every size) and the SAME (official)
  features, so these rows test the heads alone: ``box features``, ``class probs`` (softmax;
  background first in Detectron, last in detectron2), ``box deltas`` (Detectron's background
  deltas dropped), ``mask probs`` (Detectron's channel 0 = background dropped) and the box
  decoding of the same deltas (``box decode...``, see below);
* ``proposals: class probs / box deltas``: both ROI heads on the official proposals, each on
  its own features (the official test pass ``im_detect_bbox`` vs our box pooler/head/predictor);
* final detections: the official test pass (``core.test.im_detect_all``'s steps: its RPN,
  box head, ``box_results_with_nms_and_limit``, ``im_detect_mask`` / ``segm_results``) vs our
  ROI heads given the official proposals as ``Instances(proposal_boxes=...)`` (box inference,
  masks, ``detector_postprocess``): matched one to one by class, score and box overlap; box
  differences reported in pixels; mask IoU of the pasted masks reported;
* replay: the official post-processing (``bbox_transform``, ``clip_tiled_boxes``,
  ``box_results_with_nms_and_limit``) applied to OUR per-proposal outputs must give the official
  detections one to one: this separates model differences from post-processing conventions.

Box conventions. Detectron's boxes are pixel indices (x2 = last pixel, widths x2 - x1 + 1),
detectron2's continuous (x2 = one past it): the same box is (x1, y1, x2 + 1, y2 + 1) in ours.
Detectron's "+1" decoding, NMS IoU and COCO widths are detectron2's continuous arithmetic on
such boxes; what differs is where the RoIAligns sample. The official configs therefore set
``MODEL.PANET.POOL_PIXEL_INDEX_BOXES`` (ours pools (x1, y1, x2 - 1, y2 - 1), the numbers
Detectron pools) and ``DetectronAnchorGenerator`` with ``OFFSET 0.5`` (Detectron's rounded
anchor shapes and centres). With them, ours is given the official proposals as
(x1, y1, x2 + 1, y2 + 1) and its final detections are compared with the official ones
+ (0, 0, 1, 1); the ``anchors`` rows are checked. Without them (``KEY VALUE`` overrides), the
proposal numbers are given unchanged and the differences below appear; they are reported:

* ``box decode+clip`` (info): on the same numbers the decodings differ by
  ``0.5 * (exp(dw) - 1) + dx`` px per side (up to ~1 px), and Detectron clips to [0, W - 1]
  where detectron2 clips to [0, W]; ``box decode, +1 conv.`` is the convention-corrected
  decoding (ours on (x1, y1, x2 + 1, y2 + 1) vs official + (0, 0, 1, 1)): float rounding;
* NMS: Detectron suppresses at IoU >= 0.5, torchvision at IoU > 0.5 (ties only); detectron2
  drops empty boxes (``detector_postprocess``), Detectron keeps 1-px-wide ones. An unmatched
  final detection comes with a hint (its largest IoU with a higher-scored detection of its
  class, or the detection cut); the replay shows whether the model outputs are the same;
* masks (always, reported only): Detectron pastes a mask with ``cv2.resize`` into the integer
  box + 1 px padding, detectron2 with ``grid_sample`` into the float box: the pasted masks of
  noisy random-weight mask logits overlap at IoU ~0.9 (the 28x28 mask probabilities are
  compared exactly above);
* anchors (with detectron2's generator): centred at 0 (OFFSET 0.0) instead of stride / 2, and
  exact non-square shapes (45.3x22.6 instead of 48x24 at P2). This is why the final detections
  use the official proposals on both sides.

Tolerances: relative 1e-3 for what runs through the ResNet trunk (input, neck, RPN outputs,
per-proposal outputs on each model's own features), 1e-4 for the heads on identical features
and the convention-corrected box decoding; final and replayed scores within 1e-3 (trunk
rounding). Exit status 1 when a row exceeds its tolerance, a replayed detection is unmatched, a
final detection is unmatched (unless ``--accept-postprocess``: then unmatched final detections
are accepted when nothing else differs and the replay matches one to one), on a config mismatch
or when the converter's report is not clean.

Run-time shims (this process only; none changes the maths; ``install_official_shims``):

1. compiled FFI ops: ``RoIAlignFunction`` -> ``torchvision.ops.roi_align(aligned=False)``
   (Detectron's RoIAlign: no half-pixel shift, RoI size floored at 1), ``RoIPoolFunction`` ->
   ``torchvision.ops.roi_pool``; ``RoICropFunction`` (unused by PANet) raises;
2. ``utils.cython_nms`` / ``utils.cython_bbox``: numpy versions of the same "+1" NMS / IoU;
3. ``six`` (not installed), numpy aliases removed in numpy 1.24 (``np.float``...), ``nn.parallel``
   (needs ``torch._six``), ``datasets.json_dataset`` (scipy; training only): stand-ins;
4. the official yaml is read by the project's safe reader (``load_plain_yaml``), then merged as
   ``merge_cfg_from_file`` merges it;
5. ``Tensor.cuda`` (the official forward moves numpy blobs with ``.cuda(x.get_device())``, -1 on
   CPU) keeps CPU tensors in place while the official model runs, when CUDA is absent.
"""

import argparse
import contextlib
import copy
import importlib
import importlib.util
import math
import os
import pickle
import shlex
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dev.common import REPO, random_init_cfg
from panoptic_ext.evaluation.compare import Tolerance
from panoptic_ext.modeling.roi_heads.panet_official_keys import (
    convert_panet_official_state_dict,
)
from panoptic_ext.utils.yaml_config import load_plain_yaml

# Official configs (configs/panet/ of the checkout) and ours, per variant.
OFFICIAL_CONFIGS = {
    "mask_2x": "e2e_panet_R-50-FPN_2x_mask.yaml",
    "det_1x": "e2e_panet_R-50-FPN_1x_det.yaml",
    "det_2fc_1x": "e2e_panet_R-50-FPN_1x_det_2fc.yaml",
}
OUR_CONFIGS = {
    "mask_2x": "configs/COCO-InstanceSegmentation/panet_R_50_official_2x.yaml",
    "det_1x": "configs/COCO-Detection/panet_R_50_official_1x.yaml",
    "det_2fc_1x": "configs/COCO-Detection/panet_R_50_2fc_official_1x.yaml",
}
COCO_NUM_CLASSES = 81  # Detectron counts the background class
TRUNK_RTOL = 1e-3  # what runs through the ResNet trunk (different conv algorithms per side)
HEAD_RTOL = 1e-4  # heads on identical features
# Final detections run on each model's own features: scores carry the trunk's rounding.
FINAL_TOLERANCE = Tolerance(score_atol=1e-3)
# Calibration targets (standard deviation of the raw outputs).
LOGIT_SPREADS = {"rpn_cls": 2.0, "rpn_bbox": 0.2, "cls_score": 3.0, "bbox_pred": 1.0, "mask": 2.0}


# ---------------------------------------------------------------------------------------------
# Official code: run-time shims (nothing in the checkout is modified)
# ---------------------------------------------------------------------------------------------
class _RoIAlign:
    """Stand-in for the official compiled ``RoIAlignFunction`` (CUDA only, PyTorch 0.4 FFI).

    Same call convention: ``RoIAlignFunction(h, w, scale, ratio)(features, rois)``, rois
    ``(R, 5)`` = batch index, x1, y1, x2, y2 in input pixels. Its kernel samples at
    ``x1 * scale + (i + 0.5) * bin`` with the RoI size floored at 1: torchvision's
    ``roi_align(aligned=False)``.
    """

    def __init__(self, height: int, width: int, spatial_scale: float, sampling_ratio: int):
        self.size = (int(height), int(width))
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)

    def __call__(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import roi_align

        rois = rois.to(features.dtype)
        return roi_align(
            features, rois, self.size, self.spatial_scale, self.sampling_ratio, aligned=False
        )


class _RoIPool:
    """Stand-in for the official compiled ``RoIPoolFunction`` (torchvision's RoIPool)."""

    def __init__(self, height: int, width: int, spatial_scale: float):
        self.size = (int(height), int(width))
        self.spatial_scale = float(spatial_scale)

    def __call__(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import roi_pool

        return roi_pool(features, rois.to(features.dtype), self.size, self.spatial_scale)


class _Unavailable:
    """Stand-in for a compiled op that no PANet config uses (RoICrop)."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise NotImplementedError("RoICrop is not available here (no PANet config uses it)")


def detectron_nms(dets: np.ndarray, thresh: float) -> np.ndarray:
    """Greedy NMS with Detectron's "+1" box convention (the compiled ``utils.cython_nms.nms``).

    Args:
        dets: (N, 5) float32 rows x1, y1, x2, y2, score.
        thresh: a box is suppressed by a kept higher-scored one when IoU >= thresh.

    Returns:
        int64 indices of the kept rows, ascending (as the compiled op: ``np.where``); the
        visiting order is ``scores.argsort()[::-1]``, as there.
    """
    dets = np.asarray(dets, dtype=np.float32)
    if len(dets) == 0:
        return np.zeros((0,), dtype=np.int64)
    x1, y1, x2, y2, scores = (dets[:, i] for i in range(5))
    one, zero = np.float32(1), np.float32(0)
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    order = scores.argsort()[::-1]
    suppressed = np.zeros(len(dets), dtype=bool)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        rest = order[pos + 1 :]
        rest = rest[~suppressed[rest]]
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou >= np.float32(thresh)]] = True
    return np.where(~suppressed)[0]


def detectron_bbox_overlaps(boxes: np.ndarray, query_boxes: np.ndarray) -> np.ndarray:
    """IoU matrix with Detectron's "+1" convention (the compiled ``cython_bbox.bbox_overlaps``).

    Args:
        boxes: (N, 4) x1, y1, x2, y2; query_boxes: (K, 4).

    Returns:
        (N, K) float32 IoU (0 where the boxes do not overlap).
    """
    a = np.asarray(boxes, dtype=np.float32)[:, None, :]
    b = np.asarray(query_boxes, dtype=np.float32)[None, :, :]
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    return np.where(inter > 0, inter / np.maximum(union, 1e-12), 0).astype(np.float32)


def _module(name: str, **attrs: Any) -> types.ModuleType:
    """A stand-in module ``name`` holding ``attrs``."""
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def _training_only(*args: Any, **kwargs: Any) -> None:
    """Stand-in for official functions only its training path calls."""
    raise NotImplementedError("official training-only code paths are not shimmed")


def install_official_shims() -> None:
    """Shims 1-3 of the module docstring (idempotent); must run before the official imports."""
    for alias, typ in (("float", float), ("int", int), ("bool", bool), ("object", object)):
        if alias not in np.__dict__:
            setattr(np, alias, typ)
    if "six" not in sys.modules and importlib.util.find_spec("six") is None:
        moves = _module("six.moves", cPickle=pickle, shlex_quote=shlex.quote)
        sys.modules["six"] = _module("six", string_types=(str,), moves=moves)
        sys.modules["six.moves"] = moves
    fakes = {
        "model.roi_pooling.functions.roi_pool": {"RoIPoolFunction": _RoIPool},
        "model.roi_crop.functions.roi_crop": {"RoICropFunction": _Unavailable},
        "modeling.roi_xfrom.roi_align.functions.roi_align": {"RoIAlignFunction": _RoIAlign},
        "utils.cython_bbox": {"bbox_overlaps": detectron_bbox_overlaps},
        "utils.cython_nms": {"nms": detectron_nms, "soft_nms": _training_only},
        "nn.parallel": {"DataParallel": torch.nn.DataParallel},
        "datasets.json_dataset": {"add_proposals": _training_only},
    }
    for name, attrs in fakes.items():
        sys.modules.setdefault(name, _module(name, **attrs))


@contextlib.contextmanager
def cpu_cuda_calls() -> Iterator[None]:
    """Shim 5: ``Tensor.cuda`` keeps CPU tensors in place (only when CUDA is absent)."""
    if torch.cuda.is_available():
        yield
        return
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


def import_official(root: str) -> dict[str, types.ModuleType]:
    """Import the official modules from ``<root>/lib`` (shims installed first).

    Returns:
        {"config": core.config, "test": core.test, "model_builder": ..., "boxes": utils.boxes}.
    """
    lib = os.path.join(os.path.abspath(root), "lib")
    if not os.path.isfile(os.path.join(lib, "modeling", "model_builder.py")):
        raise SystemExit(f"--official-root {root}: no lib/modeling/model_builder.py there")
    install_official_shims()
    if lib not in sys.path:
        sys.path.insert(0, lib)
    names = ("core.config", "core.test", "modeling.model_builder", "utils.boxes")
    return {n.split(".")[-1]: importlib.import_module(n) for n in names}


def official_cfg(official: dict[str, types.ModuleType], root: str, variant: str) -> Any:
    """The global official cfg of ``variant``: defaults, ``merge_cfg_from_file`` of its yaml,
    81 COCO classes, no ImageNet weight file, ``assert_and_infer_cfg`` (left mutable).

    The global ``core.config.cfg`` is first reset to the defaults, so several variants can be
    built one after the other in one process.
    """
    config = official["config"]
    cfg = config.cfg
    cfg.immutable(False)
    if not hasattr(config, "_panet_parity_defaults"):
        config._panet_parity_defaults = copy.deepcopy(cfg)
    for k in [k for k in cfg if k not in config._panet_parity_defaults]:
        del cfg[k]
    for k, v in config._panet_parity_defaults.items():
        cfg[k] = copy.deepcopy(v)
    path = os.path.join(os.path.abspath(root), "configs", "panet", OFFICIAL_CONFIGS[variant])
    # merge_cfg_from_file's steps, with the project's safe reader instead of yaml.load.
    config.merge_cfg_from_cfg(config.AttrDict(load_plain_yaml(path)))
    cfg.MODEL.NUM_CLASSES = COCO_NUM_CLASSES
    cfg.MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS = False
    config.assert_and_infer_cfg(make_immutable=False)
    return cfg


def build_official(official: dict[str, types.ModuleType], root: str, variant: str) -> Any:
    """The official ``Generalized_RCNN`` of ``variant`` (its random init), in eval mode."""
    official_cfg(official, root, variant)
    return official["model_builder"].Generalized_RCNN().eval()


def dump_official_keys(root: str, path: str) -> None:
    """Write ``<official yaml> <key> <shape>`` for the three official configs to ``path``."""
    official = import_official(root)
    lines = [
        "# Official PANet state_dict keys (ShuLiu1993/PANet, lib/modeling/model_builder.py::"
        "Generalized_RCNN), one line per tensor: <config> <key> <shape>.",
        "# Built on CPU by dev/compare_panet_official.py --dump-official-keys: checkout's lib/ "
        "on sys.path, run-time shims for compiled ops/six/numpy aliases (install_official_shims),",
        "# cfg = defaults + merge_cfg_from_file(configs/panet/<config>) + MODEL.NUM_CLASSES 81, "
        "LOAD_IMAGENET_PRETRAINED_WEIGHTS False, assert_and_infer_cfg; model.state_dict().",
    ]
    for variant, name in OFFICIAL_CONFIGS.items():
        model = build_official(official, root, variant)
        lines += [f"{name} {k} {tuple(v.shape)}" for k, v in model.state_dict().items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines) - 3} keys to {path}")


class OfficialRunner:
    """What ``core.test`` expects of its model: a DataParallel-like wrapper (``.module``, list
    inputs) around a plain ``Generalized_RCNN``."""

    def __init__(self, model: torch.nn.Module):
        self.module = model

    def __call__(self, data: list, im_info: list, **kwargs: Any) -> dict:
        """Forward of one image; numpy outputs become tensors, as the official DataParallel's
        gather makes them (``rois``)."""
        out = self.module(data[0], im_info[0], **kwargs)
        return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Our config and the settings that must agree with the official cfg
# ---------------------------------------------------------------------------------------------
def our_config(variant: str, opts: list[str]) -> Any:
    """Our cfg of ``variant`` (+ ``KEY VALUE`` overrides) on CPU, without weights."""
    return random_init_cfg(os.path.join(REPO, OUR_CONFIGS[variant]), opts, freeze=False)


def _get(cfg: Any, key: str) -> Any:
    """``cfg.A.B.C`` for ``key`` "A.B.C"."""
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _plain(v: Any) -> Any:
    """Comparable plain value: tuples/arrays as lists, numbers as floats."""
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def config_pairs(ocfg: Any) -> list[tuple[str, Any]]:
    """(our key, value it must have) for the settings that decide the official function.

    Args:
        ocfg: the official cfg (``official_cfg``).
    """
    box_head = ocfg.FAST_RCNN.ROI_BOX_HEAD
    two_fc = box_head.endswith("roi_2mlp_head_gn_panet")
    if not two_fc and not box_head.endswith("roi_Xconv1fc_gn_head_panet"):
        raise SystemExit(f"official box head {box_head}: not a PANet head this tool knows")
    means = np.asarray(ocfg.PIXEL_MEANS).reshape(-1).tolist()
    pairs = [
        ("INPUT.FORMAT", "BGR"),
        ("MODEL.PIXEL_MEAN", means),
        ("MODEL.PIXEL_STD", [1.0, 1.0, 1.0]),
        ("MODEL.RESNETS.DEPTH", 50),
        ("MODEL.RESNETS.STRIDE_IN_1X1", bool(ocfg.RESNETS.STRIDE_1X1)),
        ("MODEL.RESNETS.NUM_GROUPS", ocfg.RESNETS.NUM_GROUPS),
        ("MODEL.RESNETS.WIDTH_PER_GROUP", ocfg.RESNETS.WIDTH_PER_GROUP),
        ("MODEL.RESNETS.RES5_DILATION", ocfg.RESNETS.RES5_DILATION),
        ("MODEL.BACKBONE.NAME", "build_resnet_pafpn_backbone"),
        ("MODEL.FPN.OUT_CHANNELS", ocfg.FPN.DIM),
        ("MODEL.FPN.NORM", "GN" if ocfg.FPN.USE_GN else ""),
        ("MODEL.FPN.FUSE_TYPE", "sum"),
        ("MODEL.PAFPN.BOTTOM_UP", True),
        ("MODEL.PAFPN.NORM", "GN" if ocfg.FPN.USE_GN else ""),
        ("MODEL.PAFPN.CONV_BIAS", True),
        ("MODEL.PAFPN.ACTIVATION", True),
        ("MODEL.PAFPN.FUSE_TYPE", "sum"),
        ("MODEL.PAFPN.TOP_LEVELS", "P6"),
        ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [list(ocfg.FPN.RPN_ASPECT_RATIOS)]),
        (
            "MODEL.ANCHOR_GENERATOR.SIZES",
            [
                [ocfg.FPN.RPN_ANCHOR_START_SIZE * 2 ** (lvl - ocfg.FPN.RPN_MIN_LEVEL)]
                for lvl in range(ocfg.FPN.RPN_MIN_LEVEL, ocfg.FPN.RPN_MAX_LEVEL + 1)
            ],
        ),
        ("MODEL.RPN.IN_FEATURES", ["p2", "p3", "p4", "p5", "p6"]),
        ("MODEL.RPN.NMS_THRESH", ocfg.TEST.RPN_NMS_THRESH),
        ("MODEL.RPN.PRE_NMS_TOPK_TEST", ocfg.TEST.RPN_PRE_NMS_TOP_N),  # per level in both
        (
            "MODEL.RPN.POST_NMS_TOPK_TEST",
            int(ocfg.TEST.RPN_POST_NMS_TOP_N * ocfg.FPN.RPN_COLLECT_SCALE + 0.5),
        ),
        ("INPUT.MIN_SIZE_TEST", ocfg.TEST.SCALE),
        ("INPUT.MAX_SIZE_TEST", ocfg.TEST.MAX_SIZE),
        ("MODEL.ROI_HEADS.IN_FEATURES", ["p2", "p3", "p4", "p5"]),
        ("MODEL.ROI_HEADS.NUM_CLASSES", ocfg.MODEL.NUM_CLASSES - 1),
        ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", ocfg.TEST.SCORE_THRESH),
        ("MODEL.ROI_HEADS.NMS_THRESH_TEST", ocfg.TEST.NMS),
        ("TEST.DETECTIONS_PER_IMAGE", ocfg.TEST.DETECTIONS_PER_IM),
        ("MODEL.PANET.AFP", True),
        ("MODEL.PANET.FUSE", "max"),
        ("MODEL.PANET.SHARED_FIRST_LAYER", False),
        ("MODEL.PANET.FUSE_BEFORE_FIRST_LAYER", False),
        ("MODEL.ROI_BOX_HEAD.NAME", "PANetBoxHead"),
        ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlign"),
        ("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", ocfg.FAST_RCNN.ROI_XFORM_RESOLUTION),
        ("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", ocfg.FAST_RCNN.ROI_XFORM_SAMPLING_RATIO),
        ("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", list(ocfg.MODEL.BBOX_REG_WEIGHTS)),
        ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", bool(ocfg.MODEL.CLS_AGNOSTIC_BBOX_REG)),
        ("MODEL.ROI_BOX_HEAD.FC_DIM", ocfg.FAST_RCNN.MLP_HEAD_DIM),
        ("MODEL.ROI_BOX_HEAD.NUM_FC", 2 if two_fc else 1),
        ("MODEL.ROI_BOX_HEAD.NUM_CONV", 0 if two_fc else ocfg.FAST_RCNN.NUM_STACKED_CONVS),
        ("MODEL.ROI_BOX_HEAD.NORM", "" if two_fc else "GN"),
        ("MODEL.PANET.BOX_FC_NORM", "GN" if two_fc else ""),
        ("MODEL.MASK_ON", bool(ocfg.MODEL.MASK_ON)),
    ]
    if not two_fc:
        pairs.append(("MODEL.ROI_BOX_HEAD.CONV_DIM", ocfg.FAST_RCNN.CONV_HEAD_DIM))
    if ocfg.MODEL.MASK_ON:
        m = ocfg.MRCNN
        if not m.ROI_MASK_HEAD.endswith("mask_rcnn_fcn_head_v1up4convs_gn_adp_ff"):
            raise SystemExit(f"official mask head {m.ROI_MASK_HEAD}: not the PANet head")
        pairs += [
            ("MODEL.ROI_MASK_HEAD.NAME", "PANetMaskHead"),
            ("MODEL.ROI_MASK_HEAD.NUM_CONV", 4),
            ("MODEL.ROI_MASK_HEAD.CONV_DIM", m.DIM_REDUCED),
            ("MODEL.ROI_MASK_HEAD.NORM", "GN"),
            ("MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", not m.CLS_SPECIFIC_MASK),
            ("MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIAlign"),
            ("MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", m.ROI_XFORM_RESOLUTION),
            ("MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO", m.ROI_XFORM_SAMPLING_RATIO),
            ("MODEL.PANET.FF", True),
            ("MODEL.PANET.FF_FROM_CONV", 3),
            ("MODEL.PANET.FF_RELU", True),
        ]
    return pairs


def config_mismatches(cfg: Any, ocfg: Any) -> list[str]:
    """``config_pairs`` entries that our cfg does not satisfy (a missing key counts)."""
    bad = []
    for key, expected in config_pairs(ocfg):
        try:
            value = _get(cfg, key)
        except (KeyError, AttributeError):
            bad.append(f"{key}: missing in our config (official needs {expected!r})")
            continue
        if _plain(value) != _plain(expected):
            bad.append(f"{key}: ours {_plain(value)!r}, official needs {_plain(expected)!r}")
    return bad


# ---------------------------------------------------------------------------------------------
# Weights: informative random official weights, converted to ours
# ---------------------------------------------------------------------------------------------
def _is_norm(module: torch.nn.Module) -> bool:
    """GroupNorm or the official AffineChannel2d (its frozen BN)."""
    return isinstance(module, torch.nn.GroupNorm) or type(module).__name__ == "AffineChannel2d"


@torch.no_grad()
def randomize_biases_and_norms(model: torch.nn.Module, seed: int) -> int:
    """Seeded random values for every bias and norm affine (the init has zeros / ones).

    Norm scales ~ U(0.5, 1.5), norm shifts and other biases ~ N(0, 0.1) (never exactly 0).

    Returns:
        the number of tensors drawn.
    """
    gen = torch.Generator().manual_seed(seed)
    count = 0
    for _, module in model.named_modules():
        norm = _is_norm(module)
        for pname, p in module.named_parameters(recurse=False):
            if norm and pname == "weight":
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif pname == "bias":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            else:
                continue
            count += 1
    return count


@torch.no_grad()
def calibrate_official(model: torch.nn.Module, run: Callable[[], Any]) -> None:
    """Data-dependent init of the official model, from ``run()`` (an official forward).

    1. every AffineChannel2d (frozen BN of the trunk) maps its input to per-channel mean
       ``bias`` and std ``weight`` (its random values), so the random trunk neither explodes
       nor vanishes;
    2. the RPN logits/deltas and the box (and mask) predictors are scaled (weight and bias
       alike) to the spreads of ``LOGIT_SPREADS``: random init gives near-tied scores.
    """
    handles = []

    def affine(mod: torch.nn.Module, args: tuple) -> None:
        x = args[0]
        mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3)).clamp(min=1e-6)
        scale = mod.weight / std
        mod.bias.copy_(mod.bias - mean * scale)
        mod.weight.copy_(scale)

    for m in model.modules():
        if type(m).__name__ == "AffineChannel2d":
            handles.append(m.register_forward_pre_hook(affine))
    targets = {
        "rpn_cls": model.RPN.FPN_RPN_cls_score,
        "rpn_bbox": model.RPN.FPN_RPN_bbox_pred,
        "cls_score": model.Box_Outs.cls_score,
        "bbox_pred": model.Box_Outs.bbox_pred,
    }
    if hasattr(model, "Mask_Outs"):
        targets["mask"] = model.Mask_Outs.classify
    outputs: dict[str, list[torch.Tensor]] = {k: [] for k in targets}
    for name, mod in targets.items():
        handles.append(mod.register_forward_hook(_collect(outputs[name])))
    run()  # pass 1: trunk statistics (the heads see a changing trunk; their spreads are redone)
    for h in handles:
        h.remove()
    for group in (("rpn_cls", "rpn_bbox"), ("cls_score", "bbox_pred", "mask")):
        for v in outputs.values():
            v.clear()
        hooks = [
            targets[n].register_forward_hook(_collect(outputs[n])) for n in group if n in targets
        ]
        run()
        for h in hooks:
            h.remove()
        for name in group:
            if name in targets and outputs[name]:
                flat = torch.cat([o.flatten() for o in outputs[name]])
                factor = LOGIT_SPREADS[name] / max(float(flat.std()), 1e-6)
                targets[name].weight.mul_(factor)
                targets[name].bias.mul_(factor)


def _collect(store: list) -> Callable:
    """Forward hook appending a copy of the module's output to ``store``."""

    def hook(mod: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        store.append(out.detach().clone())

    return hook


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def make_images(cfg: Any, source: str, num: int, size: tuple[int, int], seed: int) -> list:
    """``num`` (name, uint8 (H, W, 3) BGR array) at ``size``: synthetic_panoptic_val images
    (bilinear resize) or smooth random colours (8x8 noise, bicubic)."""
    import cv2

    h, w = size
    if h % 32 or w % 32:
        raise SystemExit(f"--size {h}x{w}: both sides must be multiples of 32")
    out = []
    if source == "dataset":
        from detectron2.data import DatasetCatalog
        from detectron2.data.detection_utils import read_image

        from panoptic_ext.data.datasets import register_synthetic_datasets

        syn = cfg.DATASETS.SYNTHETIC
        register_synthetic_datasets(syn.IMAGE_SIZE, syn.NUM_TRAIN, syn.NUM_VAL, syn.SEED)
        for d in DatasetCatalog.get("synthetic_panoptic_val")[:num]:
            img = read_image(d["file_name"], format="BGR")
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
            out.append((os.path.basename(d["file_name"]), np.ascontiguousarray(img)))
        return out
    gen = torch.Generator().manual_seed(seed)
    for i in range(num):
        low = torch.rand((1, 3, 8, 8), generator=gen) * 255
        img = F.interpolate(low, (h, w), mode="bicubic", align_corners=False)[0]
        img = img.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        out.append((f"random{i}", np.ascontiguousarray(img)))
    return out


def extra_boxes(num: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """``num`` boxes (x1, y1, x2, y2) inside the image, sides from 8 px to the image size
    (log-uniform), so that every FPN level's pooling is exercised."""
    h, w = size
    rng = np.random.default_rng(seed)
    side_w = np.exp(rng.uniform(np.log(8), np.log(w), num))
    side_h = np.exp(rng.uniform(np.log(8), np.log(h), num))
    x1 = rng.uniform(0, w - side_w)
    y1 = rng.uniform(0, h - side_h)
    return np.stack([x1, y1, x1 + side_w - 1, y1 + side_h - 1], 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Comparison rows
# ---------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One compared quantity: max abs / max relative difference against its tolerance."""

    name: str
    max_abs: float
    max_rel: float
    rtol: float | None  # None: reported only
    note: str = ""

    @property
    def failed(self) -> bool:
        """Beyond its tolerance (never for a reported-only row)."""
        return self.rtol is not None and not self.max_rel <= self.rtol


def diff_row(name: str, ours: torch.Tensor, theirs: torch.Tensor, rtol: float | None) -> Row:
    """Max abs and max relative (max abs / max |theirs|) difference of two tensors."""
    a, b = torch.as_tensor(ours).double(), torch.as_tensor(theirs).double()
    if a.shape != b.shape:
        return Row(name, math.inf, math.inf, rtol, f"shapes {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        return Row(name, 0.0, 0.0, rtol, "empty")
    d = float((a - b).abs().max())
    return Row(name, d, d / max(float(b.abs().max()), 1e-12), rtol)


@dataclass
class Detection:
    """One final detection: class (0-based, detectron2), score, box (x1, y1, x2, y2)."""

    cls: int
    score: float
    box: np.ndarray
    mask: np.ndarray | None = None
    proposal: int = -1  # index of its proposal, when known


@dataclass
class DetectionMatch:
    """One-to-one matching of two detection lists."""

    pairs: list[tuple[Detection, Detection]] = field(default_factory=list)  # (ours, theirs)
    unmatched_ours: list[Detection] = field(default_factory=list)
    unmatched_theirs: list[Detection] = field(default_factory=list)

    def max_score_diff(self) -> float:
        """Largest score difference of the matched pairs."""
        return max((abs(a.score - b.score) for a, b in self.pairs), default=0.0)

    def max_box_diff(self) -> float:
        """Largest box coordinate difference (pixels) of the matched pairs."""
        return max((float(np.abs(a.box - b.box).max()) for a, b in self.pairs), default=0.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (x1, y1, x2, y2) boxes, continuous convention (0 for empty boxes)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_detections(ours: list[Detection], theirs: list[Detection], atol: float) -> DetectionMatch:
    """One-to-one matching by class and score: each official detection (highest score first)
    takes, among the unmatched ones of ours with its class and a score within ``atol``, the one
    whose box overlaps it most (then the closest score)."""
    res = DetectionMatch()
    used: set[int] = set()
    for b in sorted(theirs, key=lambda d: -d.score):
        best, key = None, None
        for i, a in enumerate(ours):
            if i in used or a.cls != b.cls or abs(a.score - b.score) > atol:
                continue
            k = (-box_iou(a.box, b.box), abs(a.score - b.score))
            if key is None or k < key:
                best, key = i, k
        if best is None:
            res.unmatched_theirs.append(b)
        else:
            used.add(best)
            res.pairs.append((ours[best], b))
    res.unmatched_ours = [a for i, a in enumerate(ours) if i not in used]
    return res


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary masks (1.0 when both are empty)."""
    inter = np.logical_and(a, b).sum()
    union = np.logical_or(a, b).sum()
    return float(inter / union) if union else 1.0


# ---------------------------------------------------------------------------------------------
# Running both models
# ---------------------------------------------------------------------------------------------
@dataclass
class Models:
    """Both models (eval mode, same weights) and the official modules."""

    ours: torch.nn.Module
    theirs: torch.nn.Module
    official: dict[str, types.ModuleType]
    ocfg: Any
    weights: str


@dataclass
class OfficialRun:
    """What one official test pass produced and recorded (Detectron's box convention)."""

    data: torch.Tensor  # (1, 3, H, W) normalised input
    blob_conv: list[torch.Tensor]  # P6, N5, N4, N3, N2
    rpn_logits: list[torch.Tensor]  # per level p2..p6, (1, A, H_l, W_l)
    rpn_deltas: list[torch.Tensor]  # (1, 4A, H_l, W_l)
    rois: np.ndarray  # (R, 5) proposals: batch index, x1, y1, x2, y2
    probs: np.ndarray  # (R, 81) class probabilities, background first
    deltas: np.ndarray  # (R, 324) box deltas, background first
    boxes: np.ndarray  # (R, 324) decoded, clipped boxes
    detections: list[Detection]


def detections_from_cls_boxes(cls_boxes: list, cls_segms: list | None) -> list[Detection]:
    """Official per-class results (index 0 = background, unused) as detections (0-based
    classes, as detectron2's), with decoded RLE masks when given."""
    dets = []
    for j in range(1, len(cls_boxes)):
        for k, row in enumerate(np.asarray(cls_boxes[j], dtype=np.float64).reshape(-1, 5)):
            mask = None
            if cls_segms is not None:
                import pycocotools.mask as mask_util

                mask = mask_util.decode(cls_segms[j][k]).astype(bool)
            dets.append(Detection(j - 1, float(row[4]), row[:4], mask))
    return dets


def official_detect(models: Models, image: np.ndarray) -> OfficialRun:
    """The official test pipeline on one image at scale 1: ``core.test.im_detect_all``'s steps
    without test-time augmentation (im_detect_bbox, box_results_with_nms_and_limit,
    im_detect_mask, segm_results), with its intermediates recorded by hooks."""
    theirs, test, cfg = models.theirs, models.official["test"], models.ocfg
    if cfg.TEST.BBOX_AUG.ENABLED or cfg.TEST.MASK_AUG.ENABLED:
        raise SystemExit("official test-time augmentation is not supported by this comparison")
    rec: dict[str, list] = {k: [] for k in ("body", "data", "logits", "deltas", "rpn", "outs")}
    handles = [
        theirs.Conv_Body.register_forward_hook(lambda m, a, o: rec["body"].append(o)),
        theirs.Conv_Body.register_forward_pre_hook(lambda m, a: rec["data"].append(a[0])),
        theirs.RPN.FPN_RPN_cls_score.register_forward_hook(_collect(rec["logits"])),
        theirs.RPN.FPN_RPN_bbox_pred.register_forward_hook(_collect(rec["deltas"])),
        theirs.RPN.register_forward_hook(lambda m, a, o: rec["rpn"].append(o)),
        theirs.Box_Outs.register_forward_hook(lambda m, a, o: rec["outs"].append(o)),
    ]
    h, w = image.shape[:2]
    cfg.TEST.SCALE, cfg.TEST.MAX_SIZE = min(h, w), max(h, w)  # im_scale 1
    runner = OfficialRunner(theirs)
    try:
        with torch.no_grad(), cpu_cuda_calls():
            scores, boxes, im_scale, blob_conv = test.im_detect_bbox(
                runner, image.copy(), cfg.TEST.SCALE, cfg.TEST.MAX_SIZE
            )
            _, final_boxes, cls_boxes = test.box_results_with_nms_and_limit(scores, boxes)
            cls_segms = None
            if cfg.MODEL.MASK_ON and final_boxes.shape[0] > 0:
                masks = test.im_detect_mask(runner, im_scale, final_boxes, blob_conv)
                cls_segms = test.segm_results(cls_boxes, masks, final_boxes, h, w)
    finally:
        for handle in handles:
            handle.remove()
    return OfficialRun(
        data=rec["data"][0],
        blob_conv=[t.detach().clone() for t in rec["body"][0]],
        rpn_logits=rec["logits"],
        rpn_deltas=rec["deltas"],
        rois=np.asarray(rec["rpn"][0]["rois"], dtype=np.float32),
        probs=np.asarray(scores, dtype=np.float32),
        deltas=rec["outs"][0][1].detach().numpy(),
        boxes=np.asarray(boxes),
        detections=detections_from_cls_boxes(cls_boxes, cls_segms),
    )


def official_postprocess(
    models: Models, probs: torch.Tensor, deltas: torch.Tensor, rois: np.ndarray, size: tuple
) -> list[Detection]:
    """Detectron's box decoding, clipping, per-class NMS and detection limit (the official
    functions) applied to OUR per-proposal outputs (``probs`` (R, K + 1) background last,
    ``deltas`` (R, 4K)); masks not computed."""
    test, box_utils = models.official["test"], models.official["boxes"]
    scores = torch.cat([probs[:, -1:], probs[:, :-1]], 1).numpy()
    full = torch.cat([torch.zeros(len(deltas), 4), deltas], 1).numpy()
    boxes = box_utils.bbox_transform(rois[:, 1:5], full, models.ocfg.MODEL.BBOX_REG_WEIGHTS)
    boxes = box_utils.clip_tiled_boxes(boxes, size)
    _, _, cls_boxes = test.box_results_with_nms_and_limit(scores, boxes)
    return detections_from_cls_boxes(cls_boxes, None)


def our_features(models: Models, image: np.ndarray) -> tuple[Any, dict[str, torch.Tensor]]:
    """Our normalised ImageList and backbone features of one BGR image (no resize)."""
    chw = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    images = models.ours.preprocess_image([{"image": chw}])
    return images, models.ours.backbone(images.tensor)


def _official_feature_dict(blob_conv: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``Conv_Body`` outputs (P6, N5..N2) under our names p6..p2."""
    return {f"p{6 - i}": t for i, t in enumerate(blob_conv)}


def _boxes(b: np.ndarray) -> Any:
    """detectron2 ``Boxes`` (float32) of an (N, 4) array."""
    from detectron2.structures import Boxes

    return Boxes(torch.as_tensor(np.asarray(b), dtype=torch.float32))


def pixel_index_pooling(models: Models) -> bool:
    """Whether our ROI heads pool Detectron's pixel-index coordinates
    (``MODEL.PANET.POOL_PIXEL_INDEX_BOXES``, set by the official configs)."""
    return bool(getattr(models.ours.roi_heads.box_pooler, "pixel_index_boxes", False))


def as_ours(models: Models, boxes: np.ndarray) -> np.ndarray:
    """Official (pixel-index) boxes as the boxes ours must be given to pool the same numbers:
    (x1, y1, x2 + 1, y2 + 1) with pixel-index pooling, unchanged otherwise."""
    if not pixel_index_pooling(models):
        return boxes
    return boxes + np.array([0, 0, 1, 1], dtype=boxes.dtype)


def official_in_ours(models: Models, dets: list[Detection]) -> list[Detection]:
    """Official final detections in the convention of ours (see :func:`as_ours`)."""
    if not pixel_index_pooling(models):
        return dets
    shift = np.array([0.0, 0.0, 1.0, 1.0])
    return [Detection(d.cls, d.score, d.box + shift, d.mask, d.proposal) for d in dets]


def _clip_per_class(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(M, 4K) boxes clipped to [0, w] x [0, h] (detectron2's ``Boxes.clip``)."""
    b = boxes.reshape(len(boxes), -1, 4).clone()
    b[..., 0::2] = b[..., 0::2].clamp(0, w)
    b[..., 1::2] = b[..., 1::2].clamp(0, h)
    return b.reshape(len(boxes), -1)


@torch.no_grad()
def compare_heads(models: Models, run: OfficialRun, boxes: np.ndarray, size: tuple) -> list[Row]:
    """Box head, predictor, box decoding and mask head of both models on the SAME boxes and the
    SAME (official) features."""
    theirs, roi = models.theirs, models.ours.roi_heads
    box_utils = models.official["boxes"]
    blobs = run.blob_conv[-theirs.num_roi_levels :]  # N5..N2
    feats = _official_feature_dict(run.blob_conv)
    rois = np.hstack([np.zeros((len(boxes), 1), np.float32), boxes]).astype(np.float32)
    with cpu_cuda_calls():
        feat_b = theirs.Box_Head(list(blobs), {"rois": rois})
        prob_b, delta_b = theirs.Box_Outs(feat_b)
    ours_boxes = [_boxes(as_ours(models, boxes))]
    feat_a = roi.box_head(roi.box_pooler([feats[f] for f in roi.box_in_features], ours_boxes))
    logits_a, delta_a = roi.box_predictor(feat_a)
    prob_b = torch.cat([prob_b[:, 1:], prob_b[:, :1]], 1)  # background first -> last
    rows = [
        diff_row("box features", feat_a, feat_b, HEAD_RTOL),
        diff_row("class probs", F.softmax(logits_a, dim=-1), prob_b, HEAD_RTOL),
        diff_row("box deltas", delta_a, delta_b[:, 4:], HEAD_RTOL),
    ]
    # Decoding the same deltas: Detectron's bbox_transform vs detectron2's Box2BoxTransform.
    h, w = size
    weights = models.ocfg.MODEL.BBOX_REG_WEIGHTS
    dec_b = box_utils.bbox_transform(boxes, delta_b[:, 4:].numpy(), weights)
    transform = roi.box_predictor.box2box_transform
    dec_a = transform.apply_deltas(delta_a, torch.from_numpy(boxes))
    clipped_b = box_utils.clip_tiled_boxes(dec_b.copy(), (h, w))  # clips in place
    row = diff_row("box decode+clip (px)", _clip_per_class(dec_a, h, w), clipped_b, None)
    row.note = "same proposal numbers; +1 convention and clip bounds W-1 vs W"
    rows.append(row)
    cont = torch.from_numpy(boxes + np.array([0, 0, 1, 1], np.float32))
    plus_one = torch.from_numpy(dec_b) + torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(
        dec_b.shape[1] // 4
    )
    rows.append(
        diff_row(
            "box decode, +1 conv. (px)", transform.apply_deltas(delta_a, cont), plus_one, HEAD_RTOL
        )
    )
    rows[-1].note = "ours on (x1, y1, x2+1, y2+1) vs official + (0, 0, 1, 1), unclipped"
    if hasattr(theirs, "Mask_Head"):
        with cpu_cuda_calls():
            mask_b = theirs.mask_net(list(blobs), {"mask_rois": rois})
        mask_feats = [feats[f] for f in roi.mask_in_features]
        mask_a = roi.mask_head.layers(roi.mask_pooler(mask_feats, ours_boxes)).sigmoid()
        rows.append(diff_row("mask probs", mask_a, mask_b[:, 1:], HEAD_RTOL))
    return rows


@dataclass
class OurRun:
    """Our ROI heads on the official proposals."""

    probs: torch.Tensor  # (R, K + 1), background last
    deltas: torch.Tensor  # (R, 4K)
    boxes: torch.Tensor  # (R, 4K) decoded, clipped
    detections: list[Detection]


@torch.no_grad()
def our_detect(models: Models, images: Any, feats: dict, rois: np.ndarray, size: tuple) -> OurRun:
    """Our ROI heads in eval mode (``_forward_box``'s steps, masks, ``detector_postprocess``)
    on the given proposals ``rois`` (R, 5)."""
    from detectron2.modeling.postprocessing import detector_postprocess
    from detectron2.structures import Instances

    roi = models.ours.roi_heads
    h, w = size
    prop = Instances((h, w), proposal_boxes=_boxes(as_ours(models, rois[:, 1:5])))
    x = roi.box_pooler([feats[f] for f in roi.box_in_features], [prop.proposal_boxes])
    predictions = roi.box_predictor(roi.box_head(x))
    instances, kept = roi.box_predictor.inference(predictions, [prop])
    instances[0].proposal_index = kept[0]
    instances = roi.forward_with_given_boxes(feats, instances)
    inst = detector_postprocess(instances[0], h, w)
    masks = inst.pred_masks.numpy() if inst.has("pred_masks") else None
    dets = [
        Detection(
            int(inst.pred_classes[i]),
            float(inst.scores[i]),
            inst.pred_boxes.tensor[i].double().numpy(),
            None if masks is None else masks[i].astype(bool),
            int(inst.proposal_index[i]),
        )
        for i in range(len(inst))
    ]
    boxes = _clip_per_class(roi.box_predictor.predict_boxes(predictions, [prop])[0], h, w)
    return OurRun(F.softmax(predictions[0], dim=-1), predictions[1], boxes, dets)


def official_proposal_index(d: Detection, run: OfficialRun) -> int:
    """Index of the proposal an official final detection was decoded from (-1: not found)."""
    cols = slice(4 * (d.cls + 1), 4 * (d.cls + 2))
    same = np.abs(run.boxes[:, cols] - d.box).max(1) < 1e-3
    same &= np.abs(run.probs[:, d.cls + 1] - d.score) < 1e-6
    found = np.nonzero(same)[0]
    return int(found[0]) if len(found) else -1


def explain_unmatched(
    d: Detection, ours_side: bool, run: OfficialRun, ours: OurRun, match: DetectionMatch, cfg: Any
) -> str:
    """Why an unmatched final detection ``d`` (of ours if ``ours_side``, else official) has no
    counterpart: the other side's output for the same proposal and class, its largest overlap
    with a higher-scored final detection of that class on the other side (under the other
    side's NMS rule), empty boxes and the other side's detection cut.

    Args:
        cfg: the official cfg (NMS threshold, detection limit).
    """
    i, c = d.proposal, d.cls
    if not ours_side:
        i = official_proposal_index(d, run)
    if i < 0:
        return "its proposal was not found"
    if ours_side:  # the official decoding of the same proposal and class
        box = run.boxes[i, 4 * (c + 1) : 4 * (c + 2)].astype(np.float64)
        score = float(run.probs[i, c + 1])
        finals = [b for _, b in match.pairs] + match.unmatched_theirs
        rule, empty = f">= {cfg.TEST.NMS} (Detectron, +1)", False

        def iou(a: np.ndarray, b: np.ndarray) -> float:
            pair = np.stack([a, b]).astype(np.float32)
            return float(detectron_bbox_overlaps(pair[:1], pair[1:])[0, 0])
    else:
        box = ours.boxes[i, 4 * c : 4 * (c + 1)].double().numpy()
        score = float(ours.probs[i, c])
        finals = [a for a, _ in match.pairs] + match.unmatched_ours
        rule, empty = f"> {cfg.TEST.NMS} (detectron2)", bool(np.any(box[2:] - box[:2] <= 0))
        iou = box_iou
    higher = [iou(box, o.box) for o in finals if o.cls == c and o.score > score]
    side = "official" if ours_side else "ours"
    text = (
        f"{side} on proposal {i}: score {score:.5f}, box ({', '.join(f'{v:.2f}' for v in box)}); "
        f"max IoU with a higher-scored {side} detection of its class {max(higher, default=0):.4f}"
        f" (suppressed when {rule})"
    )
    if empty:
        text += "; empty box in detectron2's convention (dropped by detector_postprocess)"
    limit = int(cfg.TEST.DETECTIONS_PER_IM)
    if len(finals) >= limit and score < min(o.score for o in finals):
        text += f"; below the {side} {limit}-detection cut"
    return text


def anchor_rows(models: Models, feats: dict) -> list[Row]:
    """Per level: our anchors at the first location vs the official ones in continuous
    coordinates (x2 + 1, y2 + 1). Checked when ours is ``DetectronAnchorGenerator`` (the official
    configs), reported only for detectron2's anchors (module docstring)."""
    rpn = models.ours.proposal_generator
    ours = rpn.anchor_generator([feats[f] for f in rpn.in_features])
    rtol = HEAD_RTOL if type(rpn.anchor_generator).__name__ == "DetectronAnchorGenerator" else None
    rows = []
    gens = models.theirs.RPN.GenerateProposals_modules
    for lvl, (gen, f) in enumerate(zip(gens, rpn.in_features)):
        cell = torch.as_tensor(gen._anchors, dtype=torch.float64) + torch.tensor([0, 0, 1.0, 1.0])
        a = ours[lvl].tensor[: len(cell)].double()
        row = diff_row(f"anchors {f} (px)", a, cell, rtol)
        ctr = float(((a[:, :2] + a[:, 2:]) / 2 - (cell[:, :2] + cell[:, 2:]) / 2).abs().max())
        side = float(((a[:, 2:] - a[:, :2]) - (cell[:, 2:] - cell[:, :2])).abs().max())
        row.note = f"centres differ by {ctr:.2f} px, sides by up to {side:.2f} px"
        rows.append(row)
    return rows


@dataclass
class ImageResult:
    """Everything compared on one image."""

    name: str
    rows: list[Row]
    final: DetectionMatch  # ours vs official
    replay: DetectionMatch  # official post-processing of our raw outputs vs official
    num_proposals: int
    mask_ious: list[float]
    hints: list[str] = field(default_factory=list)  # one per unmatched final detection

    def problems(self, accept_postprocess: bool) -> list[str]:
        """Why this image fails (empty: it agrees)."""
        out = [f"{r.name}: max rel {r.max_rel:.3g} > {r.rtol:g}" for r in self.rows if r.failed]
        replay = self.replay
        if replay.unmatched_ours or replay.unmatched_theirs:
            out.append(
                f"official post-processing of our outputs: {len(replay.unmatched_ours)} + "
                f"{len(replay.unmatched_theirs)} detections unmatched (a model difference)"
            )
        n = len(self.final.unmatched_ours) + len(self.final.unmatched_theirs)
        if n and not (accept_postprocess and not out):
            out.append(f"final detections: {n} unmatched (post-processing conventions)")
        return out


@torch.no_grad()
def compare_image(
    models: Models, name: str, image: np.ndarray, args: argparse.Namespace
) -> ImageResult:
    """Every comparison of the module docstring on one image."""
    size = image.shape[:2]
    run = official_detect(models, image)
    images, feats = our_features(models, image)
    rows = [diff_row("input", images.tensor, run.data, TRUNK_RTOL)]
    theirs = _official_feature_dict(run.blob_conv)
    rows += [diff_row(f"neck {k}", feats[k], theirs[k], TRUNK_RTOL) for k in sorted(theirs)]
    rpn = models.ours.proposal_generator
    logits, deltas = rpn.rpn_head([feats[f] for f in rpn.in_features])
    for lvl, f in enumerate(rpn.in_features):
        rows.append(diff_row(f"rpn logits {f}", logits[lvl], run.rpn_logits[lvl], TRUNK_RTOL))
        rows.append(diff_row(f"rpn deltas {f}", deltas[lvl], run.rpn_deltas[lvl], TRUNK_RTOL))
    rows += anchor_rows(models, feats)
    n_prop = min(len(run.rois), args.num_boxes // 2)
    fixed = np.concatenate(
        [run.rois[:n_prop, 1:5], extra_boxes(args.num_boxes - n_prop, size, args.seed)]
    )
    rows += compare_heads(models, run, fixed, size)
    ours = our_detect(models, images, feats, run.rois, size)
    probs_b = torch.from_numpy(np.concatenate([run.probs[:, 1:], run.probs[:, :1]], 1))
    rows.append(diff_row("proposals: class probs", ours.probs, probs_b, TRUNK_RTOL))
    rows.append(
        diff_row(
            "proposals: box deltas", ours.deltas, torch.from_numpy(run.deltas[:, 4:]), TRUNK_RTOL
        )
    )
    tol = FINAL_TOLERANCE.score_atol
    final = match_detections(ours.detections, official_in_ours(models, run.detections), tol)
    replayed = official_postprocess(models, ours.probs, ours.deltas, run.rois, size)
    replay = match_detections(replayed, run.detections, tol)
    ious = [
        mask_iou(a.mask, b.mask)
        for a, b in final.pairs
        if a.mask is not None and b.mask is not None
    ]
    hints = [
        f"official unmatched: {_describe(d)}\n        "
        + explain_unmatched(d, False, run, ours, final, models.ocfg)
        for d in final.unmatched_theirs
    ] + [
        f"ours unmatched:     {_describe(d)}\n        "
        + explain_unmatched(d, True, run, ours, final, models.ocfg)
        for d in final.unmatched_ours
    ]
    return ImageResult(name, rows, final, replay, len(run.rois), ious, hints)


# ---------------------------------------------------------------------------------------------
# Setup and report
# ---------------------------------------------------------------------------------------------
def build_models(args: argparse.Namespace, first_image: np.ndarray) -> tuple[Models, list[str]]:
    """Both models with the same weights (module docstring); also our config mismatches."""
    from detectron2.modeling import build_model

    if args.weights:
        raise SystemExit(
            "--weights: comparing on our checkpoint needs the ours -> official mapping, which is "
            "not implemented; run without --weights (official random init -> converter -> ours)"
        )
    official = import_official(args.official_root)
    torch.manual_seed(args.seed)
    theirs = build_official(official, args.official_root, args.variant)
    ocfg = official["config"].cfg
    cfg = our_config(args.variant, args.opts)
    mismatches = config_mismatches(cfg, ocfg)
    ours = build_model(cfg).eval()
    drawn = randomize_biases_and_norms(theirs, args.seed)
    models = Models(ours, theirs, official, ocfg, "")
    how = f"official random init (seed {args.seed}, {drawn} biases/norm affines drawn)"
    if not args.no_calibrate:
        calibrate_official(theirs, lambda: official_detect(models, first_image))
        how += ", calibrated on the first image"
    converted, report = convert_panet_official_state_dict(theirs.state_dict(), ours.state_dict())
    problems = {k: v for k, v in report.items() if k != "matched" and v}
    if problems:
        raise SystemExit(f"converter report: { {k: v[:5] for k, v in problems.items()} }")
    ours.load_state_dict(converted)
    n = len(report["matched"])
    models.weights = f"{how} -> convert_panet_official_state_dict ({n} tensors) -> ours"
    return models, mismatches


def _describe(d: Detection) -> str:
    """'class c score s box (x1, y1, x2, y2)'."""
    box = ", ".join(f"{v:.2f}" for v in d.box)
    return f"class {d.cls} score {d.score:.5f} box ({box})"


def print_image(res: ImageResult, accept_postprocess: bool) -> bool:
    """Print one image's table; True when it agrees."""
    f, r = res.final, res.replay
    print(
        f"\n== {res.name}: {res.num_proposals} official proposals; final detections: ours "
        f"{len(f.pairs) + len(f.unmatched_ours)}, official {len(f.pairs) + len(f.unmatched_theirs)}"
    )
    print(f"  {'component':<30}{'max abs':>12}{'max rel':>12}{'rtol':>9}  result")
    for row in res.rows:
        tol = "-" if row.rtol is None else f"{row.rtol:.0e}"
        verdict = "info" if row.rtol is None else ("DIFF" if row.failed else "ok")
        note = f"  ({row.note})" if row.note else ""
        print(f"  {row.name:<30}{row.max_abs:>12.3e}{row.max_rel:>12.3e}{tol:>9}  {verdict}{note}")
    print(
        f"  final detections, ours vs official: {len(f.pairs)} matched (class, score within "
        f"{FINAL_TOLERANCE.score_atol:g}), {len(f.unmatched_ours)} of ours and "
        f"{len(f.unmatched_theirs)} official unmatched; matched: max score diff "
        f"{f.max_score_diff():.2e}, max box diff {f.max_box_diff():.3f} px (box convention, "
        "see 'box decode')"
    )
    if res.mask_ious:
        print(
            f"    pasted masks of matched detections: mean IoU {np.mean(res.mask_ious):.4f}, "
            f"min {min(res.mask_ious):.4f} (reported only: Detectron pastes with cv2.resize "
            "into the integer box + 1, detectron2 with grid_sample into the float box)"
        )
    for hint in res.hints:
        print(f"    {hint}")
    print(
        f"  official post-processing of our raw outputs vs official: {len(r.pairs)} matched, "
        f"{len(r.unmatched_ours) + len(r.unmatched_theirs)} unmatched; max score diff "
        f"{r.max_score_diff():.2e}, max box diff {r.max_box_diff():.2e} px"
    )
    problems = res.problems(accept_postprocess)
    for p in problems:
        print(f"  DIFF: {p}")
    print("  result: " + ("DIFF" if problems else "OK"))
    return not problems


def parse_size(s: str) -> tuple[int, int]:
    """'HxW' -> (H, W)."""
    h, w = s.lower().split("x")
    return int(h), int(w)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-root", required=True, help="checkout of ShuLiu1993/PANet")
    parser.add_argument("--variant", choices=sorted(OFFICIAL_CONFIGS), default="mask_2x")
    parser.add_argument("--weights", default=None, help="our checkpoint (refused, see docstring)")
    parser.add_argument("--num-images", type=int, default=1)
    parser.add_argument("--size", type=parse_size, default=(320, 480), help="HxW, multiples of 32")
    parser.add_argument("--images", choices=("dataset", "random"), default="dataset")
    parser.add_argument("--num-boxes", type=int, default=48, help="fixed boxes for the heads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-calibrate", action="store_true", help="skip the calibration")
    parser.add_argument(
        "--accept-postprocess",
        action="store_true",
        help="unmatched final detections do not fail when everything else agrees and the "
        "official post-processing of our raw outputs reproduces the official detections",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--dump-official-keys", default=None, help="write the official keys")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE (our key names)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 when anything differs beyond the tolerances)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.dump_official_keys:
        dump_official_keys(args.official_root, args.dump_official_keys)
        return 0
    cfg = our_config(args.variant, args.opts)
    images = make_images(cfg, args.images, args.num_images, args.size, args.seed)
    models, mismatches = build_models(args, images[0][1])
    print(f"variant {args.variant}: official configs/panet/{OFFICIAL_CONFIGS[args.variant]}")
    print(f"  vs ours {OUR_CONFIGS[args.variant]} {' '.join(args.opts)}".rstrip())
    print(f"weights: {models.weights}")
    for m in mismatches:
        print(f"config mismatch: {m}")
    failed = bool(mismatches)
    for name, image in images:
        failed |= not print_image(compare_image(models, name, image, args), args.accept_postprocess)
    print("\nRESULT: " + ("DIFF" if failed else "OK (within float32 rounding)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
