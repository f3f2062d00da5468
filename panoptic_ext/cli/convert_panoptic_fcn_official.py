"""Convert an official Panoptic FCN checkpoint (dvlab-research/PanopticFCN) to panoptic_ext.

    python tools/convert_panoptic_fcn_official.py panoptic_fcn_r50_1x.pth out.pth \\
        [--config-file configs/COCO-PanopticSegmentation/panoptic_fcn_R_50_1x.yaml] [KEY VALUE ...]

The input is read with ``torch.load(weights_only=True)`` (tensors and plain containers only);
optimizer / scheduler / iteration entries are ignored. Every official parameter name is mapped
to ours and checked against the model built from ``--config-file`` (use the config of the same
variant, e.g. a "Star" model needs FEATURE_ENCODER.DEFORM True and CONVS_DIM 256). A matched /
unmatched report is printed; nothing is written when a parameter of our model would stay
uninitialised, a shape differs, or an official parameter has no place in our model.

Converted weights keep the official input convention: BGR images with the RGB-ordered
PIXEL_MEAN [123.675, 116.28, 103.53] and PIXEL_STD 1, as in the COCO configs.
"""

import argparse
import functools
import sys
from collections.abc import Sequence

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from ..checkpoint.checkpointer import atomic_write
from ..checkpoint.safe_load import load_checkpoint_file
from ..config import build_cfg
from ..model_zoo import get_config_file
from ..modeling.panoptic_fcn.official_keys import convert_official_state_dict
from ..utils.paths import refuse_outputs_over_inputs

DEFAULT_CONFIG = get_config_file("COCO-PanopticSegmentation/panoptic_fcn_R_50_1x.yaml")


def panoptic_fcn_cpu_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """Config of a PanopticFCN model on CPU without weights, for the checkpoint tools.

    Raises ``SystemExit`` naming the file when its meta-architecture is not PanopticFCN.
    """
    cfg = build_cfg(config_file, ["MODEL.WEIGHTS", "", *opts], device="cpu", freeze=False)
    if cfg.MODEL.META_ARCHITECTURE != "PanopticFCN":
        raise SystemExit(f"{config_file}: MODEL.META_ARCHITECTURE is not PanopticFCN")
    return cfg


@functools.lru_cache(maxsize=2)
def expected_state_dict(config_file: str, opts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """State dict of our model (random init, CPU) built from ``config_file`` (cached)."""
    return build_model(panoptic_fcn_cpu_config(config_file, opts)).state_dict()


def official_model_state(path: str) -> dict[str, torch.Tensor]:
    """The ``model`` state dict of an official checkpoint file (other entries ignored)."""
    ckpt = load_checkpoint_file(path)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise SystemExit(f"{path}: no 'model' state dict found (top-level type {type(ckpt)})")
    ignored = sorted(k for k in ckpt if k != "model") if "model" in ckpt else []
    if ignored:
        print(f"ignored top-level entries: {ignored}")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise SystemExit(f"{path}: entries that are not tensors: {bad[:5]}")
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="official checkpoint (.pth)")
    parser.add_argument("output", help="converted checkpoint to write (.pth)")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="config of the variant")
    # "*" + intermixed parsing: --config-file may come after the two paths, as documented
    # (REMAINDER would swallow it as an override).
    parser.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    args = parser.parse_intermixed_args(argv)
    refuse_outputs_over_inputs(
        {"checkpoint (1st argument)": args.input, "--config-file": args.config_file},
        {"output (2nd argument)": args.output},
    )

    official = official_model_state(args.input)
    converted, report = convert_official_state_dict(
        official, expected_state_dict(args.config_file, tuple(args.opts))
    )
    print(f"matched:   {len(report['matched'])} / {len(official)} official entries")
    for key in ("unmatched", "shape_mismatch", "missing"):
        print(f"{key + ':':<10} {len(report[key])}")
        for name in report[key]:
            print(f"    {name}")
    if report["unmatched"] or report["shape_mismatch"] or report["missing"]:
        print(f"NOT writing {args.output}: the checkpoint does not fit {args.config_file}")
        return 1
    ckpt = {"model": converted, "__author__": "PanopticFCN (official), converted"}
    atomic_write(args.output, lambda f: torch.save(ckpt, f))
    print(f"wrote {args.output} ({len(converted)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
