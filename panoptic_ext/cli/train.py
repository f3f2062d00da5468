"""Train or evaluate a panoptic_ext model with detectron2's trainer (``panoptic-ext-train``).

    panoptic-ext-train --config-file CFG                                  # one process
    panoptic-ext-train --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
    panoptic-ext-train --config-file CFG --num-gpus 8                     # one machine
    panoptic-ext-train --config-file CFG --num-gpus 8 --num-machines 2 \\
        --machine-rank R --dist-url tcp://HOST0:PORT                        # each machine
    torchrun --nproc_per_node 8 -m panoptic_ext.cli.train --config-file CFG
    srun --ntasks-per-node 8 python -m panoptic_ext.cli.train --config-file CFG

``CFG`` is a yaml path; :func:`panoptic_ext.model_zoo.get_config_file` gives the path of a
config shipped in the package. One run per ``OUTPUT_DIR``: a folder in use by another run is
refused, and so is one holding an earlier run's checkpoints unless ``--resume`` (continue it) or
``--overwrite-output`` (start a new run there) is given.
"""

import argparse
import sys

from detectron2.engine import default_argument_parser

from ..engine.launch import launch_main


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` plus ``--overwrite-output``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite-output",
        action="store_true",
        help="start a new training in an OUTPUT_DIR that holds an earlier run's checkpoints "
        "(they are replaced as this run saves); without it such a folder is refused unless "
        "--resume",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    launch_main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
