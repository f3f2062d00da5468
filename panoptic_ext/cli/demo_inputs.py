"""The demo's inputs and outputs: checked before the model is built, nothing overwritten, nothing
lost when one image is bad.

* :func:`plan_inputs` expands files, folders and glob patterns, drops inputs given twice (the
  same file through a folder and a path counts once), and gives every input an output name of
  its own (``x/img.jpg`` and ``y/img.jpg`` would both write ``img.png``);
* :class:`DemoResults` keeps the COCO-panoptic records of the images that worked and the
  images that were skipped (with why), and writes ``predictions.json`` whatever happens.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["IMAGE_EXTENSIONS", "DemoInput", "DemoResults", "expand_inputs", "plan_inputs"]

logger = logging.getLogger("panoptic_ext.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class DemoInput:
    """One image to run: its path and the name (no extension) of the files written for it."""

    path: str
    name: str


def _matches(pattern: str) -> list[str]:
    if os.path.isdir(pattern):
        names = (f for f in os.listdir(pattern) if f.lower().endswith(IMAGE_EXTENSIONS))
        return sorted(os.path.join(pattern, f) for f in names)
    if os.path.isfile(pattern):
        return [pattern]
    return sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files, folders (their images, sorted) and glob patterns -> image paths, in order, each
    file once (the first time it is named).

    Raises:
        FileNotFoundError: naming a pattern that matches nothing (or a folder without images).
    """
    paths: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        found = _matches(pattern)
        if not found:
            what = "holds no image" if os.path.isdir(pattern) else "matches no image"
            hint = " (config KEY VALUE overrides go after --output)" if pattern.isupper() else ""
            raise FileNotFoundError(f"--input {pattern!r} {what}{hint}")
        for path in found:
            key = os.path.realpath(path)
            if key in seen:
                logger.info(f"{path} is given more than once: processed once")
                continue
            seen.add(key)
            paths.append(path)
    return paths


def _output_names(paths: Sequence[str]) -> list[str]:
    """The file stem, or for stems that several inputs share, the path from their common
    folder with "/" -> "__" and "." -> "_" (``x/img.jpg`` -> ``x__img_jpg``); always unique."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    counts = Counter(stems)
    shared = [os.path.abspath(p) for p, s in zip(paths, stems) if counts[s] > 1]
    root = os.path.commonpath([os.path.dirname(p) for p in shared]) if shared else ""
    names, taken = [], set()
    for path, stem in zip(paths, stems):
        name = stem
        if counts[stem] > 1:
            rel = os.path.relpath(os.path.abspath(path), root)
            name = rel.replace(os.sep, "__").replace(".", "_")
        base, k = name, 2
        while name in taken:  # a file already named like a generated name
            name, k = f"{base}-{k}", k + 1
        taken.add(name)
        names.append(name)
    return names


def plan_inputs(patterns: Sequence[str]) -> list[DemoInput]:
    """:func:`expand_inputs` with a unique output name per input."""
    paths = expand_inputs(patterns)
    return [DemoInput(p, n) for p, n in zip(paths, _output_names(paths))]


@dataclass
class DemoResults:
    """What the demo produced: records of the images that worked, the images skipped."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def skip(self, path: str, why: BaseException) -> None:
        logger.error(f"skipping {path}: {why}")
        self.skipped.append((path, str(why)))

    def write_predictions(self, folder: str, categories: list[dict[str, Any]]) -> str:
        """``folder/predictions.json`` (COCO panoptic: annotations + categories)."""
        path = os.path.join(folder, "predictions.json")
        with open(path, "w") as f:
            json.dump({"annotations": self.records, "categories": categories}, f)
        return path

    def exit_status(self, total: int) -> int:
        """0 when every input worked; else 1, after saying which were skipped and why."""
        if not self.skipped:
            return 0
        lines = "\n".join(f"  {path}: {why}" for path, why in self.skipped)
        logger.error(f"{len(self.skipped)} of {total} inputs skipped:\n{lines}")
        return 1
