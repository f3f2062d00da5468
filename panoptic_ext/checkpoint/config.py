"""Config keys of the reliability features (safe checkpoint loading, deterministic mode)."""

from detectron2.config import CfgNode

from ..config_utils import add_keys


def add_reliability_config(cfg: CfgNode) -> None:
    """Add ``DETERMINISTIC`` (next to detectron2's ``SEED``) and ``CHECKPOINT.TRUST_PICKLE``."""
    add_keys(
        cfg,
        "",
        {
            # Opt-in reproducible training: needs SEED >= 0; seeds every rank, every iteration and
            # every data sample from SEED, calls torch.use_deterministic_algorithms and makes
            # resumed runs bit-identical to uninterrupted ones on CPU.
            "DETERMINISTIC": False,
        },
    )
    add_keys(
        cfg,
        "CHECKPOINT",
        {
            # Load checkpoints with full pickle (can execute code!). Off: .pth files load with
            # torch.load(weights_only=True) and .pkl files with a numpy-only unpickler.
            "TRUST_PICKLE": False,
        },
    )
