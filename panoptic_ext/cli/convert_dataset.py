"""Convert datasets to and from COCO-panoptic.

instance JSON + semantic PNGs -> COCO panoptic::

    python tools/convert_dataset.py to-panoptic --instances-json instances_train.json \\
        --semantic-root semantic_train --stuff-categories stuff.json \\
        --out-json panoptic_train.json --out-png-root panoptic_train --overlap area

``stuff.json`` is a list of ``{"id": 40, "name": "sky"}``; semantic PNGs are single-channel,
named like the images with ``.png``, and hold stuff category ids (0 and 255 = void, see
``--ignore-values``). ``--overlap`` decides what happens where instance masks overlap:
``fail`` (default: stop and name the annotations), ``skip`` (those pixels become void) or
``area`` (the smallest instance wins).

COCO panoptic -> detectron2 "separated" (instances JSON + things-as-one semantic PNGs)::

    python tools/convert_dataset.py to-separated --panoptic-json panoptic_val2017.json \\
        --panoptic-root panoptic_val2017 --out-semantic-root panoptic_stuff_val2017 \\
        --out-instances-json instances_from_panoptic_val2017.json

An output path that is one of the inputs (the same file or folder) is refused before anything
is written. The semantic PNGs map things to 0, stuff to 1..S in category order, void to 255 (what
``register_coco_panoptic_separated`` and ``INPUT.SEM_SEG_FORMAT things_as_one`` expect).
"""

import argparse
import sys

from ..data.converters import (
    DEFAULT_IGNORE_VALUES,
    OVERLAP_POLICIES,
    instances_semantic_to_panoptic,
    panoptic_to_separated,
)
from ..data.json_file import read_json
from ..utils.paths import refuse_outputs_over_inputs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("to-panoptic", help="instances JSON + semantic PNGs -> COCO panoptic")
    p.add_argument("--instances-json", required=True)
    p.add_argument("--semantic-root", required=True)
    p.add_argument("--stuff-categories", required=True, help="JSON list of {id, name}")
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-png-root", required=True)
    p.add_argument("--overlap", choices=OVERLAP_POLICIES, default="fail")
    p.add_argument("--ignore-values", type=int, nargs="*", default=list(DEFAULT_IGNORE_VALUES))
    s = sub.add_parser("to-separated", help="COCO panoptic -> instances JSON + semantic PNGs")
    s.add_argument("--panoptic-json", required=True)
    s.add_argument("--panoptic-root", required=True)
    s.add_argument("--out-instances-json", required=True)
    s.add_argument("--out-semantic-root", required=True)
    s.add_argument("--ignore-value", type=int, default=255)
    return parser.parse_args(argv)


# Each subcommand's path options: (inputs, outputs), as typed on the command line.
_PATH_OPTIONS = {
    "to-panoptic": (
        ("--instances-json", "--semantic-root", "--stuff-categories"),
        ("--out-json", "--out-png-root"),
    ),
    "to-separated": (
        ("--panoptic-json", "--panoptic-root"),
        ("--out-instances-json", "--out-semantic-root"),
    ),
}


def _paths(args: argparse.Namespace, options: tuple[str, ...]) -> dict[str, str]:
    return {option: getattr(args, option[2:].replace("-", "_")) for option in options}


def main(argv=None) -> int:
    args = parse_args(argv)
    inputs, outputs = _PATH_OPTIONS[args.command]
    refuse_outputs_over_inputs(_paths(args, inputs), _paths(args, outputs))
    if args.command == "to-panoptic":
        stuff = read_json(args.stuff_categories, "stuff categories json")
        report = instances_semantic_to_panoptic(
            args.instances_json,
            args.semantic_root,
            stuff,
            args.out_json,
            args.out_png_root,
            overlap=args.overlap,
            ignore_values=args.ignore_values,
        )
    else:
        report = panoptic_to_separated(
            args.panoptic_json,
            args.panoptic_root,
            args.out_instances_json,
            args.out_semantic_root,
            args.ignore_value,
        )
    print(", ".join(f"{k}: {v}" for k, v in sorted(report.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
