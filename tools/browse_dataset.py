#!/usr/bin/env python3
"""Thin wrapper around ``panoptic_ext.cli.browse_dataset`` (usage: its docstring)."""

import sys

from panoptic_ext.cli.browse_dataset import main

if __name__ == "__main__":
    sys.exit(main())
