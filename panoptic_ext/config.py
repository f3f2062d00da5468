"""One entry point that adds every panoptic_ext config key to a detectron2 config.

Each component owns one small adder next to its code; this module only calls them. Adders only
*add* keys (never replace one of detectron2's nodes), so the call is safe on any detectron2 cfg.
"""

from detectron2.config import CfgNode

from .checkpoint.config import add_reliability_config
from .data.config import add_panoptic_data_config
from .engine.config import add_engine_config
from .evaluation.config import add_evaluation_config
from .modeling.backbone.pafpn import add_pafpn_config
from .modeling.panoptic_fcn.config import add_panoptic_fcn_config
from .modeling.roi_heads.panet import add_panet_config
from .modeling.semantic_fpn import add_semantic_fpn_config
from .solver.config import add_solver_config

__all__ = ["add_panoptic_ext_config"]

_ADDERS = (
    add_panoptic_data_config,
    add_engine_config,
    add_evaluation_config,
    add_reliability_config,
    add_solver_config,
    add_semantic_fpn_config,
    add_pafpn_config,
    add_panet_config,
    add_panoptic_fcn_config,
)


def add_panoptic_ext_config(cfg: CfgNode) -> CfgNode:
    """Add all panoptic_ext keys to ``cfg`` (in place) and return it.

    Calling it twice is harmless: keys that already exist keep their current values.
    """
    for adder in _ADDERS:
        adder(cfg)
    return cfg
