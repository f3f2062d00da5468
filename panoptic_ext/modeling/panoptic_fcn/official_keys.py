"""Parameter names and config keys of the official Panoptic FCN <-> this implementation.

Only names change; tensors are copied as they are (same shapes, same layouts: the DCNv2 offset
order and the CoordConv channel order match the official model). ``OFFICIAL_CONFIG_KEYS`` maps
our config keys to the official ones (same model, same inference).
"""

import re
from collections.abc import Mapping

import torch

from ...utils.state_dict_rename import convert_renamed_state_dict

__all__ = [
    "OFFICIAL_CONFIG_KEYS",
    "OFFICIAL_HARD_CODED",
    "convert_official_state_dict",
    "official_to_ours",
    "ours_to_official",
]

_P = "MODEL.PANOPTIC_FCN."
# Our config key -> the official one, for every key that changes the official model, its
# training targets/losses or its inference (used to build the official config of the same model).
OFFICIAL_CONFIG_KEYS: dict[str, str] = {
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
OFFICIAL_HARD_CODED: dict[str, object] = {
    _P + "POSITION_HEAD.THING.PEAK_SMOOTH_SIZES": [3, 3, 3, 5, 5],
    _P + "POSITION_HEAD.THING.PEAK_POOL_SIZE": 3,
    _P + "INFERENCE.SCORE_FLOOR": 0.05,
}

# (official prefix, our prefix) of the conv towers: "<official>_<k>.[dcnv2.]<rest>" ->
# "<ours>.layer<k>.<rest>"; the DCNv2 conv's own parameters sit directly on our layer.
_TOWERS = (
    ("feature_encoder.encode_head.encode_head_head", "encoder.tower"),
    ("position_head.position_head.position_head_head", "position_head.tower"),
    ("kernel_head.kernel_head.kernel_head_head", "kernel_head.tower"),
)
# Prefixes whose names are kept, and renamed prefixes.
_SAME = (
    "backbone.",
    "position_head.out_inst.",
    "position_head.out_sem.",
    "kernel_head.out_conv.",
    "thing_generator.embed_extractor.",
    "stuff_generator.embed_extractor.",
)
_RENAMED = (("semantic_fpn.", "encoder.semantic_fpn."),)


def official_to_ours(name: str) -> str | None:
    """Our parameter name for an official one, or None when no rule applies."""
    for official, ours in _TOWERS:
        m = re.fullmatch(re.escape(official) + r"_(\d+)\.(?:dcnv2\.)?(.+)", name)
        if m:
            return f"{ours}.layer{m.group(1)}.{m.group(2)}"
    if name.startswith(_SAME):
        return name
    for official, ours in _RENAMED:
        if name.startswith(official):
            return ours + name[len(official) :]
    return None


def ours_to_official(name: str, deform_towers: frozenset[str] = frozenset()) -> str | None:
    """Inverse of :func:`official_to_ours`.

    Args:
        deform_towers: our tower prefixes (e.g. "position_head.tower") whose layers are DCNv2,
            whose conv parameters live under ``dcnv2.`` in the official names.
    """
    for official, ours in _TOWERS:
        m = re.fullmatch(re.escape(ours) + r"\.layer(\d+)\.(.+)", name)
        if m:
            rest = m.group(2)
            if ours in deform_towers and not rest.startswith("offset_mask_conv."):
                rest = "dcnv2." + rest
            return f"{official}_{m.group(1)}.{rest}"
    if name.startswith(_SAME):
        return name
    for official, ours in _RENAMED:
        if name.startswith(ours):
            return official + name[len(ours) :]
    return None


def convert_official_state_dict(
    official: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Rename an official state dict and check it against our model's state dict (tensors are
    copied as they are); the report as :func:`convert_renamed_state_dict` gives it."""
    return convert_renamed_state_dict(official, expected, official_to_ours)
