"""Report which keys of a detectron2 checkpoint initialise a panoptic_ext model and which are new.

    python tools/d2_checkpoint_report.py \\
        --config-file configs/COCO-InstanceSegmentation/panet_R_50_1x.yaml \\
        --weights model_final_f10217.pkl          # a detectron2 Mask R-CNN R50-FPN checkpoint

Without ``--weights`` the source is detectron2's own model-zoo architecture
(``--source-config``, default Mask R-CNN R50-FPN 1x) built with random init, which has exactly
the keys and shapes of the published checkpoint; no download is needed. Exit status 1 if any key
has a mismatched shape (``--allow-mismatch`` to accept, e.g. another number of classes).
"""

from __future__ import annotations

import argparse
import sys

from detectron2 import model_zoo
from detectron2.modeling import build_model

from ..checkpoint.load_report import load_d2_state_dict, read_d2_checkpoint
from ..config import build_cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="target panoptic_ext config")
    parser.add_argument("--weights", default="", help="detectron2 checkpoint (.pth / .pkl)")
    parser.add_argument(
        "--source-config",
        default="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
        help="detectron2 model-zoo config whose random-init state dict is the source "
        "when --weights is not given",
    )
    parser.add_argument("--allow-mismatch", action="store_true")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the target")
    args = parser.parse_args(argv)

    cfg = build_cfg(args.config_file, [*args.opts, "MODEL.WEIGHTS", ""], device="cpu")
    model = build_model(cfg)

    if args.weights:
        state = read_d2_checkpoint(args.weights)
        source = args.weights
    else:
        src_cfg = build_cfg(model_zoo.get_config_file(args.source_config), device="cpu")
        state = build_model(src_cfg).state_dict()
        source = f"detectron2 {args.source_config} (random init)"

    report = load_d2_state_dict(model, state)
    print(f"source: {source}\ntarget: {args.config_file}")
    print(report.format())
    return 1 if report.shape_mismatch and not args.allow_mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
