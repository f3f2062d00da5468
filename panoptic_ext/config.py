"""One entry point that adds every panoptic_ext config key to a detectron2 config, and one
builder that every script uses to turn a yaml file plus overrides into a config.

Each component owns one small adder next to its code; this module only calls them. Adders only
*add* keys (never replace one of detectron2's nodes), so the call is safe on any detectron2 cfg.
"""

import logging
from collections.abc import Sequence

import torch
from detectron2.config import CfgNode, get_cfg

from .checkpoint.config import add_checkpoint_config
from .data.config import add_panoptic_data_config
from .evaluation.config import add_evaluation_config
from .modeling.backbone.pafpn import add_pafpn_config
from .modeling.panoptic_fcn.config import add_panoptic_fcn_config
from .modeling.roi_heads.config import add_roi_pooler_config
from .modeling.roi_heads.panet import add_panet_config
from .modeling.semantic_fpn import add_semantic_fpn_config
from .solver.config import add_solver_config
from .utils.config_keys import accept_renamed_keys, upgrade_renamed_keys
from .utils.determinism import add_determinism_config
from .utils.yaml_config import merge_config_file

__all__ = ["RENAMED_KEYS", "add_panoptic_ext_config", "build_cfg", "check_overrides"]

logger = logging.getLogger(__name__)

_ADDERS = (
    add_panoptic_data_config,
    add_evaluation_config,
    add_determinism_config,
    add_checkpoint_config,
    add_solver_config,
    add_roi_pooler_config,
    add_semantic_fpn_config,
    add_pafpn_config,
    add_panet_config,
    add_panoptic_fcn_config,
)


# Old name -> new name of every renamed key. The old name still merges from yaml files and
# overrides; build_cfg moves its value to the new name with a deprecation warning.
RENAMED_KEYS: dict[str, str] = {
    "SOLVER.SPARSE_ROI_ALIGN_GRAD": "MODEL.ROI_HEADS.SPARSE_ROI_ALIGN_GRAD",
}


def add_panoptic_ext_config(cfg: CfgNode) -> CfgNode:
    """Add all panoptic_ext keys to ``cfg`` (in place) and return it.

    Calling it twice is harmless: keys that already exist keep their current values. The old
    names of :data:`RENAMED_KEYS` are added too (value None), so that configs written with them
    still merge.
    """
    for adder in _ADDERS:
        adder(cfg)
    accept_renamed_keys(cfg, RENAMED_KEYS)
    return cfg


def check_overrides(opts: Sequence) -> None:
    """Refuse overrides that are not ``KEY VALUE`` pairs, saying what is wrong.

    argparse puts everything after the first override into ``opts``, so an option written after
    the overrides (``... SOLVER.MAX_ITER 10 --resume``) arrives here instead of taking effect.
    """
    options = [str(o) for o in opts if str(o).startswith("--")]
    if options:
        raise ValueError(
            f"command-line override: {options[0]!r} comes after the KEY VALUE overrides, where "
            "it is read as a config key; put options such as --resume or --eval-only before "
            f"the overrides (got {' '.join(map(str, opts))})"
        )
    if len(opts) % 2:
        raise ValueError(
            f"command-line override: {opts[-1]!r} has no value; overrides are KEY VALUE pairs "
            f"(got {' '.join(map(str, opts))})"
        )


def build_cfg(
    config_file: str | None,
    opts: Sequence = (),
    device: str | None = None,
    freeze: bool = True,
) -> CfgNode:
    """detectron2's defaults + our keys + ``config_file`` (with its ``_BASE_`` chain) + ``opts``.

    Args:
        config_file: a yaml path (see :func:`panoptic_ext.model_zoo.get_config_file` for the
            configs shipped in the package); None for the defaults only.
        opts: ``KEY VALUE`` overrides, as on the command line.
        device: overrides ``MODEL.DEVICE`` when given. Without CUDA a "cuda" device falls back to
            "cpu" with a warning, so every config runs anywhere.
        freeze: return a frozen config (what the trainer expects).

    A key of :data:`RENAMED_KEYS` given under its old name sets the new name, with a deprecation
    warning naming both; the returned config holds only the new name.

    The yaml chain is read as plain YAML only (:func:`~panoptic_ext.utils.yaml_config.
    merge_config_file`): a file with a ``!!python/...`` tag is refused, never executed.

    Raises:
        KeyError: naming the unknown key and the file (or "command-line override") it came from.
        UnsafeConfigError: a file of the chain holds a YAML tag (file, line and tag named).
        ValueError: an unreadable file of the chain, or overrides that are not KEY VALUE pairs
            (e.g. an option such as ``--resume`` written after them).
    """
    cfg = add_panoptic_ext_config(get_cfg())
    if config_file:
        try:
            merge_config_file(cfg, config_file)
        except KeyError as e:  # detectron2 names the key; add the file it came from
            raise KeyError(f"{config_file} (or its _BASE_ chain): {e.args[0]}") from e
    opts = list(opts)
    check_overrides(opts)
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as e:  # yacs asserts on unknown override keys
        raise KeyError(f"command-line override: {e}") from e
    upgrade_renamed_keys(cfg, RENAMED_KEYS)
    if device is not None:
        cfg.MODEL.DEVICE = device
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            "MODEL.DEVICE=%s but CUDA is not available: running on cpu", cfg.MODEL.DEVICE
        )
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg
