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

from ..config import build_cfg
from ..model_zoo import get_config_file
from ..modeling.panoptic_fcn.official_keys import convert_official_state_dict
from ..utils.meta_arch import OfficialCode, meta_arch_info, meta_architectures_with
from ..utils.paths import refuse_outputs_over_inputs
from .official_checkpoint import official_model_state, write_if_complete

DEFAULT_CONFIG = get_config_file("COCO-PanopticSegmentation/panoptic_fcn_R_50_1x.yaml")


def panoptic_fcn_cpu_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """Config of a PanopticFCN model on CPU without weights, for the checkpoint tools.

    Raises ``SystemExit`` naming the file when its meta-architecture takes no official Panoptic
    FCN weights (the meta-architecture table's ``official_code``).
    """
    cfg = build_cfg(config_file, ["MODEL.WEIGHTS", "", *opts], device="cpu", freeze=False)
    if meta_arch_info(cfg).official_code is not OfficialCode.PANOPTIC_FCN:
        takes = " or ".join(meta_architectures_with(official_code=OfficialCode.PANOPTIC_FCN))
        raise SystemExit(f"{config_file}: MODEL.META_ARCHITECTURE is not {takes}")
    return cfg


@functools.lru_cache(maxsize=2)
def expected_state_dict(config_file: str, opts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """State dict of our model (random init, CPU) built from ``config_file`` (cached)."""
    return build_model(panoptic_fcn_cpu_config(config_file, opts)).state_dict()


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
    return write_if_complete(
        converted,
        report,
        len(official),
        args.output,
        args.config_file,
        "PanopticFCN (official), converted",
    )


if __name__ == "__main__":
    sys.exit(main())
