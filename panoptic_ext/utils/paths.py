"""The check every tool runs before writing: no output path is one of its input paths.

A converter whose output folder is its input folder writes each output PNG over the input of
the same name, half-way through a dataset; a checkpoint converter given the same file twice
replaces the original. Paths are compared after resolving symlinks, ``..`` and hard links.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

__all__ = ["OutputIsInputError", "refuse_outputs_over_inputs", "same_path"]


class OutputIsInputError(ValueError):
    """An output path of a tool is (or resolves to) one of its inputs."""


def same_path(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` name the same file or folder (symlinks, ``..``, hard links)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _labelled(paths: Mapping[str, str | Iterable[str] | None]) -> list[tuple[str, str]]:
    found = []
    for label, value in paths.items():
        if value is None or value == "":
            continue
        for path in [value] if isinstance(value, str) else value:
            if path:
                found.append((label, path))
    return found


def refuse_outputs_over_inputs(
    inputs: Mapping[str, str | Iterable[str] | None],
    outputs: Mapping[str, str | Iterable[str] | None],
) -> None:
    """Refuse, before anything is written, an output that is one of the inputs.

    Args:
        inputs, outputs: option name (as the user typed it, e.g. ``"--panoptic-root"``) -> a
            path or several paths (``None`` / empty: not given). Folders and files alike.
    Raises:
        OutputIsInputError: naming both options and the path.
    """
    sources = _labelled(inputs)
    for out_label, out in _labelled(outputs):
        for in_label, source in sources:
            if same_path(out, source):
                shown = out if out == source else f"{out} (= {source})"
                raise OutputIsInputError(
                    f"{out_label} {shown} is the same path as the input {in_label}: writing it "
                    f"would overwrite that input; choose another path for {out_label}"
                )
