#!/usr/bin/env python3
"""panoptic_ext: Panoptic FPN, PANet and Panoptic FCN as detectron2 components."""

from setuptools import find_packages, setup

setup(
    name="panoptic_ext",
    version="0.1.0",
    description="Detectron2 extension: Panoptic FPN, PANet and Panoptic FCN",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=("tests", "tools", "configs", "demo")),
    # detectron2 is not on PyPI: install it from source first (see README / INSTALL).
    # Supported: detectron2 0.6 (main branch) with torch >= 2.1, tested with torch 2.14.
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "fvcore>=0.1.5",
        "pycocotools>=2.0.2",
        "opencv-python-headless>=4.5,<4.13",  # 4.13+/5.x need numpy>=2; panopticapi pins numpy<2
        "numpy>=1.23,<2",
    ],
    extras_require={
        # panopticapi-lite is the PyPI build of cocodataset/panopticapi (module "panopticapi").
        # deflate (libdeflate) speeds up PNG decoding in the fast PQ evaluator; zlib otherwise.
        "eval": ["panopticapi-lite", "deflate"],
        "dev": ["pytest", "ruff"],
    },
    classifiers=["License :: OSI Approved :: Apache Software License"],
)
