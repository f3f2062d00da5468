"""Event writers of a training: detectron2's, with ``metrics.json`` appended safely.

detectron2's ``JSONWriter`` appends one JSON record per line. After a run killed mid-write (or a
disk that filled up) the file ends in a cut line, and the resumed run's first record was glued
to it, so that neither line parsed. :class:`AppendingJSONWriter` starts on a new line, and a
failed write names the file and the cause (disk full, quota, read-only) instead of a bare OSError.
"""

from __future__ import annotations

import logging
import os

from detectron2.utils.events import (
    CommonMetricPrinter,
    EventWriter,
    JSONWriter,
    TensorboardXWriter,
)
from detectron2.utils.file_io import PathManager

from ..checkpoint.checkpointer import is_local_path
from ..utils.write_errors import reporting_write_errors

__all__ = ["AppendingJSONWriter", "build_writers"]

logger = logging.getLogger(__name__)


def _ends_without_newline(path: str) -> bool:
    """True for a non-empty local file whose last byte is not a newline (a cut last record)."""
    if not is_local_path(path):
        return False
    path = path.removeprefix("file://")
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


class AppendingJSONWriter(JSONWriter):
    """``JSONWriter`` that appends from a new line and names its file when a write fails."""

    def __init__(self, json_file: str, window_size: int = 20):
        cut = _ends_without_newline(json_file)
        with reporting_write_errors(json_file):
            super().__init__(json_file, window_size)
            if cut:
                self._file_handle.write("\n")
        if cut:
            logger.warning(
                f"{json_file} ends in a cut line (an interrupted write); new records start on "
                "the next line, the cut one stays as it is"
            )
        self._path = json_file

    def write(self) -> None:
        with reporting_write_errors(self._path):
            super().write()


def build_writers(output_dir: str, max_iter: int) -> list[EventWriter]:
    """detectron2's ``default_writers`` with :class:`AppendingJSONWriter` for ``metrics.json``."""
    PathManager.mkdirs(output_dir)
    return [
        CommonMetricPrinter(max_iter),
        AppendingJSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]
