"""Read a JSON file so that every failure names the file.

``json.load`` reports an empty or broken file as a bare ``JSONDecodeError`` ("Expecting value:
line 1 column 1 (char 0)") that names no file; deep inside dataset registration or evaluation
the user cannot tell which of several JSON files is at fault.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["JsonFileError", "read_json"]


class JsonFileError(ValueError):
    """A JSON file that is empty, not UTF-8 text or not valid JSON (names the file)."""

    def __init__(self, path: str, why: str, what: str = "JSON file"):
        self.path, self.why, self.what = path, why, what
        super().__init__(f"cannot read {what} {path}: {why}")

    def __reduce__(self):  # picklable across data-loader workers
        return type(self), (self.path, self.why, self.what)


def read_json(path: str, what: str = "JSON file") -> Any:
    """``json.load`` of ``path``; errors name the file and where it breaks.

    Args:
        what: how the file is called in messages (e.g. "panoptic json").
    Raises:
        FileNotFoundError: naming the file; JsonFileError: empty, not UTF-8, or invalid JSON.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if os.path.getsize(path) == 0:
        raise JsonFileError(path, "the file is empty (0 bytes): an interrupted write?", what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno}"
        raise JsonFileError(path, f"not valid JSON at {where}: {e.msg}", what) from None
    except UnicodeDecodeError as e:
        raise JsonFileError(path, f"not UTF-8 text ({e.reason} at byte {e.start})", what) from None
