"""``SemanticFPNHead``: the semantic branch of Panoptic FPN (Kirillov et al. 2019).

Per FPN level a stack of [3x3 conv + norm + ReLU + 2x upsample] brings the feature to the common
stride (1/4); the levels are summed, a 1x1 conv predicts the classes and the logits are upsampled
by the common stride. With ``MODEL.SEMANTIC_FPN.CONV_TYPE: "standard"`` the module names and
outputs are those of detectron2's ``SemSegFPNHead``, so model-zoo ``sem_seg_head.*`` weights load
unchanged. ``FUSED_UPSAMPLE`` computes the same function with one large interpolation instead of
one per coarse level (bilinear upsampling is linear, so the sum can be upsampled once).
``"separable"`` replaces every 3x3 conv by a depthwise 3x3 + pointwise 1x1 pair: most
of the head's FLOPs are 3x3 convs at 1/4 resolution, and the separable form needs ~8x fewer.
"""

import math
from typing import Any

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..utils.config_keys import add_keys

__all__ = ["SemanticFPNHead", "add_semantic_fpn_config"]


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


def _interpolate(x: torch.Tensor, scale: int, mode: str) -> torch.Tensor:
    if mode == "nearest":
        return F.interpolate(x, scale_factor=scale, mode="nearest")
    return F.interpolate(x, scale_factor=scale, mode=mode, align_corners=False)


class _Upsample(nn.Module):
    """2x upsampling as a parameter-free module (keeps detectron2's Sequential indices)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _interpolate(x, 2, self.mode)


def _conv_block(in_ch: int, out_ch: int, norm: str, conv_type: str) -> nn.Module:
    """3x3 conv + norm + ReLU, standard or depthwise-separable."""
    if conv_type == "standard":
        conv = Conv2d(
            in_ch,
            out_ch,
            3,
            padding=1,
            bias=not norm,
            norm=get_norm(norm, out_ch),
            activation=F.relu,
        )
        weight_init.c2_msra_fill(conv)
        return conv
    if conv_type == "separable":
        depthwise = Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False)
        pointwise = Conv2d(
            in_ch, out_ch, 1, bias=not norm, norm=get_norm(norm, out_ch), activation=F.relu
        )
        weight_init.c2_msra_fill(depthwise)
        weight_init.c2_msra_fill(pointwise)
        return nn.Sequential(depthwise, pointwise)
    raise ValueError(
        f"MODEL.SEMANTIC_FPN.CONV_TYPE must be 'standard' or 'separable', got {conv_type!r}"
    )


@SEM_SEG_HEADS_REGISTRY.register()
class SemanticFPNHead(nn.Module):
    """Semantic FPN head.

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
            input_shape: shapes of the input features, by name.
            num_classes: number of output classes.
            conv_dims: channels of the per-level convs.
            common_stride: stride of the summed feature map (4 in the paper).
            loss_weight: multiplier of the cross-entropy loss.
            norm: detectron2 norm name ("GN", "BN", "" ...).
            ignore_value: target label excluded from the loss.
            conv_type: "standard" or "separable" (see module docstring).
            upsample_mode: "bilinear" (detectron2's) or "nearest".
            fused_upsample: share the last 2x upsampling between levels (see config comment).
        """
        super().__init__()
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        if not shapes:
            raise ValueError("SemanticFPNHead needs at least one input feature")
        self.in_features = [name for name, _ in shapes]
        self.ignore_value = ignore_value
        self.common_stride = common_stride
        self.loss_weight = loss_weight
        self.upsample_mode = upsample_mode
        self.fused_upsample = fused_upsample
        self.scale_heads = []
        for name, shape in shapes:
            if shape.stride < common_stride:
                raise ValueError(
                    f"feature {name} has stride {shape.stride} < common stride {common_stride}"
                )
            num_steps = max(1, int(math.log2(shape.stride) - math.log2(common_stride)))
            ops: list[nn.Module] = []
            for k in range(num_steps):
                ops.append(
                    _conv_block(shape.channels if k == 0 else conv_dims, conv_dims, norm, conv_type)
                )
                if shape.stride != common_stride:
                    ops.append(_Upsample(upsample_mode))
            self.scale_heads.append(nn.Sequential(*ops))
            self.add_module(name, self.scale_heads[-1])
        self.predictor = Conv2d(conv_dims, num_classes, kernel_size=1)
        weight_init.c2_msra_fill(self.predictor)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        head = cfg.MODEL.SEM_SEG_HEAD
        missing = [f for f in head.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES {missing} are not backbone outputs "
                f"{sorted(input_shape)}"
            )
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "num_classes": head.NUM_CLASSES,
            "conv_dims": head.CONVS_DIM,
            "common_stride": head.COMMON_STRIDE,
            "loss_weight": head.LOSS_WEIGHT,
            "norm": head.NORM,
            "ignore_value": head.IGNORE_VALUE,
            "conv_type": cfg.MODEL.SEMANTIC_FPN.CONV_TYPE,
            "upsample_mode": cfg.MODEL.SEMANTIC_FPN.UPSAMPLE_MODE,
            "fused_upsample": cfg.MODEL.SEMANTIC_FPN.FUSED_UPSAMPLE,
        }

    def layers(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, num_classes, H/common_stride, W/common_stride) logits."""
        if not self.fused_upsample:
            x = self.scale_heads[0](features[self.in_features[0]])
            for name, head in zip(self.in_features[1:], self.scale_heads[1:]):
                x = x + head(features[name])
            return self.predictor(x)
        # Every level coarser than the common stride ends with the same 2x step from
        # 2 * common_stride: sum those levels first, then upsample once.
        fine, coarse = [], []
        for name, head in zip(self.in_features, self.scale_heads):
            if isinstance(head[-1], _Upsample):
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
