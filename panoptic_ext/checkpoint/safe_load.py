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

A file that is neither torch.save's zip archive nor its legacy stream is a plain pickle: its
opcodes are read (never executed) first. Plain data and numpy arrays load with the restricted
unpickler; ``pickle.dump`` of tensors is refused with :class:`PlainPickleCheckpointError`
(its tensors rebuild through ``torch.storage._load_from_bytes``, a full-pickle load) saying how
to convert it; any other global (a raw payload such as ``posix.system``) with
:class:`UnsafeCheckpointError`. Both are "unsafe", never "damaged", so resuming never skips them.
"""

import importlib
import logging
import os
import pickle
import pickletools
import re
import zipfile
from typing import Any

import torch

__all__ = [
    "TRUST_ENV_VAR",
    "PlainPickleCheckpointError",
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

    def __init__(self, filename: str, offending: str, what: str = ""):
        self.filename = filename
        self.offending = offending
        self.what = what
        msg = (
            f"Refusing to load checkpoint '{filename}': {what}it references the global "
            f"'{offending}', which is not a numpy array, plain container or scalar. " + _TRUST_HINT
        )
        super().__init__(msg)

    def __reduce__(self):  # picklable across processes
        return type(self), (self.filename, self.offending, self.what)


class PlainPickleCheckpointError(UnsafeCheckpointError):
    """Tensors saved with ``pickle.dump`` instead of ``torch.save``: loading them needs full
    pickle (``torch.storage._load_from_bytes``), so the file is refused unless trusted."""

    def __init__(self, filename: str, offending: str = "torch.storage._load_from_bytes"):
        pickle.UnpicklingError.__init__(
            self,
            f"Refusing to load checkpoint '{filename}': it is a plain Python pickle of tensors "
            "(written with pickle.dump, not torch.save), whose tensors can only be rebuilt by "
            f"full pickle ('{offending}'), which can execute code. If you trust the file, "
            'convert it once: python -c "import pickle, torch; torch.save(pickle.load(open('
            f"'{filename}', 'rb')), '{filename}.converted.pth')\" and use the .converted.pth, or "
            "load it as it is with CHECKPOINT.TRUST_PICKLE True (or "
            f"{TRUST_ENV_VAR}=1).",
        )
        self.filename, self.offending, self.what = filename, offending, "plain pickle of tensors"

    def __reduce__(self):
        return type(self), (self.filename, self.offending)


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


# torch.save's legacy (non-zip) format starts with this number, pickled on its own.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# What ``pickle.dump`` of tensors / modules' state dicts references (torch's own reducers).
_PLAIN_TENSOR_PICKLE_GLOBALS = frozenset(
    {
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_parameter",
        "torch.storage._load_from_bytes",
        "torch._tensor._rebuild_from_type_v2",
        "torch.Tensor",
        "torch.nn.parameter.Parameter",
        "collections.OrderedDict",
        "torch.device",
    }
)
_STRING_OPS = frozenset(
    {
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "SHORT_BINSTRING",
        "BINSTRING",
        "STRING",
    }
)
# Opcodes that push nothing (memo bookkeeping, framing, marks): they leave the recent values.
_NO_PUSH_OPS = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME", "PROTO", "MARK"})


def _pickle_globals(filename: str) -> tuple[bool, list[str]]:
    """Read the first pickle of ``filename`` opcode by opcode, executing nothing.

    Returns:
        (whether it is torch.save's legacy stream, the globals the pickle references as
        "module.name"; "<unresolved>" for a STACK_GLOBAL whose names cannot be followed).
    Raises:
        UnreadableCheckpointError: the file is not a pickle or ends inside one.
    """
    found: list[str] = []
    recent: list = []  # the values of the last pushes (strings; None for anything else)
    memo: dict[int, object] = {}
    first = True
    try:
        with open(filename, "rb") as f:
            for opcode, arg, _ in pickletools.genops(f):
                name = opcode.name
                if first and name not in ("PROTO", "FRAME"):
                    if name in ("LONG1", "LONG4", "LONG") and arg == _TORCH_LEGACY_MAGIC:
                        return True, []
                    first = False
                if name == "GLOBAL" or name == "INST":
                    found.append(".".join(str(arg).split(" ", 1)))
                elif name == "STACK_GLOBAL":
                    module, attr = ([None, None] + recent)[-2:]
                    ok = isinstance(module, str) and isinstance(attr, str)
                    found.append(f"{module}.{attr}" if ok else "<unresolved>")
                    recent.append(None)
                elif name == "MEMOIZE":
                    memo[len(memo)] = recent[-1] if recent else None
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = recent[-1] if recent else None
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    recent.append(memo.get(int(arg)))
                elif name in _STRING_OPS:
                    recent.append(arg if isinstance(arg, str) else None)
                elif name not in _NO_PUSH_OPS:
                    recent.append(None)
                del recent[:-4]
    except (ValueError, EOFError) as e:  # genops: unknown opcode, truncated argument, no STOP
        raise UnreadableCheckpointError(
            filename,
            "not a valid checkpoint: neither a torch.save archive nor a readable pickle "
            f"(truncated or corrupted? {e})",
        ) from None
    return False, found


def _load_plain_pickle(filename: str, trust: bool) -> Any:
    """A pickle that is not torch.save's: restricted unpickler when every global it names is
    admitted, else refused naming what it is (tensors pickled directly, or another global)."""
    _, found = _pickle_globals(filename)
    if trust:
        with open(filename, "rb") as f:
            return pickle.load(f, encoding="latin1")
    admitted = {f"{module}.{name}" for module, name in _SAFE_PICKLE_GLOBALS}
    refused = [g for g in found if g not in admitted]
    if not refused:
        return _restricted_pickle_load(filename)
    others = [g for g in refused if g not in _PLAIN_TENSOR_PICKLE_GLOBALS]
    if not others:
        raise PlainPickleCheckpointError(filename, refused[0])
    what = "it is a plain pickle (not a torch.save checkpoint) and "
    raise UnsafeCheckpointError(filename, others[0], what)


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
        UnsafeCheckpointError: the file references a global outside the allow-list
            (:class:`PlainPickleCheckpointError`: tensors saved with ``pickle.dump``).
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
    with open(filename, "rb") as f:
        is_zip = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    if not is_zip and not _pickle_globals(filename)[0]:  # not torch.save's: a plain pickle
        return _load_plain_pickle(filename, trust)
    if trust:
        return torch.load(filename, map_location="cpu", weights_only=False)
    return _safe_torch_load(filename)
