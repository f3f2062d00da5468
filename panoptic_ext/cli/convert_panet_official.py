"""Convert an official PANet checkpoint (ShuLiu1993/PANet) to panoptic_ext.

    panoptic-ext-convert-panet-official panet_mask_step179999.pth out.pth \\
        [--config-file COCO-InstanceSegmentation/panet_R_50_official_2x.yaml] [KEY VALUE ...]

The input (a Detectron.pytorch ``{'model': state_dict, 'step': ..., 'optimizer': ...}`` file or
a bare state dict, any PyTorch serialisation) is read with the project's safe loader: tensors and
plain containers only, nothing executes; the other entries are ignored. Without
``--config-file`` the released model's config is chosen from the layout (a mask head: the Mask
2x config; a 2-fc box head: the 2fc Faster 1x config; else the Faster 1x config). Every official
tensor is mapped to ours (class scores reordered, background deltas and mask channel dropped;
``panoptic_ext.modeling.roi_heads.panet_official_keys``) and checked against the model built from
the config; nothing is written unless every tensor of our model is filled and every official
tensor placed. Use the converted file as ``MODEL.WEIGHTS`` with the same config.
"""

import argparse
import sys

from detectron2.modeling import build_model

from ..config import build_cfg
from ..model_zoo import get_config_file
from ..modeling.roi_heads.panet_official_keys import (
    convert_panet_official_state_dict,
    is_official_panet_state_dict,
    official_panet_variant,
)
from ..utils.paths import refuse_outputs_over_inputs
from .official_checkpoint import official_model_state, write_if_complete


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="official checkpoint (.pth)")
    parser.add_argument("output", help="converted checkpoint to write (.pth)")
    parser.add_argument(
        "--config-file", default="", help="config of the variant (default: from the layout)"
    )
    parser.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    args = parser.parse_intermixed_args(argv)
    refuse_outputs_over_inputs(
        {"checkpoint (1st argument)": args.input, "--config-file": args.config_file or None},
        {"output (2nd argument)": args.output},
    )

    official = official_model_state(args.input)
    if not is_official_panet_state_dict(official):
        names = ", ".join(sorted(official)[:3])
        raise SystemExit(
            f"{args.input}: not an official PANet checkpoint: expected parameter names under "
            f"Conv_Body., RPN., Box_Head., Box_Outs. (Mask_Head., Mask_Outs.), found {names}"
        )
    config_file = args.config_file or get_config_file(official_panet_variant(official))
    print(f"config: {config_file}")
    cfg = build_cfg(config_file, ["MODEL.WEIGHTS", "", *args.opts], device="cpu")
    converted, report = convert_panet_official_state_dict(official, build_model(cfg).state_dict())
    return write_if_complete(
        converted, report, len(official), args.output, config_file, "PANet (official), converted"
    )


if __name__ == "__main__":
    sys.exit(main())
