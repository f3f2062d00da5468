"""PAFPN: FPN plus PANet's bottom-up path augmentation (Liu et al. 2018, Sec. 3.1).

``N2 = P2`` and ``N(i+1) = conv3x3(conv3x3_stride2(N_i) + P(i+1))``. The outputs keep FPN's names
(``p2``..``p5`` now hold N2..N5) and strides, so every RPN / ROI / semantic-head config works by
changing only ``MODEL.BACKBONE.NAME``. The extra top level(s) are computed from N5, as in the
official PANet code and MMDetection (detectron2's FPN would take them from the old P5).

The top-down part *is* detectron2's :class:`FPN` (same modules, init and names ``fpn_lateral{s}``
/ ``fpn_output{s}``), so a detectron2 FPN checkpoint initialises it; the new convs are named
``pa_down{s}`` (stride 2, applied to N_s) and ``pa_out{s}`` (producing N_s).
"""

from collections.abc import Callable

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from ...utils.config_keys import add_keys

__all__ = ["PAFPN", "add_pafpn_config", "build_resnet_pafpn_backbone"]

_TOP_LEVELS = ("", "P6", "P6P7")
_FUSE_TYPES = ("sum", "avg")


def add_pafpn_config(cfg: CfgNode) -> None:
    """Add the ``MODEL.PAFPN`` keys (the top-down part keeps using ``MODEL.FPN.*``)."""
    add_keys(
        cfg,
        "MODEL.PAFPN",
        {
            # False: skip the bottom-up path (then PAFPN == detectron2's FPN; for ablations/tests).
            "BOTTOM_UP": True,
            # Norm of the bottom-up convs ("", "GN", "BN", "SyncBN"); official PANet uses GN.
            "NORM": "",
            # Bias in the bottom-up convs also when NORM is set. True is the official PANet neck
            # (conv with bias, then GN): a per-channel bias before GroupNorm is NOT absorbed by it
            # (GN normalises over channel groups, not per channel as BN does), so dropping it is
            # a different function and official weights would not fit. False drops it as
            # detectron2 does for normed convs. Without NORM the convs always have a bias.
            "CONV_BIAS": True,
            # ReLU after every bottom-up conv, as in the paper (MMDetection's PAFPN has none).
            "ACTIVATION": True,
            # How conv_s2(N_i) and P(i+1) are merged: "sum" (paper) or "avg".
            "FUSE_TYPE": "sum",
            # Extra levels from N5: "P6" (max-pool, for RPN), "P6P7" (3x3 s2 convs), "" (none).
            "TOP_LEVELS": "P6",
        },
    )


def _top_block(top_levels: str, channels: int) -> nn.Module | None:
    """FPN's top block for ``MODEL.PAFPN.TOP_LEVELS`` (P6 and P7 read N5)."""
    if top_levels == "P6":
        return LastLevelMaxPool()
    if top_levels == "P6P7":
        return LastLevelP6P7(channels, channels, in_feature="p5")
    return None


def _pa_conv(
    channels: int, stride: int, bias: bool, norm: str, activation: Callable | None
) -> Conv2d:
    """A 3x3 conv of the bottom-up path (initialised by the caller, in detectron2's order)."""
    return Conv2d(
        channels,
        channels,
        kernel_size=3,
        stride=stride,
        padding=1,
        bias=bias,
        norm=get_norm(norm, channels),
        activation=activation,
    )


class PAFPN(FPN):
    """detectron2 FPN followed by the PANet bottom-up path.

    Input: a dict of backbone features (``res2``..``res5``, NCHW float). Output: a dict
    ``{"p2": N2, ..., "p5": N5, ["p6": ..., "p7": ...]}``, each ``(N, out_channels, H/s, W/s)``
    float with stride ``s`` = 2**level.
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: list[str],
        out_channels: int,
        norm: str = "",
        fuse_type: str = "sum",
        bottom_up_path: bool = True,
        pa_norm: str = "",
        pa_conv_bias: bool = True,
        pa_activation: bool = True,
        pa_fuse_type: str = "sum",
        top_levels: str = "P6",
    ):
        """
        Args:
            bottom_up, in_features, out_channels, norm, fuse_type: as in detectron2's FPN
                (they configure the top-down path).
            bottom_up_path: add PANet's bottom-up path; False gives exactly detectron2's FPN.
            pa_norm: norm of the bottom-up convs (a ``get_norm`` name, "" for none + bias).
            pa_conv_bias: keep the bottom-up convs' bias when ``pa_norm`` is set (official
                PANet; not equivalent to dropping it, since GroupNorm does not absorb it).
            pa_activation: ReLU after each bottom-up conv (paper) or none (MMDetection).
            pa_fuse_type: "sum" or "avg" of ``conv_s2(N_i)`` and ``P(i+1)``.
            top_levels: "", "P6" (max-pool of N5) or "P6P7" (two 3x3 stride-2 convs on N5).
        """
        if top_levels not in _TOP_LEVELS:
            raise ValueError(
                f"MODEL.PAFPN.TOP_LEVELS must be one of {_TOP_LEVELS}, got {top_levels!r}"
            )
        if pa_fuse_type not in _FUSE_TYPES:
            raise ValueError(
                f"MODEL.PAFPN.FUSE_TYPE must be one of {_FUSE_TYPES}, got {pa_fuse_type!r}"
            )
        top_block = _top_block(top_levels, out_channels)
        super().__init__(bottom_up, in_features, out_channels, norm, top_block, fuse_type)
        # The top block reads the last pyramid level (N5 here), whatever FPN's default input is.
        self._num_pyramid_levels = len(in_features)
        self._pa_fuse_type = pa_fuse_type

        self.pa_down_convs = []
        self.pa_out_convs = []
        if bottom_up_path:
            use_bias = pa_conv_bias or pa_norm == ""
            activation = F.relu if pa_activation else None
            levels = self._fpn_levels()
            for src, dst in zip(levels[:-1], levels[1:]):
                down = _pa_conv(out_channels, 2, use_bias, pa_norm, activation)
                out = _pa_conv(out_channels, 1, use_bias, pa_norm, activation)
                weight_init.c2_xavier_fill(down)
                weight_init.c2_xavier_fill(out)
                self.add_module(f"pa_down{src}", down)
                self.add_module(f"pa_out{dst}", out)
                self.pa_down_convs.append(down)
                self.pa_out_convs.append(out)

    def _fpn_levels(self) -> list[int]:
        """Stage numbers of the pyramid levels built from ``in_features`` (e.g. [2, 3, 4, 5])."""
        return [int(f[1:]) for f in self._out_features[: self._num_pyramid_levels]]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            x: images, (N, 3, H, W) float, H and W multiples of ``size_divisibility``.

        Returns:
            ``{"p2": (N, C, H/4, W/4), ..., "p5": (N, C, H/32, W/32), [p6, p7]}`` float.
        """
        features = self.bottom_up(x)
        # Top-down path with detectron2's FPN modules (lateral/output convs in top-down order).
        prev = self.lateral_convs[0](features[self.in_features[-1]])
        pyramid = [self.output_convs[0](prev)]
        for idx in range(1, self._num_pyramid_levels):
            lateral = self.lateral_convs[idx](features[self.in_features[-idx - 1]])
            prev = lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
            if self._fuse_type == "avg":
                prev = prev / 2
            pyramid.insert(0, self.output_convs[idx](prev))

        # Bottom-up path augmentation: N2 = P2, N(i+1) = out(down(N_i) + P(i+1)).
        if self.pa_down_convs:
            outputs = [pyramid[0]]
            for down, out, p_next in zip(self.pa_down_convs, self.pa_out_convs, pyramid[1:]):
                fused = down(outputs[-1]) + p_next
                if self._pa_fuse_type == "avg":
                    fused = fused / 2
                outputs.append(out(fused))
            pyramid = outputs

        if self.top_block is not None:
            pyramid.extend(self.top_block(pyramid[-1]))
        return dict(zip(self._out_features, pyramid))


@BACKBONE_REGISTRY.register()
def build_resnet_pafpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> PAFPN:
    """ResNet + PAFPN, configured by ``MODEL.RESNETS``, ``MODEL.FPN`` and ``MODEL.PAFPN``."""
    return PAFPN(
        bottom_up=build_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        bottom_up_path=cfg.MODEL.PAFPN.BOTTOM_UP,
        pa_norm=cfg.MODEL.PAFPN.NORM,
        pa_conv_bias=cfg.MODEL.PAFPN.CONV_BIAS,
        pa_activation=cfg.MODEL.PAFPN.ACTIVATION,
        pa_fuse_type=cfg.MODEL.PAFPN.FUSE_TYPE,
        top_levels=cfg.MODEL.PAFPN.TOP_LEVELS,
    )
