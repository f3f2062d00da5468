"""A fully-connected layer with a norm after it, as detectron2's ``Conv2d`` has for convs."""

import torch
from detectron2.layers import get_norm
from torch import nn

__all__ = ["FC_NORMS", "NormedLinear"]

# Norms that accept the (N, C) input of a fully-connected layer ("BN" & co. are 2-D in detectron2).
FC_NORMS = ("", "GN")


class NormedLinear(nn.Linear):
    """``nn.Linear`` followed by ``norm`` (e.g. GroupNorm over the C outputs).

    Parameter names are the Linear's (``weight``, ``bias``) plus ``norm.weight`` / ``norm.bias``,
    mirroring detectron2's ``Conv2d(norm=...)``. The bias is kept: before GroupNorm a per-channel
    bias is not absorbed by the normalisation (official PANet's 2fc head has it).
    """

    def __init__(self, in_features: int, out_features: int, norm: str, key: str = "norm"):
        """
        Args:
            in_features, out_features: as ``nn.Linear``.
            norm: one of ``FC_NORMS``; "" gives a plain Linear.
            key: config key named in the error for an unsupported norm.
        """
        if norm not in FC_NORMS:
            raise ValueError(
                f"{key} must be one of {FC_NORMS} for a fully-connected layer, got {norm!r}"
            )
        super().__init__(in_features, out_features)
        self.norm = get_norm(norm, out_features) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_features) -> (N, out_features)."""
        x = super().forward(x)
        return self.norm(x) if self.norm is not None else x
