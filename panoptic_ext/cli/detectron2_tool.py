"""Run one of detectron2's own scripts with panoptic_ext loaded (``panoptic-ext-detectron2-tool``).

    panoptic-ext-detectron2-tool detectron2/tools/visualize_data.py --source annotation \\
        --config-file configs/quick_schedules/panoptic_fpn_synthetic.yaml --output-dir vis/
    panoptic-ext-detectron2-tool detectron2/tools/analyze_model.py --tasks parameter \\
        --config-file configs/COCO-PanopticSegmentation/panoptic_fcn_R_50_1x.yaml

detectron2's tools build their config with ``detectron2.config.get_cfg()`` and know only the
datasets and models that detectron2 registers. This runner imports panoptic_ext first (our
datasets, backbones, heads and meta-architectures are then registered) and, for the duration of
the script only, has ``get_cfg()`` return detectron2's defaults plus our keys, so that our yaml
files (``INPUT.SEM_SEG_FORMAT``, ``MODEL.PANOPTIC_FCN``, ...) merge. Importing panoptic_ext
never changes detectron2's defaults; only this explicit runner does, inside its own process.
The synthetic datasets have their default sizes here (``DATASETS.SYNTHETIC`` is read by our
trainer, not by detectron2's scripts).
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
from collections.abc import Iterator

import detectron2.config

from ..config import add_panoptic_ext_config

__all__ = ["main", "panoptic_ext_get_cfg"]


@contextlib.contextmanager
def panoptic_ext_get_cfg() -> Iterator[None]:
    """Within the block, ``detectron2.config.get_cfg()`` returns a cfg with our keys added."""
    original = detectron2.config.get_cfg

    def get_cfg():
        return add_panoptic_ext_config(original())

    detectron2.config.get_cfg = get_cfg
    try:
        yield
    finally:
        detectron2.config.get_cfg = original


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    script, args = argv[0], argv[1:]
    if not os.path.isfile(script):
        print(f"no such detectron2 script: {script}", file=sys.stderr)
        return 2
    # Importing this module imported panoptic_ext: our datasets and models are registered.
    saved_argv = sys.argv
    sys.argv = [script, *args]
    try:
        with panoptic_ext_get_cfg():
            runpy.run_path(script, run_name="__main__")
    except SystemExit as e:  # argparse and scripts that call sys.exit
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved_argv
    return 0


if __name__ == "__main__":
    sys.exit(main())
