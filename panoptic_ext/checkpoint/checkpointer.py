"""``SafeCheckpointer``: detectron2's checkpointer with safe loading, atomic writes and fallback."""

import os
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.utils.file_io import PathManager

from ..utils.write_errors import call_writer, reporting_write_errors
from .safe_load import UnreadableCheckpointError, UnsafeCheckpointError, load_checkpoint_file
from .weight_checks import (
    ResumeMismatchError,
    WeightsError,
    WeightsMismatchError,
    changed_model_keys,
    check_coverage,
    check_finite,
    resume_misfit,
)

__all__ = ["SafeCheckpointer", "atomic_write", "is_local_path"]


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


# "scheme://" paths go to their iopath handler; plain paths (and file://) are local files.
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_local_path(path: str) -> bool:
    """True for a plain filesystem path (or ``file://``), False for another iopath scheme."""
    return not _URI.match(path) or path.startswith("file://")


def atomic_write(path: str, write_fn, mode: str = "wb", path_manager=None) -> None:
    """Write ``path`` so that readers see either the old file or the complete new one.

    Local paths: ``write_fn(f)`` writes into a temporary file in the same directory, created
    with mode 0666 minus the umask (the permissions ``open()`` would give), which is flushed,
    fsync'ed and renamed over ``path``; the directory is fsync'ed so the rename survives a crash.
    On any error the temporary file is removed and ``path`` is untouched; a failed write (disk
    full, quota, read-only, permission) raises ``OutputWriteError`` naming ``path``.
    Other schemes (an iopath handler registered for ``OUTPUT_DIR``): written through
    ``path_manager`` (detectron2's ``PathManager`` by default), with that storage's semantics.
    """
    if not is_local_path(path):
        manager = path_manager or PathManager
        with manager.open(path, mode) as f:
            write_fn(f)
        return
    path = path.removeprefix("file://")
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    )
    with reporting_write_errors(path):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        # Also closing the file can fail (the rest of its buffer), after a failed write too.
        with reporting_write_errors(path), os.fdopen(fd, mode) as f:
            call_writer(path, write_fn, f)
            os.fsync(f.fileno())
        with reporting_write_errors(path):
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def _mtime(path: str) -> float:
    """Modification time of a local file; 0 for other storage (then names decide the order)."""
    return os.path.getmtime(path) if is_local_path(path) and os.path.exists(path) else 0.0


class SafeCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` that is safe to load from and robust to crashes.

    * every file goes through :func:`load_checkpoint_file` (``weights_only`` torch.load; a
      restricted unpickler for model-zoo ``.pkl``); detectron2 model-zoo / Caffe2 ``.pkl`` layouts
      are recognised exactly like ``DetectionCheckpointer`` does;
    * ``save`` writes atomically (temp file, fsync, rename), then updates ``last_checkpoint``
      the same way, so a kill during saving never leaves a truncated "last" checkpoint; files
      get the umask's permissions (like detectron2's) and a non-local ``OUTPUT_DIR`` goes
      through ``self.path_manager`` (detectron2's ``PathManager`` and its handlers);
    * ``resume_or_load(resume=True)`` falls back to the newest readable older checkpoint (with a
      warning) when the last one cannot be read. A file refused as unsafe is never skipped;
    * weights that cannot be right are refused (:mod:`.weight_checks`): NaN/Inf in a tensor, a
      file that fills none of the model, a head left at random init when ``inference``, and a
      resume checkpoint saved by another model (its saved config names the changed keys).
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        trust: bool = False,
        inference: bool = False,
        config_yaml: str = "",
        **kwargs,
    ):
        """
        Args:
            model, save_dir, kwargs: as for ``DetectionCheckpointer``.
            trust: load files with full pickle (``CHECKPOINT.TRUST_PICKLE``); off by default.
            inference: the weights are for evaluation, a demo or an export: no (or empty)
                weights and heads left at random initialisation are refused.
            config_yaml: the run's config dump, saved in every checkpoint so that a resume
                with another model can name the keys that changed.
        """
        super().__init__(model, save_dir, **kwargs)
        self.trust = trust
        self.inference = inference
        self.config_yaml = config_yaml
        self._resuming = False

    @classmethod
    def from_config(
        cls, cfg: CfgNode, model, save_dir: str = "", *, inference: bool = False, **kwargs
    ) -> "SafeCheckpointer":
        """Build with ``trust`` from ``cfg.CHECKPOINT.TRUST_PICKLE`` and the config saved."""
        return cls(
            model,
            save_dir,
            trust=cfg.CHECKPOINT.TRUST_PICKLE,
            inference=inference,
            config_yaml=cfg.dump(),
            **kwargs,
        )

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self.config_yaml:
            data["config"] = self.config_yaml
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        self.path_manager.mkdirs(self.save_dir)
        atomic_write(save_file, lambda f: torch.save(data, f), path_manager=self.path_manager)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        write = lambda f: f.write(last_filename_basename)  # noqa: E731
        atomic_write(path, write, mode="w", path_manager=self.path_manager)

    # ----------------------------------------------------------------- loading
    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """``DetectionCheckpointer.load``; a local path that is no file is named with the reason
        (fvcore would report a directory as "not found")."""
        if not path and self.inference:
            raise WeightsMismatchError(
                "MODEL.WEIGHTS is empty: evaluation, the demo and export would run a randomly "
                "initialised model (detectron2 only logs 'Initializing model from scratch'). "
                "Pass the trained weights, e.g. MODEL.WEIGHTS output/model_final.pth (or "
                "--resume to evaluate the last checkpoint of OUTPUT_DIR)."
            )
        local = urlparse(path)._replace(query="").geturl() if path else path
        if local and is_local_path(local) and not os.path.isfile(local.removeprefix("file://")):
            why = (
                "it is a directory, not a checkpoint file"
                if os.path.isdir(local)
                else "no such file"
            )
            raise UnreadableCheckpointError(local, why)
        return super().load(path, checkpointables=checkpointables)

    def get_checkpoint_file(self) -> str:
        """The file ``last_checkpoint`` names; "" (with a warning) when the tag is unreadable."""
        try:
            return super().get_checkpoint_file()
        except (UnicodeDecodeError, OSError) as e:
            tag = os.path.join(self.save_dir, "last_checkpoint")
            self.logger.warning(
                f"Cannot read the tag {tag} ({type(e).__name__}: {e}); ignoring it."
            )
            return ""

    def _checkpoint_candidates(self) -> list[str]:
        """The tagged last checkpoint first, then the other ``.pth`` files, newest first."""
        last = self.get_checkpoint_file()
        others = [p for p in self.get_all_checkpoint_files() if p != last]
        others.sort(key=lambda p: (_mtime(p), p), reverse=True)
        return ([last] if last else []) + others

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        self._resuming = True
        try:
            return self._first_readable(lambda candidate: self.load(candidate))
        finally:
            self._resuming = False

    def _first_readable(self, read):
        """``read(candidate)`` of the first resume candidate that can be read; unreadable ones
        are skipped with a warning, unsafe or wrong weights stop (never skipped)."""
        errors = []
        for candidate in self._checkpoint_candidates():
            try:
                return read(candidate)
            except (UnsafeCheckpointError, WeightsError):
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

    def check_resume(self) -> None:
        """Read the checkpoint ``resume_or_load(resume=True)`` would continue from and refuse it
        (:class:`ResumeMismatchError`) when it does not fit the model; changes nothing.

        Run before a resumed training writes anything (its config, log, checkpoints)."""
        if self.has_checkpoint():
            self._first_readable(lambda c: self._check_fits(c, self._load_file(c)))

    def _check_fits(self, filename: str, checkpoint: dict[str, Any]) -> None:
        """Refuse resuming from ``checkpoint`` unless its model tensors match the model's."""
        state = checkpoint.get("model", {})
        # Old detectron2 checkpoints hold anchors that are non-persistent buffers now
        # (DetectionCheckpointer ignores them too).
        shapes = {
            k: tuple(getattr(v, "shape", ()))
            for k, v in state.items()
            if "anchor_generator.cell_anchors" not in k
        }
        model = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        found = resume_misfit(model, shapes)
        if not found:
            return
        saved, source = checkpoint.get("config"), "the config saved in the checkpoint"
        if not isinstance(saved, str):  # saved before checkpoints kept their config
            source = os.path.join(self.save_dir, "config.yaml")  # the run's, not yet rewritten
            saved = open(source).read() if self.save_dir and os.path.isfile(source) else None
        if saved is None or not self.config_yaml:
            keys = "no saved config to compare with"
        else:
            changed = changed_model_keys(saved, self.config_yaml)
            keys = (
                f"config keys changed since it was saved (against {source}):\n    "
                + "\n    ".join(changed)
                if changed
                else f"no MODEL.* key differs from {source}: the file holds another model"
            )
        raise ResumeMismatchError(
            f"Cannot --resume from {filename}: it was saved by a different model than the "
            "config builds now, so training would continue with re-initialised layers or stop "
            "in the optimizer.\n  " + "\n  ".join(found) + f"\n  {keys}\n"
            "Undo the change to resume, or start a new run (another OUTPUT_DIR, or "
            "--overwrite-output; MODEL.WEIGHTS can initialise it from this checkpoint)."
        )

    def _load_model(self, checkpoint: Any):
        """Load as detectron2 does, then refuse weights that fill nothing (or, for inference,
        leave a head at random init); when resuming, refuse a checkpoint of another model
        before anything is loaded."""
        filename = getattr(self, "_last_file", "<checkpoint>")
        if self._resuming:
            self._check_fits(filename, checkpoint)
        file_keys = list(checkpoint.get("model", {}))
        incompatible = super()._load_model(checkpoint)
        if incompatible is not None:
            missing = set(incompatible.missing_keys)
            model_keys = list(self.model.state_dict())
            check_coverage(
                model_keys,
                [k for k in model_keys if k not in missing],
                file_keys,
                incompatible.unexpected_keys + [k for k, _, _ in incompatible.incorrect_shapes],
                filename,
                inference=self.inference,
            )
        return incompatible

    def _load_file(self, filename: str) -> dict[str, Any]:
        data = self._read_file(filename)
        check_finite(data.get("model", {}), filename)
        self._last_file = filename  # named by _load_model's refusals
        return data

    def _read_file(self, filename: str) -> dict[str, Any]:
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
