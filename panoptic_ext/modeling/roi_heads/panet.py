"""PANet ROI heads (Liu et al. 2018): adaptive feature pooling (AFP), fully-connected fusion (FF).

``PANetROIHeads`` is detectron2's ``StandardROIHeads`` with the box/mask poolers replaced by
:class:`AdaptiveFeaturePooler` (every RoI pooled from every level, one RoIAlign call per level);
``_forward_box`` / ``_forward_mask`` are inherited unchanged. The heads that consume the pooled
stack are ``PANetBoxHead`` and ``PANetMaskHead`` (selected with ``ROI_BOX_HEAD.NAME`` /
``ROI_MASK_HEAD.NAME``).

Choices (paper vs official code; each is a config key):

* first layer per level (``SHARED_FIRST_LAYER: False``, default): the paper says each level
  passes "one parameter layer independently" and the official code has one fc1/conv1 per level
  (box head 52.4M params instead of 13.9M for R50-FPN, same FLOPs); ``True`` shares one layer
  across levels (no extra params, as a public detectron2 port does).
* fusion: element-wise max (paper's choice; sum is equivalent in its Table 4), after the first
  layer; ``FUSE_BEFORE_FIRST_LAYER`` fuses the pooled features instead (Table 4 "fu.fc1fc2":
  35.7 vs 36.3 mask AP) and costs only the extra RoIAligns.
* FF branch from conv3 with no ReLU on the fc output (paper; official code adds a ReLU).
* The official code pools with sampling ratio 2 (detectron2 default 0 = adaptive); the PANet
  configs set ``POOLER_SAMPLING_RATIO: 2``, which also bounds the cost of pooling big RoIs from P2.
"""

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads

from ...utils.config_keys import add_keys
from .afp_pooler import AdaptiveFeaturePooler
from .panet_box_head import PANetBoxHead
from .panet_mask_head import PANetMaskHead
from .per_level_first_layer import PerLevelFirstLayerMixin

__all__ = ["PANetBoxHead", "PANetMaskHead", "PANetROIHeads", "add_panet_config"]


def add_panet_config(cfg: CfgNode) -> None:
    """Add the ``MODEL.PANET`` keys (read by PANetROIHeads, PANetBoxHead and PANetMaskHead)."""
    add_keys(
        cfg,
        "MODEL.PANET",
        {
            # Adaptive feature pooling: pool each RoI from every ROI_HEADS.IN_FEATURES level.
            "AFP": True,
            # How the levels are merged after the first layer: "max" (paper) or "sum".
            "FUSE": "max",
            # One first layer (fc1/conv1, mask_fcn1) for all levels instead of one per level.
            "SHARED_FIRST_LAYER": False,
            # Fuse pooled levels before the first layer (Table 4 "fu.fc1fc2": cheaper, -0.6 AP).
            "FUSE_BEFORE_FIRST_LAYER": False,
            # Norm after each fc of PANetBoxHead ("" or "GN"): official PANet's 2fc box head
            # (roi_2mlp_head_gn_panet) is fc -> GN -> ReLU for fc1 (per level) and fc2.
            "BOX_FC_NORM": "",
            # Fully-connected fusion branch in PANetMaskHead.
            "FF": True,
            # 1-based mask conv whose output feeds the FF branch (paper's best: conv3).
            "FF_FROM_CONV": 3,
            # ReLU on the FF fc output (official code) instead of none (paper).
            "FF_RELU": False,
            # Pool each box at (x1, y1, x2 - 1, y2 - 1), as Detectron (the official code) does:
            # its boxes are pixel indices (x2 = last pixel), detectron2's continuous (x2 = one
            # past it). With it, official weights see the features they were trained on; box
            # decoding, clipping and NMS on detectron2's continuous boxes then equal Detectron's
            # "+1" arithmetic (widths x2 - x1 + 1), so the detections are the official ones.
            "POOL_PIXEL_INDEX_BOXES": False,
        },
    )


def _check_afp_head(head: object, key: str, name: str) -> None:
    """AFP feeds (L, M, C, R, R) stacks: only heads with a per-level first layer accept them."""
    if not isinstance(head, PerLevelFirstLayerMixin):
        raise ValueError(
            f"MODEL.PANET.AFP needs a PANet head (PANetBoxHead / PANetMaskHead) but {key} is "
            f"{name!r}; set MODEL.PANET.AFP False to use it with PANetROIHeads"
        )


def _check_pixel_index_pooling(cfg: CfgNode) -> None:
    """Pixel-index pooling is a setting of the adaptive feature poolers."""
    if cfg.MODEL.PANET.POOL_PIXEL_INDEX_BOXES and not cfg.MODEL.PANET.AFP:
        raise ValueError(
            "MODEL.PANET.POOL_PIXEL_INDEX_BOXES needs MODEL.PANET.AFP True (it is applied by the "
            "adaptive feature poolers)"
        )


@ROI_HEADS_REGISTRY.register()
class PANetROIHeads(StandardROIHeads):
    """``StandardROIHeads`` with adaptive feature pooling for the box and mask branches.

    With ``MODEL.PANET.AFP`` the poolers return ``(L, M, C, R, R)`` (L = number of
    ``ROI_HEADS.IN_FEATURES``); otherwise detectron2's level-assigning poolers are kept, so
    e.g. FF alone is ``PANetROIHeads`` + ``PANetMaskHead`` with ``AFP: False``. Images with zero
    proposals give M = 0 and flow through unchanged.
    """

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict:
        ret = super()._init_box_head(cfg, input_shape)
        _check_pixel_index_pooling(cfg)
        if cfg.MODEL.PANET.AFP:
            _check_afp_head(ret["box_head"], "MODEL.ROI_BOX_HEAD.NAME", cfg.MODEL.ROI_BOX_HEAD.NAME)
            ret["box_pooler"] = AdaptiveFeaturePooler.from_roi_pooler(
                ret["box_pooler"], cfg.MODEL.PANET.POOL_PIXEL_INDEX_BOXES
            )
        return ret

    @classmethod
    def _init_mask_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict:
        afp = cfg.MODEL.MASK_ON and cfg.MODEL.PANET.AFP
        if afp and not cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE:
            raise ValueError(
                "MODEL.PANET.AFP needs a mask pooler: set MODEL.ROI_MASK_HEAD.POOLER_TYPE "
                "(e.g. 'ROIAlignV2'), got ''"
            )
        ret = super()._init_mask_head(cfg, input_shape)
        if afp:
            _check_afp_head(
                ret["mask_head"], "MODEL.ROI_MASK_HEAD.NAME", cfg.MODEL.ROI_MASK_HEAD.NAME
            )
            ret["mask_pooler"] = AdaptiveFeaturePooler.from_roi_pooler(
                ret["mask_pooler"], cfg.MODEL.PANET.POOL_PIXEL_INDEX_BOXES
            )
        return ret
