"""The demo's inputs and outputs: checked before the model is built, nothing overwritten, nothing
lost when one image is bad.

* :func:`plan_inputs` expands files, folders and glob patterns, drops inputs given twice (the
  same file through a folder and a path counts once), and gives every input an output name of
  its own (``x/img.jpg`` and ``y/img.jpg`` would both write ``img.png``);
* only regular files are read: a FIFO, socket or device among the inputs is skipped with its
  reason and never opened (opening a FIFO blocks until someone writes to it);
* output names fit the file system: at most 255 bytes with their extension, shortened with a
  hash of the full name when longer, so they stay unique;
* :class:`DemoResults` keeps the COCO-panoptic records of the images that worked and the
  images that were skipped (with why), and writes ``predictions.json`` whatever happens (an
  exception, Ctrl-C, SIGTERM), listing only PNGs that were written.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint.checkpointer import atomic_write

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_NAME_BYTES",
    "DemoInput",
    "DemoResults",
    "expand_inputs",
    "fit_name",
    "not_a_regular_file",
    "plan_inputs",
]

logger = logging.getLogger("panoptic_ext.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Longest file name (bytes, extension included) of ext4, XFS, btrfs, APFS, NTFS (UTF-16 units).
MAX_NAME_BYTES = 255
_OUTPUT_EXTENSION = ".png"


def not_a_regular_file(path: str) -> str | None:
    """Why ``path`` cannot be read as an image without opening it, or None for a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    if stat.S_ISREG(mode):
        return None
    for test, what in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return f"is {what}, not a regular file: not opened"
    return "is not a regular file: not opened"


def fit_name(name: str, extension: str = _OUTPUT_EXTENSION) -> str:
    """``name`` if ``name + extension`` fits :data:`MAX_NAME_BYTES`, else its longest UTF-8
    prefix that fits with ``-`` and 8 hex digits of the full name's SHA-1 (unique in practice)."""
    limit = MAX_NAME_BYTES - len(extension.encode())
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    prefix = name.encode()[: limit - len(digest) - 1].decode(errors="ignore")
    return f"{prefix}-{digest}"


@dataclass(frozen=True)
class DemoInput:
    """One image to run: its path and the name (no extension) of the files written for it."""

    path: str
    name: str


def _matches(pattern: str) -> list[str]:
    """Files a pattern names; non-regular files are kept (they are skipped, with the reason,
    when run) but never opened here."""
    if os.path.isdir(pattern):
        names = (f for f in os.listdir(pattern) if f.lower().endswith(IMAGE_EXTENSIONS))
        paths = (os.path.join(pattern, f) for f in names)
        return sorted(p for p in paths if not os.path.isdir(p))
    if os.path.lexists(pattern):
        return [pattern]
    return sorted(p for p in glob.glob(os.path.expanduser(pattern)) if not os.path.isdir(p))


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
    folder with "/" -> "__" and "." -> "_" (``x/img.jpg`` -> ``x__img_jpg``); always unique and
    short enough for the file system (:func:`fit_name`)."""
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
        name = fit_name(name)
        while name in taken:  # a file already named like a generated name
            name, k = fit_name(f"{base}-{k}"), k + 1
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

    def skip(self, path: str, why: BaseException | str) -> None:
        logger.error(f"skipping {path}: {why}")
        self.skipped.append((path, str(why)))

    def write_predictions(self, folder: str, categories: list[dict[str, Any]]) -> str:
        """``folder/predictions.json`` (COCO panoptic: annotations + categories), written
        atomically; records whose PNG is not in ``folder`` are left out (and named)."""
        path = os.path.join(folder, "predictions.json")
        records = []
        for record in self.records:
            if os.path.isfile(os.path.join(folder, record["file_name"])):
                records.append(record)
            else:
                logger.error(f"{record['file_name']} is not in {folder}: left out of {path}")
        content = {"annotations": records, "categories": categories}
        atomic_write(path, lambda f: json.dump(content, f), mode="w")
        logger.info(f"{path}: {len(records)} images")
        return path

    def exit_status(self, total: int) -> int:
        """0 when every input worked; else 1, after saying which were skipped and why."""
        if not self.skipped:
            return 0
        lines = "\n".join(f"  {path}: {why}" for path, why in self.skipped)
        logger.error(f"{len(self.skipped)} of {total} inputs skipped:\n{lines}")
        return 1
