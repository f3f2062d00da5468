"""Adaptive feature pooling (PANet Sec. 3.2): pool every RoI from every level.

:class:`AdaptiveFeaturePooler` replaces detectron2's :class:`ROIPooler` (which pools each RoI from
one FPN-assigned level) and returns a level-major stack ``(L, M, C, R, R)``; the heads fuse the
levels after their first layer (:mod:`.per_level_first_layer`).
"""

import torch
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes
from torch import nn

from ...layers.roi_align_grad import roi_align_with_sparse_grad, sparse_grad_applies

__all__ = ["AdaptiveFeaturePooler"]


class AdaptiveFeaturePooler(nn.Module):
    """Pools every box from every feature level: one RoIAlign call per level, no per-box loop."""

    def __init__(
        self,
        level_poolers: nn.ModuleList,
        output_size: tuple[int, int],
        pixel_index_boxes: bool = False,
    ):
        """
        Args:
            level_poolers: one RoI op per level (e.g. ``ROIAlign(aligned=True)`` = "ROIAlignV2"),
                each with the spatial scale of its level, high to low resolution.
            output_size: (R, R) pooled size.
            pixel_index_boxes: pool each box at (x1, y1, x2 - 1, y2 - 1): the numbers Detectron
                pools for the same box, since its boxes are pixel indices (x2 is the last pixel)
                where detectron2's are continuous (x2 is one past it).
        """
        super().__init__()
        self.level_poolers = level_poolers
        self.output_size = output_size
        self.pixel_index_boxes = pixel_index_boxes

    @classmethod
    def from_roi_pooler(
        cls, pooler: ROIPooler, pixel_index_boxes: bool = False
    ) -> "AdaptiveFeaturePooler":
        """Reuse the per-level RoI ops (type, scales, sampling ratio) of a detectron2 pooler."""
        return cls(pooler.level_poolers, pooler.output_size, pixel_index_boxes)

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
        if self.pixel_index_boxes:
            rois = rois - rois.new_tensor([0.0, 0.0, 0.0, 1.0, 1.0])
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
