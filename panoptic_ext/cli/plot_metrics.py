"""Turn a training run's ``metrics.json`` into curve PNGs (``panoptic-ext-plot-metrics``).

    panoptic-ext-plot-metrics output/panoptic_fpn_synthetic            # PNGs next to metrics.json
    panoptic-ext-plot-metrics output/run/metrics.json --output plots/ --smooth 500

Writes ``loss.png`` (every loss term and total_loss, raw and running median), ``lr.png`` and,
when the run evaluated, ``eval.png`` (PQ / AP / mIoU at each evaluation); see
:mod:`panoptic_ext.vis.metrics_plot`.
"""

import argparse
import sys

from ..vis.metrics_plot import plot_metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("metrics", help="metrics.json, or the OUTPUT_DIR that holds it")
    parser.add_argument("--output", help="folder of the PNGs (default: next to metrics.json)")
    parser.add_argument(
        "--smooth", type=int, default=200, help="window of the loss medians, in iterations"
    )
    args = parser.parse_args(argv)
    if args.smooth < 1:
        parser.error(f"--smooth must be >= 1, got {args.smooth}")
    try:
        paths = plot_metrics(args.metrics, args.output, args.smooth)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not paths:
        print(f"error: {args.metrics} holds no loss, lr or evaluation values", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
