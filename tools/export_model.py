#!/usr/bin/env python3
"""Thin wrapper around ``panoptic_ext.cli.export_model`` (usage: its docstring)."""

import sys

from panoptic_ext.cli.export_model import main

if __name__ == "__main__":
    sys.exit(main())
