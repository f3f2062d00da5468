"""Weights that cannot be right, refused when they are loaded (see RELIABILITY.md).

* :func:`check_finite`: a NaN or Inf in any tensor of a checkpoint (evaluation then reports a PQ
  computed from garbage, the demo draws no segment);
* :func:`check_coverage`: a checkpoint that fills none of the model, or (for evaluation, the demo
  and export) leaves a whole head at random initialisation. detectron2 only logs the key lists;
  the run then "works" and reports PQ 0. Fine-tuning from an ImageNet backbone (heads at random
  init) or from a model-zoo checkpoint with another class count (mismatched predictor shapes)
  stays allowed for training;
* :func:`resume_misfit`: the checkpoint ``--resume`` continues from was saved by another model
  (the config changed): names the config keys that differ from the saved config.

Known foreign layouts are recognised by their parameter names, and the converter is named.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import yaml

from ..utils.official_layouts import OFFICIAL_LAYOUTS

__all__ = [
    "NonFiniteWeightsError",
    "ResumeMismatchError",
    "WeightsError",
    "WeightsMismatchError",
    "changed_model_keys",
    "check_coverage",
    "check_finite",
    "recognise_layout",
    "resume_misfit",
]

_SHOWN = 4  # names listed per side in messages


class WeightsError(ValueError):
    """Weights that cannot be the ones the user meant (the message names the file)."""


class NonFiniteWeightsError(WeightsError):
    """A tensor of the checkpoint holds NaN or Inf."""


class WeightsMismatchError(WeightsError):
    """The checkpoint does not fill the model (or its heads) it is loaded into."""


class ResumeMismatchError(WeightsError):
    """The checkpoint to resume from was saved by a different model."""


def _bad_values(value: Any) -> tuple[int, int, int] | None:
    """(NaN count, Inf count, size) of a float tensor / array; None for anything else."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        nans, infs = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
        return nans, infs, value.numel()
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        return int(np.isnan(value).sum()), int(np.isinf(value).sum()), value.size
    return None


def check_finite(state: Mapping[str, Any], filename: str) -> None:
    """Refuse ``state`` (a ``"model"`` dict of tensors / numpy arrays) if a float tensor holds
    NaN or Inf, naming the file, the tensors and how many values are bad."""
    bad = []
    for name, value in state.items():
        counts = _bad_values(value)
        if counts is not None and (counts[0] or counts[1]):
            bad.append(f"{name} ({counts[0]} NaN, {counts[1]} Inf of {counts[2]} values)")
    if bad:
        more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        raise NonFiniteWeightsError(
            f"Refusing weights {filename}: {len(bad)} tensor(s) hold NaN/Inf values: "
            f"{', '.join(bad[:_SHOWN])}{more}. A model with such weights predicts garbage (a "
            "training that diverged, or a damaged conversion); use an earlier checkpoint."
        )


def recognise_layout(keys: Iterable[str]) -> str | None:
    """A sentence naming the foreign layout of checkpoint ``keys`` and its converter, or None."""
    keys = [k.removeprefix("module.") for k in keys]
    for layout in OFFICIAL_LAYOUTS:
        hits = sum(k.startswith(layout.prefixes) for k in keys)
        if hits and (hits * 2 >= len(keys) or hits >= 10):
            return (
                f"Its parameter names are those of {layout.code_base} code base: convert the "
                f"file first with `{layout.converter}`, then pass the converted file as "
                "MODEL.WEIGHTS."
            )
    return None


def _some(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f", ... ({len(names)} in all)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more if names else "none"


def _modules(keys: Iterable[str]) -> list[str]:
    return sorted({k.split(".", 1)[0] for k in keys if "." in k})


def check_coverage(
    model_keys: Iterable[str],
    loaded: Iterable[str],
    checkpoint_keys: Iterable[str],
    unused: Iterable[str],
    filename: str,
    *,
    inference: bool,
) -> None:
    """Refuse weights that fill nothing of the model, that come in a recognised foreign layout
    (the converter is named), or, when ``inference``, that leave a head (a top-level module
    other than the backbone) entirely at random initialisation.

    Args:
        model_keys: the model's state-dict keys; loaded: those that received a value.
        checkpoint_keys: the checkpoint's keys as stored; unused: those the model did not take.
    Raises:
        WeightsMismatchError: naming the file, some unfilled model keys and some unused
            checkpoint keys, and the converter of a recognised foreign layout.
    """
    model_keys = [k.removeprefix("module.") for k in model_keys]
    loaded = {k.removeprefix("module.") for k in loaded}
    checkpoint_keys, unused = list(checkpoint_keys), list(unused)
    hint = recognise_layout(unused)  # a foreign layout is never meant to be half-ignored
    heads = [m for m in _modules(model_keys) if m != "backbone"]
    random = [h for h in heads if not any(k.split(".", 1)[0] == h for k in loaded)]
    if not loaded:
        what = f"fill none of the model's {len(model_keys)} tensors"
    elif hint:
        what = f"hold {len(unused)} tensors in another code base's layout, which the model ignores"
    elif inference and random:
        what = (
            f"leave the head(s) {', '.join(random)} of the model entirely at random "
            "initialisation (evaluation, the demo and export need trained heads; fine-tuning "
            "from a backbone checkpoint is for training)"
        )
    else:
        return
    missing = [k for k in model_keys if k not in loaded]
    lines = [
        f"Refusing weights {filename}: they {what}.",
        f"  model tensors not in the file: {_some(missing)}",
        f"  tensors of the file the model does not use: {_some(unused)}",
        f"  (model modules: {', '.join(_modules(model_keys))}; "
        f"file: {', '.join(_modules(checkpoint_keys)) or 'none'})",
    ]
    lines.append(
        hint
        or "Check that MODEL.WEIGHTS was trained with this config (MODEL.META_ARCHITECTURE and "
        "the head settings)."
    )
    raise WeightsMismatchError("\n".join(lines))


def resume_misfit(
    model_shapes: Mapping[str, tuple[int, ...]], checkpoint_shapes: Mapping[str, tuple[int, ...]]
) -> list[str]:
    """Why a checkpoint cannot be resumed into the model (empty when it fits exactly)."""
    model_shapes = {k.removeprefix("module."): v for k, v in model_shapes.items()}
    checkpoint_shapes = {k.removeprefix("module."): v for k, v in checkpoint_shapes.items()}
    missing = [k for k in model_shapes if k not in checkpoint_shapes]
    extra = [k for k in checkpoint_shapes if k not in model_shapes]
    shapes = [
        f"{k} {tuple(checkpoint_shapes[k])} in the file, {tuple(v)} in the model"
        for k, v in model_shapes.items()
        if k in checkpoint_shapes and tuple(checkpoint_shapes[k]) != tuple(v)
    ]
    found = []
    if missing:
        found.append(f"{len(missing)} model tensors are not in the file: {_some(missing)}")
    if extra:
        found.append(f"{len(extra)} tensors of the file are not in the model: {_some(extra)}")
    if shapes:
        found.append(f"{len(shapes)} tensors changed shape: {'; '.join(shapes[:_SHOWN])}")
    return found


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, Mapping):
        return {prefix[:-1]: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


# Keys that say where and from what a model runs, not which model it is.
_NOT_MODEL_SHAPE = ("MODEL.WEIGHTS", "MODEL.DEVICE")


def changed_model_keys(saved_yaml: str, current_yaml: str) -> list[str]:
    """``MODEL.*`` keys whose value differs between two config dumps, as
    "KEY: saved -> current" (``MODEL.WEIGHTS`` and ``MODEL.DEVICE`` aside)."""
    saved = _flatten(yaml.safe_load(saved_yaml) or {})
    now = _flatten(yaml.safe_load(current_yaml) or {})
    changed = []
    for key in sorted(set(saved) | set(now)):
        if not key.startswith("MODEL.") or key in _NOT_MODEL_SHAPE:
            continue
        old, new = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if old != new:
            changed.append(f"{key}: {old!r} -> {new!r}")
    return changed
