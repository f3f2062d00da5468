"""Adaptive feature pooling (PANet Sec. 3.2): pool every RoI from every level, fuse after one layer.

:class:`AdaptiveFeaturePooler` replaces detectron2's :class:`ROIPooler` (which pools each RoI from
one FPN-assigned level) and returns a level-major stack ``(L, M, C, R, R)``.
:class:`PerLevelFirstLayerMixin` gives a detectron2 head a first parameter layer that is applied to
every level (own weights per level, or one shared layer) followed by a max/sum fusion over levels.
"""

import copy
from collections.abc import Callable

import torch
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes
from torch import nn

from ...layers.roi_align_grad import roi_align_with_sparse_grad, sparse_grad_applies

__all__ = ["AdaptiveFeaturePooler", "PerLevelFirstLayerMixin", "fuse_levels"]

FUSE_TYPES = ("max", "sum")


def fuse_levels(x: torch.Tensor, fuse: str) -> torch.Tensor:
    """Fuse a level-major stack ``(L, M, ...)`` into ``(M, ...)`` by element-wise max or sum."""
    if fuse == "max":
        return x.amax(dim=0)
    if fuse == "sum":
        return x.sum(dim=0)
    raise ValueError(f"MODEL.PANET.FUSE must be one of {FUSE_TYPES}, got {fuse!r}")


class AdaptiveFeaturePooler(nn.Module):
    """Pools every box from every feature level: one RoIAlign call per level, no per-box loop."""

    def __init__(self, level_poolers: nn.ModuleList, output_size: tuple[int, int]):
        """
        Args:
            level_poolers: one RoI op per level (e.g. ``ROIAlign(aligned=True)`` = "ROIAlignV2"),
                each with the spatial scale of its level, high to low resolution.
            output_size: (R, R) pooled size.
        """
        super().__init__()
        self.level_poolers = level_poolers
        self.output_size = output_size

    @classmethod
    def from_roi_pooler(cls, pooler: ROIPooler) -> "AdaptiveFeaturePooler":
        """Reuse the per-level RoI ops (type, scales, sampling ratio) of a detectron2 pooler."""
        return cls(pooler.level_poolers, pooler.output_size)

    def forward(self, x: list[torch.Tensor], box_lists: list[Boxes]) -> torch.Tensor:
        """
        Args:
            x: L feature maps, each (N, C, H_l, W_l) float, matching the pooler's scales.
            box_lists: N ``Boxes`` (image coordinates), one per image.

        Returns:
            (L, M, C, R, R) float, M = total number of boxes (may be 0).
        """
        if len(x) != len(self.level_poolers):
            raise ValueError(
                f"AdaptiveFeaturePooler has {len(self.level_poolers)} levels, got {len(x)} maps"
            )
        if len(box_lists) == 0:
            return x[0].new_zeros((len(x), 0, x[0].shape[1], *self.output_size))
        rois = convert_boxes_to_pooler_format(box_lists)
        return torch.stack(
            [_pool(pooler, feat, rois) for pooler, feat in zip(self.level_poolers, x)]
        )


def _pool(pooler: nn.Module, feat: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """One level's RoI op; on CPU in training, RoIAlign with the fast sparse-matrix backward.

    Same forward output either way; the gradient equals torchvision's up to float rounding.
    """
    if not sparse_grad_applies(pooler, feat):
        return pooler(feat, rois)
    return roi_align_with_sparse_grad(
        feat,
        rois,
        pooler.output_size,
        pooler.spatial_scale,
        pooler.sampling_ratio,
        pooler.aligned,
    )


class PerLevelFirstLayerMixin:
    """First parameter layer of an AFP head: per level (``<name>_levels.{l}``) or shared.

    The layer keeps detectron2's name (``fc1`` / ``conv1`` / ``mask_fcn1``) when there is a
    single copy, so detectron2 checkpoints load unchanged; with per-level copies, loading a state
    dict that has the detectron2 name initialises every copy from it (see
    :meth:`_load_from_state_dict`).
    """

    def _setup_first_layer(
        self: nn.Module,
        name: str,
        num_levels: int,
        shared: bool,
        fuse: str,
        init: Callable[[nn.Module], None],
        fuse_before: bool = False,
    ) -> None:
        """Turn module ``name`` into ``num_levels`` independently initialised copies if needed.

        Args:
            name: attribute name of the detectron2 first layer (already built by the base head).
            num_levels: L, number of pooled levels the head receives (1 without AFP).
            shared: one layer applied to all levels (False: one copy per level).
            fuse: "max" or "sum" over levels.
            init: re-initialisation applied to each extra copy.
            fuse_before: fuse the pooled levels *before* a single first layer (paper Table 4
                "fu.fc1fc2": no extra layer cost, slightly lower AP than fusing after it).
        """
        if fuse not in FUSE_TYPES:
            raise ValueError(f"MODEL.PANET.FUSE must be one of {FUSE_TYPES}, got {fuse!r}")
        self._first_name = name
        self._num_levels = num_levels
        self._fuse = fuse
        self._fuse_before = fuse_before
        self._per_level = num_levels > 1 and not shared and not fuse_before
        if self._per_level:
            layer = getattr(self, name)
            copies = [layer] + [copy.deepcopy(layer) for _ in range(num_levels - 1)]
            for extra in copies[1:]:
                init(extra)
            delattr(self, name)
            setattr(self, f"{name}_levels", nn.ModuleList(copies))

    def _first_layer_fused(
        self: nn.Module,
        x: torch.Tensor,
        pre: Callable[[torch.Tensor], torch.Tensor],
        post: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Apply ``pre``, the first layer and ``post`` to every level, then fuse the levels.

        Args:
            x: (L, M, C, R, R) from :class:`AdaptiveFeaturePooler`, or (M, C, R, R) = one level.
            pre: layers before the first parameter layer (e.g. flatten), applied per level.
            post: its activation if it is a separate module (e.g. ``fc_relu1``).

        Returns:
            (M, ...) fused output of the first layer (and its activation).
        """
        if x.dim() == 4:
            x = x[None]
        if x.shape[0] != self._num_levels:
            raise ValueError(
                f"{type(self).__name__} expects {self._num_levels} pooled level(s) (MODEL.PANET.AFP"
                f" and MODEL.ROI_HEADS.IN_FEATURES), got input of shape {tuple(x.shape)}"
            )
        if self._fuse_before:
            return post(getattr(self, self._first_name)(pre(fuse_levels(x, self._fuse))))
        if self._per_level:
            layers = getattr(self, f"{self._first_name}_levels")
            out = torch.stack([post(layer(pre(level))) for layer, level in zip(layers, x)])
        else:
            num_levels, num_boxes = x.shape[:2]
            out = post(getattr(self, self._first_name)(pre(x.flatten(0, 1))))
            out = out.unflatten(0, (num_levels, num_boxes))
        return fuse_levels(out, self._fuse)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
    ):
        # A detectron2 checkpoint has one first layer: copy each matching tensor into every level.
        if getattr(self, "_per_level", False):
            src = f"{prefix}{self._first_name}."
            levels = getattr(self, f"{self._first_name}_levels")
            own = levels[0].state_dict()
            for key in [k for k in state_dict if k.startswith(src)]:
                name = key[len(src) :]
                if name in own and own[name].shape == state_dict[key].shape:
                    value = state_dict.pop(key)
                    for i in range(len(levels)):
                        state_dict[f"{prefix}{self._first_name}_levels.{i}.{name}"] = value
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing, unexpected, errors
        )
