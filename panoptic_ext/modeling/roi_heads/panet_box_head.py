"""PANet box head: detectron2's conv/fc box head with an adaptive-feature-pooling first layer."""

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead

from ...layers.normed_linear import NormedLinear
from .per_level_first_layer import PerLevelFirstLayerMixin

__all__ = ["PANetBoxHead", "afp_num_levels"]


def afp_num_levels(cfg: CfgNode) -> int:
    """Number of pooled levels a PANet head receives: all ROI levels with AFP, else 1."""
    return len(cfg.MODEL.ROI_HEADS.IN_FEATURES) if cfg.MODEL.PANET.AFP else 1


@ROI_BOX_HEAD_REGISTRY.register()
class PANetBoxHead(PerLevelFirstLayerMixin, FastRCNNConvFCHead):
    """``FastRCNNConvFCHead`` whose first layer (``conv1`` if NUM_CONV > 0, else ``fc1``) sees
    every pooled level, followed by a max/sum fusion over levels (paper: "fc1fu.fc2").

    With one level (AFP off) it computes exactly ``FastRCNNConvFCHead``. The remaining layers keep
    detectron2's names (``fc2``, ``conv2``...), so a detectron2 checkpoint initialises them.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        conv_dims: list[int],
        fc_dims: list[int],
        conv_norm: str = "",
        num_levels: int = 1,
        shared_first_layer: bool = False,
        fuse: str = "max",
        fuse_before_first_layer: bool = False,
        fc_norm: str = "",
    ):
        """
        Args:
            input_shape, conv_dims, fc_dims, conv_norm: as ``FastRCNNConvFCHead``.
            num_levels: L, levels in the pooled input (L, M, C, R, R).
            shared_first_layer: one first layer for all levels (False: one per level, as the
                official PANet code).
            fuse: "max" (paper's choice) or "sum".
            fuse_before_first_layer: fuse the pooled levels before the first layer instead.
            fc_norm: norm after each fc, before its ReLU ("" or "GN"; official 2fc PANet: "GN").
        """
        super().__init__(input_shape, conv_dims=conv_dims, fc_dims=fc_dims, conv_norm=conv_norm)
        if fc_norm:
            self._add_fc_norms(fc_norm)
        names = list(self._modules)
        first = "conv1" if conv_dims else "fc1"
        start = names.index(first)
        end = start + (1 if conv_dims else 2)  # a detectron2 fc's ReLU is a separate module
        self._pre_names = names[:start]
        self._post_names = names[start + 1 : end]
        self._rest_names = names[end:]
        init = weight_init.c2_msra_fill if conv_dims else weight_init.c2_xavier_fill
        self._setup_first_layer(
            first, num_levels, shared_first_layer, fuse, init, fuse_before_first_layer
        )

    def _add_fc_norms(self, norm: str) -> None:
        """Replace each ``fc{k}`` by a :class:`NormedLinear` with the same weights, in place
        (same position in the module order, same parameter names plus ``fc{k}.norm.*``)."""
        for k in range(1, len(self.fcs) + 1):
            fc = getattr(self, f"fc{k}")
            normed = NormedLinear(fc.in_features, fc.out_features, norm, "MODEL.PANET.BOX_FC_NORM")
            normed.load_state_dict(fc.state_dict(), strict=False)
            setattr(self, f"fc{k}", normed)  # an existing name keeps its place in _modules
            self.fcs[k - 1] = normed

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict:
        ret = super().from_config(cfg, input_shape)
        ret.update(
            num_levels=afp_num_levels(cfg),
            shared_first_layer=cfg.MODEL.PANET.SHARED_FIRST_LAYER,
            fuse=cfg.MODEL.PANET.FUSE,
            fuse_before_first_layer=cfg.MODEL.PANET.FUSE_BEFORE_FIRST_LAYER,
            fc_norm=cfg.MODEL.PANET.BOX_FC_NORM,
        )
        return ret

    def _run(self, names: list[str], x: torch.Tensor) -> torch.Tensor:
        for name in names:
            x = self._modules[name](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (L, M, C, R, R) float from ``AdaptiveFeaturePooler`` or (M, C, R, R) (one level).

        Returns:
            (M, FC_DIM) float, or (M, CONV_DIM, R, R) if the head has no fc.
        """
        x = self._first_layer_fused(
            x, lambda t: self._run(self._pre_names, t), lambda t: self._run(self._post_names, t)
        )
        return self._run(self._rest_names, x)
