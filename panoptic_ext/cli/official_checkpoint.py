"""What the converters of official checkpoints share: reading the file safely, printing the
matched / unmatched report, and writing only a checkpoint that fills every tensor."""

import torch

from ..checkpoint.checkpointer import atomic_write
from ..checkpoint.safe_load import load_checkpoint_file

__all__ = ["official_model_state", "write_if_complete"]


def official_model_state(path: str) -> dict[str, torch.Tensor]:
    """The ``model`` state dict of an official checkpoint file (other entries ignored).

    Read with the project's safe loader (tensors and plain containers only; nothing executes).
    A ``{'model': state_dict, ...}`` container and a bare state dict are accepted; anything else
    raises ``SystemExit`` naming the file and what was expected.
    """
    ckpt = load_checkpoint_file(path)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise SystemExit(
            f"{path}: expected a state dict or {{'model': state_dict, ...}}, "
            f"found a {type(ckpt).__name__}"
        )
    ignored = sorted(str(k) for k in ckpt if k != "model") if "model" in ckpt else []
    if ignored:
        print(f"ignored top-level entries: {ignored}")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise SystemExit(f"{path}: expected tensors in the state dict; not tensors: {bad[:5]}")
    return state


def write_if_complete(
    converted: dict[str, torch.Tensor],
    report: dict[str, list[str]],
    num_official: int,
    output: str,
    config_file: str,
    author: str,
) -> int:
    """Print the report; write ``{"model": converted}`` to ``output`` only when every official
    tensor found its place and every tensor of ours was filled. Returns the exit status."""
    print(f"matched:   {len(report['matched'])} / {num_official} official entries")
    for key in ("unmatched", "shape_mismatch", "missing"):
        print(f"{key + ':':<10} {len(report[key])}")
        for name in report[key]:
            print(f"    {name}")
    if report["unmatched"] or report["shape_mismatch"] or report["missing"]:
        print(f"NOT writing {output}: the checkpoint does not fit {config_file}")
        return 1
    ckpt = {"model": converted, "__author__": author}
    atomic_write(output, lambda f: torch.save(ckpt, f))
    print(f"wrote {output} ({len(converted)} tensors)")
    return 0
