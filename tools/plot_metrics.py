#!/usr/bin/env python3
"""Thin wrapper around ``panoptic_ext.cli.plot_metrics`` (usage: its docstring)."""

import sys

from panoptic_ext.cli.plot_metrics import main

if __name__ == "__main__":
    sys.exit(main())
