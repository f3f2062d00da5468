"""The configs shipped inside the package, found like ``detectron2.model_zoo`` finds its own.

    from panoptic_ext import model_zoo
    path = model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fcn_R_50_3x.yaml")
    cfg = model_zoo.get_config("quick_schedules/semantic_fpn_synthetic.yaml", ["SEED", 1])

The yaml files are package data (``panoptic_ext/configs``), so they are there in an installed wheel
as in a checkout (whose top-level ``configs`` links to the same folder); their ``_BASE_`` chains
are relative paths and resolve in both.
"""

import os
from collections.abc import Sequence

from detectron2.config import CfgNode

from .config import build_cfg

__all__ = ["CONFIG_ROOT", "get_config", "get_config_file", "list_configs"]

CONFIG_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def list_configs() -> list[str]:
    """Every shipped config, relative to :data:`CONFIG_ROOT` (``Base-*`` files included), sorted."""
    found = []
    for folder, _, files in os.walk(CONFIG_ROOT):
        rel = os.path.relpath(folder, CONFIG_ROOT)
        found += [os.path.normpath(os.path.join(rel, f)) for f in files if f.endswith(".yaml")]
    return sorted(found)


def get_config_file(config_path: str) -> str:
    """Absolute path of a shipped config, given relative to :data:`CONFIG_ROOT`.

    Raises:
        FileNotFoundError: naming the path and the shipped configs of the same folder.
    """
    path = os.path.normpath(os.path.join(CONFIG_ROOT, config_path))
    if not path.startswith(CONFIG_ROOT + os.sep) or not os.path.isfile(path):
        folder = os.path.dirname(config_path)
        near = [c for c in list_configs() if os.path.dirname(c) == folder] or list_configs()
        raise FileNotFoundError(
            f"{config_path!r} is not a config shipped with panoptic_ext (looked in {CONFIG_ROOT}); "
            f"available: {', '.join(near)}"
        )
    return path


def get_config(config_path: str, opts: Sequence = (), device: str | None = None) -> CfgNode:
    """A mutable config built from a shipped config plus ``KEY VALUE`` overrides.

    No trained weights are hosted: ``MODEL.WEIGHTS`` stays what the yaml says (ImageNet
    initialisation for the paper configs, none for the synthetic quick schedules).
    """
    return build_cfg(get_config_file(config_path), opts, device=device, freeze=False)
