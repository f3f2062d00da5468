#!/usr/bin/env python3
"""panoptic_ext: all metadata lives in pyproject.toml; this shim keeps ``python setup.py ...``
and older tools working."""

from setuptools import setup

setup()
