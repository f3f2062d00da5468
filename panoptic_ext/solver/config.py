"""Config keys of the learning-rate schedules panoptic_ext adds to detectron2's."""

from detectron2.config import CfgNode

from ..utils.config_keys import add_keys


def add_solver_config(cfg: CfgNode) -> None:
    """Add ``SOLVER.POLY_LR_POWER`` and ``SOLVER.POLY_LR_CONSTANT_ENDING``."""
    add_keys(
        cfg,
        "SOLVER",
        {
            # Exponent p of LR_SCHEDULER_NAME "WarmupPolyLR": lr = base_lr * (1 - iter / MAX_ITER)^p
            # (0.9 in Panoptic FCN and DeepLab).
            "POLY_LR_POWER": 0.9,
            # Floor of the poly factor after warmup, as a fraction of BASE_LR (0: decay to zero).
            "POLY_LR_CONSTANT_ENDING": 0.0,
        },
    )
