"""Check a COCO-panoptic dataset before training and print every problem with its file and id.

    python tools/validate_dataset.py --json datasets/coco/annotations/panoptic_val2017.json \\
        --panoptic-root datasets/coco/panoptic_val2017 --image-root datasets/coco/val2017
    python tools/validate_dataset.py --dataset synthetic_panoptic_val \\
        --config-file configs/quick_schedules/panoptic_fpn_synthetic.yaml

``--dataset`` takes the three paths from a registered dataset's metadata. With
``--config-file`` (plus KEY VALUE overrides) the model's class counts are checked against the
categories too. Exit status: 0 when there is no error (warnings allowed), 1 otherwise. The
problem codes are listed in ``panoptic_ext/data/validation.py``.
"""

import argparse
import sys
from collections import Counter

from .. import data as _registers_datasets  # noqa: F401
from ..config import build_cfg
from ..data.json_file import read_json
from ..data.validation import (
    ERROR,
    check_config_class_counts,
    validate_panoptic_dataset,
)
from ..engine.launch import register_config_datasets


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", help="COCO-panoptic JSON")
    parser.add_argument("--panoptic-root", help="folder of the panoptic PNGs")
    parser.add_argument("--image-root", help="folder of the images (omit to skip image checks)")
    parser.add_argument("--dataset", help="take json/roots from this registered dataset")
    parser.add_argument("--config-file", help="model config whose class counts are checked")
    parser.add_argument("--no-images", action="store_true", help="do not open the images")
    parser.add_argument("--workers", type=int, default=4, help="threads reading files")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    json_file, panoptic_root, image_root = args.json, args.panoptic_root, args.image_root
    image_files = None
    # The config's datasets first: --dataset names the synthetic set of ITS size and count, or
    # one of its DATASETS.REGISTER_PANOPTIC entries.
    cfg = build_cfg(args.config_file, args.opts, device="cpu") if args.config_file else None
    if cfg is not None:
        register_config_datasets(cfg)
    if args.dataset:
        from detectron2.data import DatasetCatalog, MetadataCatalog

        # Generated datasets write their files on first use; the dicts also give each image's
        # real path (Cityscapes keeps images in per-city folders).
        image_files = {r["image_id"]: r["file_name"] for r in DatasetCatalog.get(args.dataset)}
        meta = MetadataCatalog.get(args.dataset)
        json_file = json_file or meta.panoptic_json
        panoptic_root = panoptic_root or meta.panoptic_root
        image_root = image_root or meta.get("image_root")
    if not json_file or not panoptic_root:
        print("need --json and --panoptic-root, or --dataset", file=sys.stderr)
        return 2
    problems = validate_panoptic_dataset(
        json_file,
        None if args.no_images else image_root,
        panoptic_root,
        check_images=not args.no_images,
        workers=args.workers,
        image_files=image_files,
    )
    if cfg is not None:
        categories = read_json(json_file, "panoptic json").get("categories", [])
        problems += check_config_class_counts(cfg, categories)
    for p in problems:
        print(p)
    counts = Counter(p.level for p in problems)
    print(f"{json_file}: {counts[ERROR]} errors, {counts['warning']} warnings")
    return 1 if counts[ERROR] else 0


if __name__ == "__main__":
    sys.exit(main())
