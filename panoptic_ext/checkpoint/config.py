"""Config keys of checkpoint loading."""

from detectron2.config import CfgNode

from ..utils.config_keys import add_keys


def add_checkpoint_config(cfg: CfgNode) -> None:
    """Add ``CHECKPOINT.TRUST_PICKLE``."""
    add_keys(
        cfg,
        "CHECKPOINT",
        {
            # Load checkpoints with full pickle (can execute code!). Off: .pth files load with
            # torch.load(weights_only=True) and .pkl files with a numpy-only unpickler.
            "TRUST_PICKLE": False,
        },
    )
