"""Look at a dataset and at what a model trains on (``panoptic-ext-browse-dataset``).

    panoptic-ext-browse-dataset --config-file configs/quick_schedules/panoptic_fcn_synthetic.yaml \\
        --num-images 6 --output browse/                  # one PNG per image
    panoptic-ext-browse-dataset --config-file CFG --dataset coco_2017_val_panoptic_ext \\
        --num-images 8 --contact-sheet sheet.png        # one PNG, a row per image
    ... KEY VALUE ...                                   # config overrides, as for training

For each image: the ground-truth panoptic overlay, then the targets of the config's model family
after its training augmentations: the semantic target (things-as-one or all classes), the
instances (masks, boxes, classes) and, for Panoptic FCN, the center heatmaps and stuff maps
(:mod:`panoptic_ext.vis.browse`). Colours and names come from the dataset metadata.
"""

import argparse
import os
import sys

import cv2
from detectron2.data import DatasetCatalog

from ..engine.launch import build_cfg_with_datasets
from ..vis.browse import DatasetBrowser, contact_sheet, panel_row


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="model config (family, inputs)")
    parser.add_argument("--dataset", help="registered dataset (default: DATASETS.TRAIN[0])")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--first", type=int, default=0, help="index of the first image")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--output", help="folder: one PNG per image")
    out.add_argument("--contact-sheet", help="one PNG with a row per image")
    parser.add_argument("--height", type=int, default=256, help="panel height in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentations")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.num_images < 1 or args.first < 0 or args.height < 16:
        print("error: need --num-images >= 1, --first >= 0, --height >= 16", file=sys.stderr)
        return 2
    cfg = build_cfg_with_datasets(args.config_file, args.opts, device="cpu")
    name = args.dataset or cfg.DATASETS.TRAIN[0]
    if name not in DatasetCatalog.list():
        print(f"error: dataset {name!r} is not registered", file=sys.stderr)
        return 2
    records = DatasetCatalog.get(name)[args.first : args.first + args.num_images]
    if not records:
        print(f"error: {name} has no image at index {args.first}", file=sys.stderr)
        return 2
    browser = DatasetBrowser(cfg, name, seed=args.seed)
    rows = []
    for record in records:
        row = panel_row(browser.panels(record), args.height)
        if args.output:
            os.makedirs(args.output, exist_ok=True)
            stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
            path = os.path.join(args.output, f"{stem}.png")
            cv2.imwrite(path, row[:, :, ::-1])
            print(path)
        else:
            rows.append(row)
    if rows:
        os.makedirs(os.path.dirname(os.path.abspath(args.contact_sheet)), exist_ok=True)
        cv2.imwrite(args.contact_sheet, contact_sheet(rows)[:, :, ::-1])
        print(args.contact_sheet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
