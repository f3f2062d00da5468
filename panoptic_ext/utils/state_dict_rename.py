"""Checking an official checkpoint's state dict, renamed to ours, against our model's.

Used by the converters of official checkpoints (Panoptic FCN, PANet): each supplies its name
mapping (and, where layouts differ, a tensor transform); the report format is shared, so a
converter's CLI refuses a checkpoint that leaves any of our tensors unplaced the same way.
"""

from collections.abc import Callable, Mapping

import torch

__all__ = ["convert_renamed_state_dict"]


def convert_renamed_state_dict(
    official: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    rename: Callable[[str], str | None],
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Rename ``official`` with ``rename`` and check it against ``expected``.

    Args:
        official: the official ``model`` state dict.
        expected: ``model.state_dict()`` of our model built from the matching config.
        rename: official name -> our name, or None when no rule applies.
        transform: (our name, official tensor) -> the tensor to store (e.g. class reordering);
            applied before the shape check.
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
        ours = rename(name)
        if ours is None or ours not in expected:
            report["unmatched"].append(name)
            continue
        if transform is not None:
            value = transform(ours, value)
        if tuple(value.shape) != tuple(expected[ours].shape):
            report["shape_mismatch"].append(
                f"{name} {tuple(value.shape)} -> {ours} {tuple(expected[ours].shape)}"
            )
            continue
        converted[ours] = value
        report["matched"].append(name)
    report["missing"] = [k for k in expected if k not in converted]
    return converted, report
