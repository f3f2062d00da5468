"""``SafeCheckpointer``: detectron2's checkpointer with safe loading, atomic writes and fallback."""

import os
import tempfile
from typing import Any
from urllib.parse import parse_qs

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode

from .safe_load import UnsafeCheckpointError, load_checkpoint_file

__all__ = ["SafeCheckpointer", "atomic_write"]


def _fsync_dir(path: str) -> None:
    """Persist a rename inside ``path`` (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write_fn, mode: str = "wb") -> None:
    """Write ``path`` so that readers see either the old file or the complete new one.

    ``write_fn(f)`` writes into a temporary file in the same directory, which is flushed,
    fsync'ed and renamed over ``path``; the directory is fsync'ed so the rename survives a crash.
    On any error the temporary file is removed and ``path`` is untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


class SafeCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` that is safe to load from and robust to crashes.

    * every file goes through :func:`load_checkpoint_file` (``weights_only`` torch.load; a
      restricted unpickler for model-zoo ``.pkl``); detectron2 model-zoo / Caffe2 ``.pkl`` layouts
      are recognised exactly like ``DetectionCheckpointer`` does;
    * ``save`` writes atomically (temp file, fsync, rename), then updates ``last_checkpoint``
      the same way, so a kill during saving never leaves a truncated "last" checkpoint;
    * ``resume_or_load(resume=True)`` falls back to the newest readable older checkpoint (with a
      warning) when the last one cannot be read. A file refused as unsafe is never skipped.
    """

    def __init__(self, model, save_dir: str = "", *, trust: bool = False, **kwargs):
        """
        Args:
            model, save_dir, kwargs: as for ``DetectionCheckpointer``.
            trust: load files with full pickle (``CHECKPOINT.TRUST_PICKLE``); off by default.
        """
        super().__init__(model, save_dir, **kwargs)
        self.trust = trust

    @classmethod
    def from_config(cls, cfg: CfgNode, model, save_dir: str = "", **kwargs) -> "SafeCheckpointer":
        """Build with ``trust`` taken from ``cfg.CHECKPOINT.TRUST_PICKLE``."""
        return cls(model, save_dir, trust=cfg.CHECKPOINT.TRUST_PICKLE, **kwargs)

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename), mode="w")

    # ----------------------------------------------------------------- loading
    def _checkpoint_candidates(self) -> list[str]:
        """The tagged last checkpoint first, then the other ``.pth`` files, newest first."""
        last = self.get_checkpoint_file()
        others = [p for p in self.get_all_checkpoint_files() if p != last]
        others.sort(key=lambda p: (os.path.getmtime(p), p), reverse=True)
        return [last] + others

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        candidates = self._checkpoint_candidates()
        errors = []
        for candidate in candidates:
            try:
                return self.load(candidate)
            except UnsafeCheckpointError:
                raise
            except Exception as e:  # unreadable: truncated, corrupt, missing
                self._parsed_url_during_load = None  # DetectionCheckpointer.load did not reset it
                errors.append(f"{candidate}: {type(e).__name__}: {e}")
                self.logger.warning(
                    f"Cannot read checkpoint '{candidate}' ({type(e).__name__}: {e}); "
                    "falling back to the previous checkpoint."
                )
        raise RuntimeError(
            f"No readable checkpoint in '{self.save_dir}' to resume from:\n" + "\n".join(errors)
        )

    def _load_file(self, filename: str) -> dict[str, Any]:
        data = load_checkpoint_file(filename, trust=self.trust)
        if not isinstance(data, dict):
            raise TypeError(f"Checkpoint '{filename}' holds a {type(data).__name__}, not a dict.")
        if filename.endswith(".pkl"):
            if "model" in data and "__author__" in data:  # detectron2 model-zoo layout
                self.logger.info(f"Reading a file from '{data['__author__']}'")
                return data
            # Caffe2 / Detectron1 layout: detection models keep weights under "blobs".
            blobs = data.get("blobs", data)
            weights = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls
            if "model_state" not in data:
                raise KeyError(f"pycls checkpoint '{filename}' has no 'model_state'.")
            state = data["model_state"]
            weights = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
            return {"model": weights, "__author__": "pycls", "matching_heuristics": True}
        if "model" not in data:
            data = {"model": data}
        parsed = self._parsed_url_during_load
        queries = parse_qs(parsed.query) if parsed is not None else {}
        if queries.pop("matching_heuristics", None) == ["True"]:
            data["matching_heuristics"] = True
        if queries:
            raise ValueError(f"Unsupported query {queries} in checkpoint path '{filename}'.")
        return data
