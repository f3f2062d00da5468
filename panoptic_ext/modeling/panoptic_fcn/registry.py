"""Registries of Panoptic FCN's parts, so that a config can swap one (detectron2's ``Registry``).

Each registry holds classes called as ``cls(cfg, input_shape)`` (``@configurable`` with a
``from_config(cfg, input_shape)``), chosen by a ``NAME`` key:

* ``MODEL.PANOPTIC_FCN.FEATURE_ENCODER.NAME`` (default ``"FeatureEncoder"``): backbone features
  ``dict[str, ShapeSpec]`` -> the encoded (N, E, H/4, W/4) feature the dynamic kernels act on;
* ``MODEL.PANOPTIC_FCN.POSITION_HEAD.NAME`` (default ``"PositionHead"``): one head level's
  ``ShapeSpec`` -> module giving center logits (N, T, H, W) and region logits (N, S, H, W);
* ``MODEL.PANOPTIC_FCN.KERNEL_HEAD.NAME`` (default ``"KernelHead"``): one head level's
  ``ShapeSpec`` -> module giving the kernel map (N, D, H, W), D = ``KERNEL_HEAD.CONVS_DIM``.

A replacement registers itself with ``@PANOPTIC_FCN_POSITION_HEAD_REGISTRY.register()`` (and so
on) in a module imported before the model is built, and keeps the outputs described above.
"""

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import nn

__all__ = [
    "PANOPTIC_FCN_ENCODER_REGISTRY",
    "PANOPTIC_FCN_KERNEL_HEAD_REGISTRY",
    "PANOPTIC_FCN_POSITION_HEAD_REGISTRY",
    "build_feature_encoder",
    "build_kernel_head",
    "build_position_head",
]

PANOPTIC_FCN_ENCODER_REGISTRY = Registry("PANOPTIC_FCN_ENCODER")
PANOPTIC_FCN_ENCODER_REGISTRY.__doc__ = "Panoptic FCN feature encoders (FEATURE_ENCODER.NAME)."
PANOPTIC_FCN_POSITION_HEAD_REGISTRY = Registry("PANOPTIC_FCN_POSITION_HEAD")
PANOPTIC_FCN_POSITION_HEAD_REGISTRY.__doc__ = "Panoptic FCN position heads (POSITION_HEAD.NAME)."
PANOPTIC_FCN_KERNEL_HEAD_REGISTRY = Registry("PANOPTIC_FCN_KERNEL_HEAD")
PANOPTIC_FCN_KERNEL_HEAD_REGISTRY.__doc__ = "Panoptic FCN kernel heads (KERNEL_HEAD.NAME)."


def build_feature_encoder(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """The encoder named by ``MODEL.PANOPTIC_FCN.FEATURE_ENCODER.NAME`` (all backbone shapes)."""
    name = cfg.MODEL.PANOPTIC_FCN.FEATURE_ENCODER.NAME
    return PANOPTIC_FCN_ENCODER_REGISTRY.get(name)(cfg, input_shape)


def build_position_head(cfg: CfgNode, input_shape: ShapeSpec) -> nn.Module:
    """The position head named by ``MODEL.PANOPTIC_FCN.POSITION_HEAD.NAME``."""
    name = cfg.MODEL.PANOPTIC_FCN.POSITION_HEAD.NAME
    return PANOPTIC_FCN_POSITION_HEAD_REGISTRY.get(name)(cfg, input_shape)


def build_kernel_head(cfg: CfgNode, input_shape: ShapeSpec) -> nn.Module:
    """The kernel head named by ``MODEL.PANOPTIC_FCN.KERNEL_HEAD.NAME``."""
    name = cfg.MODEL.PANOPTIC_FCN.KERNEL_HEAD.NAME
    return PANOPTIC_FCN_KERNEL_HEAD_REGISTRY.get(name)(cfg, input_shape)
