"""ResNet-FPN backbone with P2-P7, where P6/P7 come from the FPN output P5 (Panoptic FCN)."""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7

__all__ = ["build_resnet_fpn_p6p7_from_p5_backbone"]


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_p6p7_from_p5_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN(``MODEL.FPN.*``) + P6 = conv3x3/2(P5), P7 = conv3x3/2(ReLU(P6)).

    Unlike detectron2's RetinaNet builder (P6 from C5), P6 is computed from the FPN output P5,
    as in Panoptic FCN; parameter names match the official checkpoints (``top_block.p6/p7``).
    Outputs p2..p7 (strides 4..128), ``MODEL.FPN.OUT_CHANNELS`` channels each.
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
