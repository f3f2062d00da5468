"""Training hooks: exact resume of RNG / data position, and a NaN guard that names the loss."""

import logging
from typing import Any

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..utils.determinism import derive_seed, get_rng_state, set_rng_state

__all__ = ["ExactResumeHook", "NanGuardHook"]

logger = logging.getLogger(__name__)


def _data_loader_of(trainer) -> Any:
    """The training data loader of a ``DefaultTrainer`` (wraps a SimpleTrainer) or SimpleTrainer."""
    return getattr(getattr(trainer, "_trainer", trainer), "data_loader", None)


class ExactResumeHook(HookBase):
    """Make a resumed run continue exactly where the interrupted one stopped.

    * Its ``state_dict`` (saved with every checkpoint) holds the RNG states of Python, numpy and
      torch; loading restores them (single process; with several ranks only rank 0's state is
      in the checkpoint, so ranks rely on the per-iteration reseeding below instead).
    * ``before_train`` tells a resumable data loader (``build_resumable_train_loader``) to start
      at ``trainer.start_iter`` instead of replaying the stream from the beginning.
    * With ``deterministic=True`` every iteration reseeds all RNGs from ``(seed, rank, iter)``,
      so random ops in the model (e.g. ROI sampling) do not depend on the run's history.
    """

    def __init__(self, seed: int, deterministic: bool):
        """
        Args:
            seed: cfg.SEED (used only when ``deterministic``).
            deterministic: cfg.DETERMINISTIC.
        """
        self._seed = seed
        self._deterministic = deterministic

    def before_train(self):
        loader = _data_loader_of(self.trainer)
        if hasattr(loader, "set_start_iter"):
            loader.set_start_iter(self.trainer.start_iter)
        elif self.trainer.start_iter > 0:
            logger.warning(
                "The training data loader cannot skip to the resumed iteration; it restarts its "
                "stream, so the resumed run sees a different data order than an uninterrupted one."
            )

    def before_step(self):
        if self._deterministic:
            seed_all_rng(derive_seed(self._seed, comm.get_rank(), self.trainer.iter))

    def state_dict(self) -> dict[str, Any]:
        return {"rng": get_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if comm.get_world_size() == 1:
            set_rng_state(state_dict["rng"])


class NanGuardHook(HookBase):
    """Stop training *before* the optimizer step when a loss term is NaN or infinite.

    A forward hook on the training model inspects the loss dict, so the step that produced the
    non-finite loss never updates the weights and every checkpoint on disk stays good. The error
    names the loss term(s), their values and the iteration. All ranks agree (one all-reduce of a
    flag per iteration), so no rank is left waiting in a collective.
    """

    def __init__(self):
        self._handle = None

    def before_train(self):
        self._handle = self.trainer.model.register_forward_hook(self._check)

    def after_train(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _check(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not module.training or not isinstance(output, dict):
            return
        losses = {k: v for k, v in output.items() if torch.is_tensor(v)}
        if not losses:
            return
        finite = torch.stack([torch.isfinite(v.detach()).all() for v in losses.values()])
        bad_here = (~finite).any().to(torch.int32)
        if comm.get_world_size() > 1:
            dist.all_reduce(bad_here)
        if not bool(bad_here):
            return
        bad = {
            k: float(v.detach().float().sum())
            for k, v in losses.items()
            if not torch.isfinite(v).all()
        }
        where = f" on rank {comm.get_rank()}" if comm.get_world_size() > 1 else ""
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        terms = f"{where}: {terms}" if bad else f" on another rank than {comm.get_rank()}"
        checkpointer = getattr(self.trainer, "checkpointer", None)
        last = checkpointer.get_checkpoint_file() if checkpointer is not None else ""
        raise FloatingPointError(
            f"Non-finite loss at iteration {self.trainer.iter}{terms}. The optimizer step was "
            f"skipped, so the weights are those after iteration {self.trainer.iter - 1}"
            + (f" and the last checkpoint '{last}' is intact" if last else "")
            + ". Try a lower SOLVER.BASE_LR, a longer SOLVER.WARMUP_ITERS or "
            "SOLVER.CLIP_GRADIENTS.ENABLED True."
        )
