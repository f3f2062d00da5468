"""Load a detectron2 checkpoint into a (possibly different) model and report what matched.

Used to initialise PAFPN / PANet models from a detectron2 model-zoo Mask R-CNN: every module whose
name and shape match is loaded; PANet's per-level first layers are filled from detectron2's
``fc1`` / ``mask_fcn1`` by the heads themselves; the report lists which keys are new.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from fvcore.common.checkpoint import Checkpointer
from torch import nn

from .safe_load import load_checkpoint_file
from .weight_checks import check_finite

__all__ = ["LoadReport", "load_d2_state_dict", "read_d2_checkpoint"]


@dataclass
class LoadReport:
    """Outcome of :func:`load_d2_state_dict` (all lists sorted)."""

    loaded: list[str] = field(default_factory=list)  # model keys that received a value
    new: list[str] = field(default_factory=list)  # model keys absent from the checkpoint
    unused: list[str] = field(default_factory=list)  # checkpoint keys the model has no use for
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, ckpt, model

    def format(self) -> str:
        """Human-readable summary: counts, then every new / unused / mismatched key."""
        lines = [
            f"loaded {len(self.loaded)} keys, new {len(self.new)}, unused {len(self.unused)}, "
            f"shape mismatch {len(self.shape_mismatch)}"
        ]
        lines += [f"  new:      {k}" for k in self.new]
        lines += [f"  unused:   {k}" for k in self.unused]
        lines += [f"  mismatch: {k} checkpoint {c} model {m}" for k, c, m in self.shape_mismatch]
        return "\n".join(lines)


def read_d2_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """Read a detectron2 checkpoint (``.pth``, or model-zoo ``.pkl`` of numpy arrays) with the
    project's safe loader (refuses pickled code unless trusted, see ``checkpoint.safe_load``).

    Returns:
        the ``"model"`` state dict, values converted to tensors.
    Raises:
        NonFiniteWeightsError: a tensor holds NaN or Inf (named).
    """
    data = load_checkpoint_file(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(data).__name__}")
    state = data.get("model", data)
    check_finite(state, path)  # NaN/Inf weights are refused here as everywhere
    return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}


def load_d2_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Load every key of ``state_dict`` whose name and shape match ``model``; report the rest.

    The matching is fvcore's ``Checkpointer`` (what detectron2's checkpointer does): keys with a
    different shape (e.g. a box predictor for another number of classes) are skipped and a
    ``module.`` prefix (DDP) is stripped. The model is modified in place.
    """
    # fvcore's loading step, without a file: it pops "model" and edits the dict it gets.
    incompatible = Checkpointer(model)._load_model({"model": dict(state_dict)})
    mismatch = sorted(incompatible.incorrect_shapes)
    skipped = {k for k, _, _ in mismatch}
    missing = set(incompatible.missing_keys)
    return LoadReport(
        loaded=sorted(k for k in model.state_dict() if k not in missing),
        new=sorted(missing - skipped),
        unused=sorted(incompatible.unexpected_keys),
        shape_mismatch=mismatch,
    )
