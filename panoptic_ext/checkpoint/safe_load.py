"""One loader for every checkpoint file panoptic_ext reads, safe by default.

* ``.pth`` / ``.pt`` / ``.pyth``: ``torch.load(weights_only=True)`` -- tensors, plain containers
  and scalars only.
* ``.pkl`` (detectron2 / Detectron model zoo): a restricted unpickler that admits only numpy
  arrays and dtypes, plain containers (dict, list, tuple, OrderedDict, set), strings, bytes and
  numbers.

Anything else is refused with :class:`UnsafeCheckpointError` naming the file and the offending
global, unless the caller explicitly trusts the file (``CHECKPOINT.TRUST_PICKLE`` or the
environment variable ``PANOPTIC_EXT_TRUST_CHECKPOINTS=1``); a pickle can run arbitrary code.

Danger is told from damage: only a file that names a forbidden global is "unsafe". A file that
cannot be a checkpoint -- missing, a directory, empty, an HTML page or a Git LFS pointer saved
under the checkpoint's name, a truncated or corrupted archive (zip checksums are verified, so a
flipped bit is caught instead of loading wrong weights) or a pickle that does not parse -- raises
:class:`UnreadableCheckpointError` "cannot read <file>: <why>", which resuming skips.
"""

import importlib
import logging
import os
import pickle
import re
import zipfile
from typing import Any

import torch

__all__ = [
    "TRUST_ENV_VAR",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "load_checkpoint_file",
    "trust_from_env",
]

logger = logging.getLogger(__name__)

TRUST_ENV_VAR = "PANOPTIC_EXT_TRUST_CHECKPOINTS"

# (module, name) pairs a model-zoo pickle may reference. Both numpy<2 ("numpy.core") and
# numpy>=2 ("numpy._core") spellings exist in the wild.
_SAFE_PICKLE_GLOBALS = frozenset(
    [
        (numpy_core, name)
        for numpy_core in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    ]
    # Pickle protocol 5 rebuilds arrays from raw buffers.
    + [(numpy_core, "_frombuffer") for numpy_core in ("numpy.core.numeric", "numpy._core.numeric")]
    + [
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        # Protocol-2 pickles written by Python 3 encode ``bytes`` through _codecs.encode.
        ("_codecs", "encode"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "complex"),
    ]
)
# torch's weights_only unpickler also wants the classes of dtype instances (numpy.dtypes.*DType)
# that ``numpy.dtype(...)`` creates; pickles never name them directly.
_SAFE_NUMPY_DTYPE_MODULES = ("numpy.dtypes",)

_TRUST_HINT = (
    "A pickle can execute arbitrary code when loaded. If you trust this file, set the config key "
    f"CHECKPOINT.TRUST_PICKLE True (e.g. append `CHECKPOINT.TRUST_PICKLE True` to the command) "
    f"or the environment variable {TRUST_ENV_VAR}=1."
)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint references a Python global that the safe loaders do not admit."""

    def __init__(self, filename: str, offending: str):
        self.filename = filename
        self.offending = offending
        msg = (
            f"Refusing to load checkpoint '{filename}': it references the global '{offending}', "
            "which is not a numpy array, plain container or scalar. " + _TRUST_HINT
        )
        super().__init__(msg)


class UnreadableCheckpointError(OSError):
    """A file that is not a readable checkpoint (damaged, not a checkpoint, or absent)."""

    def __init__(self, filename: str, why: str):
        self.path, self.why = filename, why  # not "filename": OSError would reformat str()
        super().__init__(f"cannot read {filename}: {why}")

    def __reduce__(self):  # picklable across processes
        return type(self), (self.path, self.why)


_SNIFF_BYTES = 512
_ZIP_MAGIC = b"PK\x03\x04"


def _zip_damage(filename: str, size: int) -> str | None:
    """Why a zip checkpoint (torch.save's format) is damaged, or None when it is intact."""
    try:
        with zipfile.ZipFile(filename) as archive:
            # torch.save stores a CRC-32 per record (unless checksums were switched off: all 0).
            bad = archive.testzip() if any(i.CRC for i in archive.infolist()) else None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        return f"the archive is truncated or corrupted ({e}; {size} bytes)"
    if bad is not None:
        return f"the archive is corrupted: the checksum of its record '{bad}' does not match"
    return None


def _why_not_a_checkpoint(filename: str) -> str | None:
    """A reason ``filename`` cannot hold a checkpoint, found without unpickling anything."""
    if os.path.isdir(filename):
        return "it is a directory, not a checkpoint file"
    if not os.path.exists(filename):
        return "no such file"
    size = os.path.getsize(filename)
    if size == 0:
        return "the file is empty (0 bytes): an interrupted save, copy or download?"
    with open(filename, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if head.startswith(b"version https://git-lfs"):
        return (
            f"it is a Git LFS pointer ({size} bytes), not the checkpoint itself: fetch the file "
            "with `git lfs pull` (or download it directly)"
        )
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return (
            f"it is an HTML/XML page ({size} bytes), not a checkpoint: the download saved a web "
            "page (an error, login or redirect page) instead of the file"
        )
    if head.startswith(_ZIP_MAGIC):
        return _zip_damage(filename, size)
    return None


def _check_readable(filename: str) -> None:
    why = _why_not_a_checkpoint(filename)
    if why is not None:
        raise UnreadableCheckpointError(filename, why)


def _first_line(e: BaseException) -> str:
    """The informative line of an exception (torch's weights_only errors bury it mid-text)."""
    text = str(e)
    found = re.search(r"WeightsUnpickler error: (.*)", text)
    lines = [found.group(1).strip()] if found else text.strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines and lines[0] else type(e).__name__


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only :data:`_SAFE_PICKLE_GLOBALS`."""

    def __init__(self, file, filename: str):
        super().__init__(file, encoding="latin1")  # latin1: Python-2 era Detectron pickles
        self._filename = filename

    def find_class(self, module: str, name: str) -> Any:
        # Exact (module, name) pairs only: no dotted names that could walk to other attributes.
        if (module, name) in _SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(self._filename, f"{module}.{name}")


def trust_from_env() -> bool:
    """True when the environment variable ``PANOPTIC_EXT_TRUST_CHECKPOINTS`` is 1, true or yes."""
    return os.environ.get(TRUST_ENV_VAR, "").strip().lower() in ("1", "true", "yes")


def _numpy_safe_globals() -> list[Any]:
    """The numpy callables of :data:`_SAFE_PICKLE_GLOBALS`, for torch's weights_only unpickler."""
    found = []
    for module_name, name in sorted(_SAFE_PICKLE_GLOBALS):
        if module_name.startswith("numpy"):
            try:
                found.append(getattr(importlib.import_module(module_name), name))
            except (ImportError, AttributeError):  # the other numpy major version's spelling
                continue
    for module_name in _SAFE_NUMPY_DTYPE_MODULES:  # dtype instances are built from these classes
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found += [getattr(module, n) for n in getattr(module, "__all__", []) if hasattr(module, n)]
    return found


# torch's weights_only refusal of a global reads "... Unsupported global: GLOBAL posix.system
# was not an allowed global by default ..." or "... but got <class 'x.Y'>".
_FORBIDDEN_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>")


def _safe_torch_load(filename: str) -> Any:
    try:
        # torch's allow-list (tensors, containers, scalars) plus numpy arrays and dtypes.
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(filename, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _FORBIDDEN_GLOBAL.search(str(e))
        if found is None:  # no forbidden global named: the pickle stream itself is broken
            why = f"not a valid checkpoint ({_first_line(e)})"
            raise UnreadableCheckpointError(filename, why) from e
        raise UnsafeCheckpointError(filename, found.group(1) or found.group(2)) from e
    except (RuntimeError, EOFError, ValueError, KeyError, OSError) as e:
        why = f"not a valid checkpoint ({_first_line(e)})"
        raise UnreadableCheckpointError(filename, why) from e


def _restricted_pickle_load(filename: str) -> Any:
    with open(filename, "rb") as f:
        try:
            return _RestrictedUnpickler(f, filename).load()
        except UnsafeCheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as e:
            why = f"not a readable pickle, truncated or corrupted? ({_first_line(e)})"
            raise UnreadableCheckpointError(filename, why) from None


def load_checkpoint_file(filename: str, trust: bool = False) -> Any:
    """Load a local checkpoint file without executing code from it.

    Args:
        filename: local path; ``.pkl`` goes through the restricted unpickler, any other suffix
            through ``torch.load(weights_only=True)``.
        trust: load with full pickle instead (only for files you trust); the environment
            variable ``PANOPTIC_EXT_TRUST_CHECKPOINTS=1`` has the same effect.

    Returns:
        The unpickled object (for checkpoints: a dict of tensors / numpy arrays and metadata).

    Raises:
        UnsafeCheckpointError: the file references a global outside the allow-list.
        UnreadableCheckpointError: the file is missing, a directory, empty, an HTML page, a Git
            LFS pointer, a truncated / corrupted archive or a broken pickle ("cannot read
            <file>: <why>").
    """
    _check_readable(filename)
    trust = trust or trust_from_env()
    if trust:
        logger.warning(f"Loading '{filename}' with full pickle: the file is trusted explicitly.")
    if filename.endswith(".pkl"):
        if trust:
            with open(filename, "rb") as f:
                return pickle.load(f, encoding="latin1")
        return _restricted_pickle_load(filename)
    if trust:
        return torch.load(filename, map_location="cpu", weights_only=False)
    return _safe_torch_load(filename)
