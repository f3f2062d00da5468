"""Write failures named as such: which file, and what the storage said (disk full, quota,
read-only, permission), instead of a library's own wording or a bare ``OSError``.

Libraries hide the cause: ``torch.save`` into a full disk raises ``RuntimeError: [enforce fail
at inline_container.cc:672] ... file write failed`` and ``cv2.imwrite`` returns ``False``. The
file object handed to such a writer is wrapped (:func:`call_writer`) so that the ``OSError`` of
its ``write`` is kept and re-raised as :class:`OutputWriteError` naming the destination.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from typing import IO, Any

__all__ = ["OutputWriteError", "call_writer", "reporting_write_errors", "write_bytes"]

# errno -> what the user should do about it (the strerror already says what happened).
_HINTS = {
    errno.ENOSPC: "free space on that file system or write elsewhere",
    errno.EDQUOT: "free space within your quota or write elsewhere",
    errno.EROFS: "the file system is mounted read-only; write elsewhere",
    errno.EACCES: "you may not write there; change its permissions or write elsewhere",
    errno.EPERM: "you may not write there; change its permissions or write elsewhere",
    errno.EFBIG: "the file exceeds the file size limit (ulimit -f) or the file system's",
    errno.ENAMETOOLONG: "a file name is limited to 255 bytes on most file systems",
}


class OutputWriteError(OSError):
    """An output file could not be written; ``str()`` names the file, the cause and a remedy.

    Keeps ``errno`` and ``filename`` of the original error, so callers can still test them.
    """

    def __init__(self, path: str, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), path)
        name = errno.errorcode.get(cause.errno, "") if cause.errno else ""
        what = cause.strerror or str(cause)
        what = what[:1].lower() + what[1:]  # "No space left on device" -> "no space ..."
        hint = _HINTS.get(cause.errno)
        self.message = f"cannot write {path}: {what}" + (f" [{name}]" if name else "")
        self.message += f"; {hint}" if hint else ""

    def __str__(self) -> str:
        return self.message


@contextlib.contextmanager
def reporting_write_errors(path: str) -> Iterator[None]:
    """Re-raise an ``OSError`` of the enclosed writes as :class:`OutputWriteError` for ``path``."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as e:
        raise OutputWriteError(path, e) from e


class _RecordingFile:
    """File proxy that remembers the ``OSError`` raised by a ``write`` (a caller may swallow it)."""

    def __init__(self, f: IO[Any]):
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def call_writer(path: str, write_fn: Callable[[Any], Any], f: IO[Any]) -> None:
    """``write_fn(f)``; a failed write of ``f``, whatever ``write_fn`` turns it into, raises
    :class:`OutputWriteError` naming ``path`` (the destination, ``f`` may be a temporary)."""
    recording = _RecordingFile(f)
    try:
        with reporting_write_errors(path):
            write_fn(recording)
            f.flush()
    except Exception as e:
        if recording.error is not None and not isinstance(e, OutputWriteError):
            raise OutputWriteError(path, recording.error) from e
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path``; a partial regular file is removed if the write fails.

    Raises:
        OutputWriteError: naming ``path`` and the cause (disk full, read-only, name too long...).
    """
    opened = False
    try:
        with reporting_write_errors(path), open(path, "wb") as f:
            opened = True
            f.write(data)
    except OutputWriteError:
        if opened and os.path.isfile(path):  # what this call wrote; never a device (/dev/full)
            with contextlib.suppress(OSError):
                os.remove(path)
        raise
