"""``add_keys``: the one helper every per-component config adder uses; renamed keys kept working."""

import logging
from collections.abc import Mapping
from typing import Any

from detectron2.config import CfgNode

__all__ = ["accept_renamed_keys", "add_keys", "config_value", "upgrade_renamed_keys"]

logger = logging.getLogger(__name__)


def add_keys(node: CfgNode, path: str, values: dict[str, Any]) -> None:
    """Create ``node.<path>`` (dotted) if missing and set every key of ``values`` that is absent.

    Existing keys are left alone so the adders are idempotent and never overwrite a user's or
    detectron2's value.
    """
    for part in path.split(".") if path else []:
        if part not in node:
            node[part] = CfgNode()
        node = node[part]
    for key, value in values.items():
        if key not in node:
            node[key] = CfgNode(value) if isinstance(value, dict) else value


def config_value(cfg: CfgNode, key: str) -> Any:
    """The value of a dotted key such as ``"MODEL.ROI_HEADS.NUM_CLASSES"``."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _parent(cfg: CfgNode, key: str) -> tuple[CfgNode, str]:
    """The node holding the dotted ``key`` and the key's last part."""
    *path, last = key.split(".")
    return config_value(cfg, ".".join(path)) if path else cfg, last


def accept_renamed_keys(cfg: CfgNode, renamed: Mapping[str, str]) -> None:
    """Add every old name of ``renamed`` (old -> new dotted keys) with the value None, so that
    yaml files and overrides written for the old name still merge (then
    :func:`upgrade_renamed_keys` moves their value to the new name)."""
    for old in renamed:
        path, _, last = old.rpartition(".")
        add_keys(cfg, path, {last: None})


def upgrade_renamed_keys(cfg: CfgNode, renamed: Mapping[str, str]) -> list[str]:
    """Move the value of every old name that was set (not None) to its new name, with a
    deprecation warning naming both, and remove the old names from ``cfg`` (not frozen).

    detectron2 renames its keys the same way for old config versions
    (``detectron2.config.compat``); here each key is renamed on its own, so a file keeps
    working without a ``VERSION`` change.

    Returns:
        the warnings logged, one per old name that was set.
    """
    warnings = []
    for old, new in renamed.items():
        parent, last = _parent(cfg, old)
        if last not in parent:
            continue
        value = parent.pop(last)
        if value is None:
            continue
        new_parent, new_last = _parent(cfg, new)
        new_parent[new_last] = value
        warnings.append(
            f"config key {old} is deprecated and will be removed: it is now {new} "
            f"(set to {value!r} from {old}); rename it in your config"
        )
        logger.warning(warnings[-1])
    return warnings
