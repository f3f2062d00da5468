"""``SemanticFPNHead``: the semantic branch of Panoptic FPN (Kirillov et al. 2019), a subclass
of detectron2's ``SemSegFPNHead`` that adds the options of ``MODEL.SEMANTIC_FPN``.

Per FPN level a stack of [3x3 conv + norm + ReLU + 2x upsample] brings the feature to the common
stride (1/4); the levels are summed, a 1x1 conv predicts the classes and the logits are upsampled
by the common stride. With ``MODEL.SEMANTIC_FPN.CONV_TYPE: "standard"`` the module names and
outputs are those of detectron2's ``SemSegFPNHead``, so model-zoo ``sem_seg_head.*`` weights load
unchanged. ``FUSED_UPSAMPLE`` computes the same function with one large interpolation instead of
one per coarse level (bilinear upsampling is linear, so the sum can be upsampled once).
``"separable"`` replaces every 3x3 conv by a depthwise 3x3 + pointwise 1x1 pair: most
of the head's FLOPs are 3x3 convs at 1/4 resolution, and the separable form needs ~8x fewer.
"""

from typing import Any

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from torch import nn

from ..utils.config_keys import add_keys

__all__ = ["CONV_TYPES", "SemanticFPNHead", "add_semantic_fpn_config"]

# MODEL.SEMANTIC_FPN.CONV_TYPE values.
CONV_TYPES = ("standard", "separable")


def add_semantic_fpn_config(cfg: CfgNode) -> None:
    """Add ``MODEL.SEMANTIC_FPN``: options of :class:`SemanticFPNHead` beyond ``SEM_SEG_HEAD``."""
    add_keys(
        cfg,
        "MODEL.SEMANTIC_FPN",
        {
            # "standard": 3x3 convs, as detectron2's SemSegFPNHead (checkpoint-compatible);
            # "separable": depthwise 3x3 + pointwise 1x1 per conv, a lighter head.
            "CONV_TYPE": "standard",
            # Interpolation of the 2x steps and the final upsampling: "bilinear" or "nearest".
            "UPSAMPLE_MODE": "bilinear",
            # Sum the levels that end with the same 2x step to the common stride and upsample that
            # sum once (upsampling is linear: same result up to float rounding, less work).
            "FUSED_UPSAMPLE": False,
        },
    )


def _align_corners(mode: str) -> bool | None:
    # F.interpolate takes align_corners only for the interpolating modes.
    return None if mode == "nearest" else False


def _interpolate(x: torch.Tensor, scale: int, mode: str) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode=mode, align_corners=_align_corners(mode))


def _separable_block(in_ch: int, out_ch: int, norm: str) -> nn.Module:
    """Depthwise 3x3 + pointwise 1x1 (+ norm + ReLU): a 3x3 conv block with ~8x fewer FLOPs."""
    depthwise = Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False)
    pointwise = Conv2d(
        in_ch, out_ch, 1, bias=not norm, norm=get_norm(norm, out_ch), activation=F.relu
    )
    weight_init.c2_msra_fill(depthwise)
    weight_init.c2_msra_fill(pointwise)
    return nn.Sequential(depthwise, pointwise)


@SEM_SEG_HEADS_REGISTRY.register()
class SemanticFPNHead(SemSegFPNHead):
    """detectron2's ``SemSegFPNHead`` with the options of ``MODEL.SEMANTIC_FPN``.

    The modules are detectron2's (separable convs replace its 3x3 convs in place, the upsampling
    modules only change mode), so with the defaults a model-zoo ``sem_seg_head.*`` checkpoint
    loads unchanged and gives the same outputs. What differs: the options, a loss that is 0
    rather than NaN for a batch whose pixels are all void, and checks that name the bad key.

    Inputs: FPN features ``{name: (N, C_l, H/s_l, W/s_l)}`` for ``in_features``.
    Training returns ``(None, {"loss_sem_seg": scalar})`` given targets (N, H, W) int64 at the
    padded input size; inference returns ``((N, num_classes, H, W) float logits, {})``.
    """

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        num_classes: int,
        conv_dims: int,
        common_stride: int,
        loss_weight: float = 1.0,
        norm: str = "GN",
        ignore_value: int = 255,
        conv_type: str = "standard",
        upsample_mode: str = "bilinear",
        fused_upsample: bool = False,
    ):
        """
        Args:
            input_shape, num_classes, conv_dims, common_stride, loss_weight, norm, ignore_value:
                as for ``SemSegFPNHead``.
            conv_type: "standard" or "separable" (see module docstring).
            upsample_mode: "bilinear" (detectron2's) or "nearest".
            fused_upsample: share the last 2x upsampling between levels (see config comment).
        """
        if not input_shape:
            raise ValueError("SemanticFPNHead needs at least one input feature")
        for name, shape in input_shape.items():
            if shape.stride < common_stride:
                raise ValueError(
                    f"feature {name} has stride {shape.stride} < common stride {common_stride}"
                )
        if conv_type not in CONV_TYPES:
            raise ValueError(
                f"MODEL.SEMANTIC_FPN.CONV_TYPE must be one of {CONV_TYPES}, got {conv_type!r}"
            )
        super().__init__(
            input_shape,
            num_classes=num_classes,
            conv_dims=conv_dims,
            common_stride=common_stride,
            loss_weight=loss_weight,
            norm=norm,
            ignore_value=ignore_value,
        )
        self.upsample_mode = upsample_mode
        self.fused_upsample = fused_upsample
        for head in self.scale_heads:
            for i, op in enumerate(head):
                if isinstance(op, nn.Upsample):
                    op.mode, op.align_corners = upsample_mode, _align_corners(upsample_mode)
                elif conv_type == "separable":
                    head[i] = _separable_block(op.in_channels, conv_dims, norm)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        missing = [f for f in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES {missing} are not backbone outputs "
                f"{sorted(input_shape)}"
            )
        options = cfg.MODEL.SEMANTIC_FPN
        return {
            **super().from_config(cfg, input_shape),
            "conv_type": options.CONV_TYPE,
            "upsample_mode": options.UPSAMPLE_MODE,
            "fused_upsample": options.FUSED_UPSAMPLE,
        }

    def layers(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, num_classes, H/common_stride, W/common_stride) logits."""
        if not self.fused_upsample:
            return super().layers(features)
        # Every level coarser than the common stride ends with the same 2x step from
        # 2 * common_stride: sum those levels first, then upsample once.
        fine, coarse = [], []
        for name, head in zip(self.in_features, self.scale_heads):
            if isinstance(head[-1], nn.Upsample):
                coarse.append(head[:-1](features[name]))
            else:
                fine.append(head(features[name]))
        x = sum(fine) if fine else 0
        if coarse:
            x = x + _interpolate(sum(coarse), 2, self.upsample_mode)
        return self.predictor(x)

    def forward(
        self, features: dict[str, torch.Tensor], targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        x = self.layers(features)
        if self.training:
            return None, self.losses(x, targets)
        return _interpolate(x, self.common_stride, self.upsample_mode), {}

    def losses(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean cross-entropy over non-ignored pixels of (N, H, W) int64 ``targets``."""
        # fp32: cross-entropy over many classes is unstable in half precision.
        logits = _interpolate(predictions.float(), self.common_stride, self.upsample_mode)
        # Sum / count instead of "mean": identical, but 0 rather than NaN for an all-void batch.
        loss = F.cross_entropy(logits, targets, reduction="sum", ignore_index=self.ignore_value)
        loss = loss / (targets != self.ignore_value).sum().clamp(min=1)
        return {"loss_sem_seg": loss * self.loss_weight}
