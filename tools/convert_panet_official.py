#!/usr/bin/env python3
"""Thin wrapper around ``panoptic_ext.cli.convert_panet_official`` (usage: its docstring)."""

import sys

from panoptic_ext.cli.convert_panet_official import main

if __name__ == "__main__":
    sys.exit(main())
