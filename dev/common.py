"""What the lab tools of ``dev/`` share: repository paths, random-init configs, the calibration
that makes a random init informative, and device-synchronised timing.

The tools run from the repository root as ``python -m dev.<tool>``; ``dev`` is then a package on
``sys.path`` (the working directory), so the tools import this module and each other, and
``panoptic_ext`` comes from the environment (the editable install or ``PYTHONPATH``). Nothing
here or in the tools edits ``sys.path`` to find our own code (only the official-parity tools add
the user's official checkout, ``--official-root``).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d

from panoptic_ext.config import build_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_path(relpath: str) -> str:
    """Absolute path of ``configs/<relpath>`` of this checkout."""
    return os.path.join(REPO, "configs", relpath)


def random_init_cfg(
    config_file: str, opts: Iterable, device: str = "cpu", freeze: bool = True
) -> CfgNode:
    """``build_cfg`` of ``config_file`` + ``KEY VALUE`` ``opts`` on ``device``, always without
    weights (``MODEL.WEIGHTS ""`` after ``opts``): the lab's models start from a random init."""
    return build_cfg(config_file, [*opts, "MODEL.WEIGHTS", ""], device=device, freeze=freeze)


# ---------------------------------------------------------------------------------------------
# Calibrating a random init
# ---------------------------------------------------------------------------------------------
def activated_convs(root: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules under ``root`` with an ``activation`` and a bias (detectron2 ``Conv2d`` style)."""
    return [
        m
        for m in root.modules()
        if getattr(m, "activation", None) is not None and getattr(m, "bias", None) is not None
    ]


def _inference_inputs(batched_inputs: list[dict]) -> list[dict]:
    return [{k: x[k] for k in ("image", "height", "width") if k in x} for x in batched_inputs]


@torch.no_grad()
def calibrate_random_init(
    model: torch.nn.Module,
    batched_inputs: list[dict],
    *,
    bn_root: torch.nn.Module | None = None,
    centred: Iterable[torch.nn.Module] = (),
    spreads: Mapping[str, float] | None = None,
) -> int:
    """Make a random init informative, data-dependently, in one inference pass (in place).

    * every ``FrozenBatchNorm2d`` under ``bn_root`` (default: the whole model) gets the batch
      statistics of its input, each just before it runs, so later layers see calibrated inputs
      (a random ResNet otherwise grows its features ~10x per stage, to ~1e3..1e6, which no trained
      model does and which overflows fp16);
    * the ``centred`` modules (convs with an activation and a bias, see :func:`activated_convs`)
      get zero-mean pre-activation outputs by a bias shift (e.g. Panoptic FCN's encoder: else
      every thing mask covers the image);
    * the output layers named in ``spreads`` (``named_modules`` names; absent ones ignored) are
      scaled to that output spread (std), bias kept, so scores, masks and labels are decided
      rather than all tied.

    ``batched_inputs`` are detectron2 inputs (only image, height and width are used); the model
    runs in eval mode and gets its train/eval mode back. Returns the number of FrozenBN layers.
    """
    hooks = []

    def bn_stats(mod: FrozenBatchNorm2d, args: tuple) -> None:
        x = args[0].float()
        mod.running_mean.copy_(x.mean((0, 2, 3)))
        mod.running_var.copy_(x.var((0, 2, 3)).clamp(min=1e-4) - mod.eps)

    def spread(target: float) -> Callable:
        def hook(mod, args, out):
            if getattr(mod, "_calibrated", False):
                return None
            bias = 0 if mod.bias is None else mod.bias
            bias = bias.view(1, -1, *[1] * (out.dim() - 2)) if out.dim() > 1 else bias
            scale = float((out - bias).std()) / target
            mod.weight.div_(scale)
            mod._calibrated = True
            return (out - bias) / scale + bias

        return hook

    def centre(mod, args, out):  # the activation is detached meanwhile: ``out`` is pre-activation
        mean = out.mean((0, 2, 3))
        mod.bias.sub_(mean)
        return activation_of[mod](out - mean.view(1, -1, 1, 1))

    bns = [m for m in (bn_root or model).modules() if isinstance(m, FrozenBatchNorm2d)]
    hooks += [m.register_forward_pre_hook(bn_stats) for m in bns]
    activation_of = {m: m.activation for m in centred}
    for m in activation_of:
        m.activation = None
        hooks.append(m.register_forward_hook(centre))
    modules = dict(model.named_modules())
    for name, target in (spreads or {}).items():
        if name in modules:
            hooks.append(modules[name].register_forward_hook(spread(target)))
    was_training = model.training
    try:
        model.eval()
        model(_inference_inputs(batched_inputs))
    finally:
        for h in hooks:
            h.remove()
        for m, activation in activation_of.items():
            m.activation = activation
        model.train(was_training)
    return len(bns)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a clock read after it counts that work."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def parse_size(text: str) -> tuple[int, int]:
    """ "800x1333" -> (800, 1333); ValueError naming the expected form otherwise."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"a size must look like 800x1333, got {text!r}") from e
    return h, w


@dataclass
class Timings:
    """Seconds per repeat of each named call, measured on one clock."""

    runs: dict[str, list[float]] = field(default_factory=dict)
    # Idle seconds before each call: a runtime's worker threads spin-wait a while after its call
    # returns (OpenMP for PyTorch, ONNX Runtime's pool) and, on a 2-core CPU, take cycles from
    # the call that follows.
    settle_s: float = 0.0
    clock: Callable[[], float] = time.perf_counter
    device: str = "cpu"  # CUDA work is synchronised before each clock read

    def add(self, name: str, fn: Callable[[], object]) -> object:
        """Run ``fn`` once, timed under ``name``; returns its result."""
        if self.settle_s:
            time.sleep(self.settle_s)
        sync(self.device)
        start = self.clock()
        out = fn()
        sync(self.device)
        self.runs.setdefault(name, []).append(self.clock() - start)
        return out

    def median(self, name: str) -> float:
        return statistics.median(self.runs[name])

    def ratio(self, num: str, den: str) -> float:
        """Median over repeats of num/den (both measured in the same repeat)."""
        return statistics.median(a / b for a, b in zip(self.runs[num], self.runs[den]))
