"""Parameter names of the official Panoptic FCN checkpoints <-> this implementation.

Only names change; tensors are copied as they are (same shapes, same layouts: the DCNv2 offset
order and the CoordConv channel order match the official model).
"""

import re
from collections.abc import Mapping

import torch

__all__ = ["convert_official_state_dict", "official_to_ours", "ours_to_official"]

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
    """Rename an official state dict and check it against our model's state dict.

    Args:
        official: the official ``model`` state dict.
        expected: ``model.state_dict()`` of our model built from the matching config.
    Returns:
        the converted state dict and a report with the lists "matched" (official names),
        "unmatched" (official names no rule maps, or mapped to a name our model lacks),
        "missing" (our names nothing maps to) and "shape_mismatch" (descriptions).
    """
    converted: dict[str, torch.Tensor] = {}
    report: dict[str, list[str]] = {
        "matched": [],
        "unmatched": [],
        "missing": [],
        "shape_mismatch": [],
    }
    for name, value in official.items():
        ours = official_to_ours(name)
        if ours is None or ours not in expected:
            report["unmatched"].append(name)
            continue
        if tuple(value.shape) != tuple(expected[ours].shape):
            report["shape_mismatch"].append(
                f"{name} {tuple(value.shape)} -> {ours} {tuple(expected[ours].shape)}"
            )
            continue
        converted[ours] = value
        report["matched"].append(name)
    report["missing"] = [k for k in expected if k not in converted]
    return converted, report
