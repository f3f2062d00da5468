"""Config keys of the ROI heads' poolers that panoptic_ext adds (every model with ROI heads)."""

from detectron2.config import CfgNode

from ...utils.config_keys import add_keys

__all__ = ["add_roi_pooler_config"]


def add_roi_pooler_config(cfg: CfgNode) -> None:
    """Add ``MODEL.ROI_HEADS.SPARSE_ROI_ALIGN_GRAD`` (read by the Trainer when it builds a model;
    formerly ``SOLVER.SPARSE_ROI_ALIGN_GRAD``, still accepted with a deprecation warning)."""
    add_keys(
        cfg,
        # The switch acts on every RoIAlign of the model's ROI heads: the box and mask poolers of
        # ROI_BOX_HEAD and ROI_MASK_HEAD (whose POOLER_SAMPLING_RATIO it depends on) and PANet's
        # adaptive pooler alike, so it sits on their common node, MODEL.ROI_HEADS, as one added
        # key (detectron2's own keys there are left as they are). It is not a solver setting.
        "MODEL.ROI_HEADS",
        {
            # Train on CPU with the RoIAlign backward of the poolers (fixed
            # POOLER_SAMPLING_RATIO > 0 only) as a sparse matrix product: same gradient up to
            # float rounding; torchvision's CPU backward scatters on one thread.
            "SPARSE_ROI_ALIGN_GRAD": True,
        },
    )
