"""PANet mask head: AFP first conv + fully-connected fusion branch (PANet Sec. 3.3, Fig. 4)."""

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.roi_heads import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead
from torch import nn

from .panet_box_head import afp_num_levels
from .per_level_first_layer import PerLevelFirstLayerMixin

__all__ = ["PANetMaskHead"]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@ROI_MASK_HEAD_REGISTRY.register()
class PANetMaskHead(PerLevelFirstLayerMixin, MaskRCNNConvUpsampleHead):
    """detectron2's 4-conv + deconv mask FCN with two PANet additions:

    * AFP: ``mask_fcn1`` is applied to every pooled level (own weights per level or shared),
      then the levels are fused by max/sum (paper: fuse between conv1 and conv2);
    * FF: from the output of ``mask_fcn{FF_FROM_CONV}`` (paper: conv3), ``fc_branch_conv1``
      (3x3, CONV_DIM) -> ``fc_branch_conv2`` (3x3, CONV_DIM // 2) -> ``fc_mask`` (one fc to
      (2R)^2 = 784 class-agnostic fg/bg logits), added to every class's FCN mask logits.

    Paper vs official code: the official code puts a ReLU after ``fc_mask`` (not in the paper);
    it is ``MODEL.PANET.FF_RELU`` (default off = paper). Loss and inference are detectron2's
    (``mask_rcnn_loss`` / ``mask_rcnn_inference`` on the summed logits).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dims: list[int],
        conv_norm: str = "",
        num_levels: int = 1,
        shared_first_layer: bool = False,
        fuse: str = "max",
        fuse_before_first_layer: bool = False,
        ff: bool = True,
        ff_from_conv: int = 3,
        ff_relu: bool = False,
        **kwargs,
    ):
        """
        Args:
            input_shape, num_classes, conv_dims, conv_norm, kwargs: as
                ``MaskRCNNConvUpsampleHead`` (conv_dims = NUM_CONV convs + the deconv).
            num_levels: L, levels in the pooled input (L, M, C, R, R).
            shared_first_layer: one ``mask_fcn1`` for all levels (False: one per level).
            fuse: "max" (paper's choice) or "sum".
            fuse_before_first_layer: fuse the pooled levels before the first layer instead.
            ff: add the fully-connected fusion branch.
            ff_from_conv: 1-based index of the mask conv whose output feeds the FF branch.
            ff_relu: ReLU on the fc output (official code) or none (paper).
        """
        super().__init__(
            input_shape, num_classes=num_classes, conv_dims=conv_dims, conv_norm=conv_norm, **kwargs
        )
        num_conv = len(conv_dims) - 1
        if ff and not 1 <= ff_from_conv <= num_conv:
            raise ValueError(
                f"MODEL.PANET.FF_FROM_CONV must be in [1, {num_conv}] (ROI_MASK_HEAD.NUM_CONV), "
                f"got {ff_from_conv}"
            )
        self._setup_first_layer(
            "mask_fcn1",
            num_levels,
            shared_first_layer,
            fuse,
            weight_init.c2_msra_fill,
            fuse_before_first_layer,
        )
        self._rest_convs = [f"mask_fcn{k}" for k in range(2, num_conv + 1)]
        self._ff_from_conv = ff_from_conv if ff else 0
        self._ff_relu = ff_relu
        if ff:
            self._build_ff_branch(conv_dims[ff_from_conv - 1], input_shape.height, conv_norm)

    def _build_ff_branch(self, dim: int, res: int, conv_norm: str) -> None:
        """fc_branch_conv1/2 (3x3, the second halves the channels) and fc_mask, on ``res``^2
        pooled maps of ``dim`` channels; created, then initialised, in this order."""
        half = dim // 2

        def conv(out_dim: int) -> Conv2d:
            return Conv2d(
                dim,
                out_dim,
                3,
                padding=1,
                bias=not conv_norm,
                norm=get_norm(conv_norm, out_dim),
                activation=nn.ReLU(),
            )

        self.fc_branch_conv1 = conv(dim)
        self.fc_branch_conv2 = conv(half)
        # Output side = the deconv's 2x upsampled mask (28 for a 14x14 pooler).
        self._mask_side = 2 * res
        self.fc_mask = nn.Linear(half * res * res, self._mask_side**2)
        weight_init.c2_msra_fill(self.fc_branch_conv1)
        weight_init.c2_msra_fill(self.fc_branch_conv2)
        weight_init.c2_xavier_fill(self.fc_mask)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict:
        ret = super().from_config(cfg, input_shape)
        ret.update(
            num_levels=afp_num_levels(cfg),
            shared_first_layer=cfg.MODEL.PANET.SHARED_FIRST_LAYER,
            fuse=cfg.MODEL.PANET.FUSE,
            fuse_before_first_layer=cfg.MODEL.PANET.FUSE_BEFORE_FIRST_LAYER,
            ff=cfg.MODEL.PANET.FF,
            ff_from_conv=cfg.MODEL.PANET.FF_FROM_CONV,
            ff_relu=cfg.MODEL.PANET.FF_RELU,
        )
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (L, M, C, R, R) float from ``AdaptiveFeaturePooler`` or (M, C, R, R) (one level).

        Returns:
            (M, K, 2R, 2R) float mask logits (K = num classes, or 1 if class-agnostic).
        """
        x = self._first_layer_fused(x, _identity, _identity)
        ff_input = x if self._ff_from_conv == 1 else None
        for k, name in enumerate(self._rest_convs, start=2):
            x = self._modules[name](x)
            if k == self._ff_from_conv:
                ff_input = x
        logits = self.predictor(self.deconv_relu(self.deconv(x)))
        if ff_input is None:
            return logits
        fg = self.fc_mask(self.fc_branch_conv2(self.fc_branch_conv1(ff_input)).flatten(1))
        if self._ff_relu:
            fg = F.relu(fg)
        return logits + fg.view(-1, 1, self._mask_side, self._mask_side)
