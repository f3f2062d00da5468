"""Small helpers for the tests: configs, tiny models and batches built from the synthetic set."""

import contextlib
import os
import re
from collections.abc import Iterator

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from panoptic_ext.config import build_cfg
from panoptic_ext.data import PanopticDatasetMapper
from panoptic_ext.data.datasets import register_synthetic_datasets
from panoptic_ext.engine import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
QUICK = os.path.join(CONFIGS, "quick_schedules/panoptic_fpn_synthetic.yaml")


# A _BASE_ chain with a code-running yaml tag (the safe loader must refuse it).
def tagged_chain(folder, marker, base=QUICK) -> tuple[str, str]:
    """top.yaml -> middle.yaml (tagged: would create ``marker``) -> ``base``: (top, middle)."""
    middle = os.path.join(folder, "middle.yaml")
    with open(middle, "w") as f:
        f.write(f"_BASE_: {base}\nSEED: !!python/object/apply:os.system ['touch {marker}']\n")
    top = os.path.join(folder, "top.yaml")
    with open(top, "w") as f:
        f.write("_BASE_: middle.yaml\nSOLVER:\n  MAX_ITER: 1\n")
    return top, middle


def refusal_pattern(middle: str) -> re.Pattern:
    """The safe loader's refusal of ``middle`` of :func:`tagged_chain`."""
    return re.compile(
        re.escape(f"Refusing config {middle}, line 2") + r".*'!!python/object/apply:os\.system'"
    )


# Tiny synthetic split used by unit tests (the quick schedules use the default sizes).
TINY = {"image_size": 64, "num_train": 8, "num_val": 4, "seed": 0}
# Overrides that shrink any synthetic quick schedule to a few-second model.
TINY_OPTS = [
    "DATASETS.SYNTHETIC.IMAGE_SIZE",
    64,
    "DATASETS.SYNTHETIC.NUM_TRAIN",
    8,
    "DATASETS.SYNTHETIC.NUM_VAL",
    4,
    "INPUT.MIN_SIZE_TRAIN",
    (64,),
    "INPUT.MAX_SIZE_TRAIN",
    64,
    "INPUT.MIN_SIZE_TEST",
    64,
    "INPUT.MAX_SIZE_TEST",
    64,
    "SOLVER.IMS_PER_BATCH",
    2,
    "DATALOADER.NUM_WORKERS",
    0,
    "MODEL.DEVICE",
    "cpu",
]

# Random-init Panoptic FPN predicts nothing above detectron2's thresholds: keep every detection so
# that the panoptic output has things as well as stuff.
KEEP_ALL_DETECTIONS_OPTS = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
    "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", 0.0,
    "MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH", 0.0,
    "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT", 16,
    "TEST.DETECTIONS_PER_IMAGE", 5,
]  # fmt: skip


_NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
# Device parameters: every device test has the marker "devices" (dev/gpu_check.py selects them
# with -m); the CUDA variant also has "cuda" and is skipped, but collected, without CUDA.
CPU = pytest.param("cpu", id="cpu", marks=pytest.mark.devices)
CUDA = pytest.param("cuda", id="cuda", marks=[pytest.mark.devices, pytest.mark.cuda, _NEEDS_CUDA])
DEVICES = [CPU, CUDA]


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """No TF32 in CUDA matmuls and convolutions (cuDNN's default uses it): comparisons of two
    computations (batched vs per image) then hold to fp32 tolerances. No-op on CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def config_path(name: str) -> str:
    return os.path.join(CONFIGS, name)


def load_cfg(name: str, *opts) -> CfgNode:
    """A mutable cfg from a repo config (relative to configs/) with ``opts`` merged, on CPU."""
    return build_cfg(config_path(name), ["MODEL.DEVICE", "cpu", *opts], freeze=False)


def register_tiny() -> None:
    """Register the synthetic datasets at the tiny size (idempotent)."""
    register_synthetic_datasets(**TINY)


def tiny_batch(cfg: CfgNode, indices=(0, 1), is_train: bool = True) -> list[dict]:
    """Mapped inputs of synthetic train images ``indices`` (image 0 has no things)."""
    register_tiny()
    dicts = DatasetCatalog.get("synthetic_panoptic_train")
    mapper = PanopticDatasetMapper(cfg, is_train=is_train)
    return [mapper(dicts[i]) for i in indices]


def build_tiny_model(cfg: CfgNode) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg)


# One quick schedule per model family.
QUICK_SCHEDULES = [
    "panoptic_fpn_synthetic.yaml",
    "panet_synthetic.yaml",
    "semantic_fpn_synthetic.yaml",
    "panoptic_fcn_synthetic.yaml",
]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run with one intra-op thread.

    On 2 cores shared with other processes, 2 spin-waiting OpenMP threads made a tiny model's
    train step 110 s instead of 2 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def pq_in_process(weights: str, *opts) -> list[float]:
    """PQ, SQ, RQ, PQ_th, SQ_th, RQ_th (rounded to 1e-4) of the synthetic Panoptic FPN quick
    schedule with ``weights``, evaluated in this process with one thread (the kernels of the
    single-threaded subprocesses it is compared with)."""
    register_tiny()
    cfg = load_cfg("quick_schedules/panoptic_fpn_synthetic.yaml", *opts)
    model = Trainer.build_model(cfg)
    Trainer.build_checkpointer(cfg, model).load(weights)
    with one_thread():
        panoptic = Trainer.test(cfg, model)["panoptic_seg"]
    return [round(panoptic[k], 4) for k in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th")]
