"""``add_keys``: the one helper every per-component config adder uses."""

from typing import Any

from detectron2.config import CfgNode


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
