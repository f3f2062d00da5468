#!/usr/bin/env python3
"""Thin wrapper: ``python demo/demo.py`` = ``panoptic-ext-demo`` (``panoptic_ext.cli.demo``)."""

import sys

from panoptic_ext.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
