"""Every model family in every precision: fp32 and bf16 on CPU; fp32, fp16 and bf16 on CUDA.

One training step (losses finite, gradients finite) and one inference pass (outputs finite and
well-formed), under autocast for fp16/bf16, on two tiny synthetic images, one of them without
things. The CUDA variants (marker "cuda") are skipped without CUDA; ``dev/gpu_check.py`` runs
them on a GPU, with detectron2's ``AMPTrainer`` (fp16 + grad scaler) for a few iterations.
"""

import contextlib

import pytest
import torch
from detectron2.utils.events import EventStorage
from helpers import (
    CPU,
    CUDA,
    QUICK_SCHEDULES,
    TINY_OPTS,
    build_tiny_model,
    load_cfg,
    one_thread,
    register_tiny,
    tiny_batch,
)

from panoptic_ext.engine import Trainer

_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # None: no autocast
PRECISIONS = [
    pytest.param(device.values[0], _DTYPES[name], id=f"{device.id}-{name}", marks=device.marks)
    for device, names in ((CPU, ("fp32", "bf16")), (CUDA, ("fp32", "fp16", "bf16")))
    for name in names
]


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _cpu_backend(device: torch.device):
    # oneDNN's bf16 convolution backward returns sporadic NaN weight gradients for 1x1 inputs
    # with stride 2 (Panoptic FCN's P7 conv on small images; torch 2.14, reproducible with a
    # bare nn.Conv2d), so CPU runs use PyTorch's native kernels. CUDA is unaffected.
    return torch.backends.mkldnn.flags(enabled=device.type != "cpu")


def _check_prediction(pred: dict, height: int, width: int) -> None:
    if "sem_seg" in pred:
        sem = pred["sem_seg"]  # (C, H, W) scores
        assert sem.dim() == 3 and sem.shape[0] > 1 and sem.shape[-2:] == (height, width)
        assert torch.isfinite(sem).all()
    if "instances" in pred:
        inst = pred["instances"]
        assert inst.image_size == (height, width)
        assert torch.isfinite(inst.scores).all()
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
        if inst.has("pred_boxes"):
            assert torch.isfinite(inst.pred_boxes.tensor).all()
        if inst.has("pred_masks"):
            assert inst.pred_masks.shape[-2:] == (height, width)
    if "panoptic_seg" in pred:
        seg, segments = pred["panoptic_seg"]
        assert seg.shape == (height, width)
        ids = {s["id"] for s in segments}
        assert set(torch.unique(seg).tolist()) <= ids | {0}  # 0: void
    assert pred, "the model returned nothing"


@pytest.mark.parametrize("device, dtype", PRECISIONS)
@pytest.mark.parametrize("name", QUICK_SCHEDULES)
def test_train_step_and_inference(name, device, dtype):
    cfg = load_cfg(f"quick_schedules/{name}", *TINY_OPTS, "MODEL.DEVICE", device)
    with one_thread():
        _train_step_and_inference(cfg, dtype)


def _train_step_and_inference(cfg, dtype: torch.dtype | None) -> None:
    model = build_tiny_model(cfg)
    device = model.pixel_mean.device
    batch = tiny_batch(cfg, indices=(0, 1))  # image 0 has no things
    model.train()
    with _cpu_backend(device):
        with EventStorage(0), _autocast(device, dtype):
            losses = model(batch)
        assert losses and all(torch.isfinite(v).all() for v in losses.values()), losses
        sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    model.eval()
    inputs = tiny_batch(cfg, indices=(0, 1), is_train=False)
    with torch.no_grad(), _autocast(device, dtype):
        preds = model(inputs)
    for inp, pred in zip(inputs, preds):
        _check_prediction(pred, inp["height"], inp["width"])


@pytest.mark.parametrize("name", QUICK_SCHEDULES)
@pytest.mark.parametrize("device", [CUDA])
def test_amp_trainer_steps_are_finite(name, device, tmp_path):
    """Our Trainer with SOLVER.AMP.ENABLED (detectron2's AMPTrainer: fp16 autocast + grad scaler;
    CUDA only): three iterations leave finite, changed weights and a finite loss scale."""
    register_tiny()
    opts = ("SOLVER.AMP.ENABLED", True, "SOLVER.MAX_ITER", 3, "OUTPUT_DIR", str(tmp_path))
    cfg = load_cfg(f"quick_schedules/{name}", *TINY_OPTS, "MODEL.DEVICE", device, *opts)
    trainer = Trainer(cfg)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    assert all(torch.isfinite(v.float()).all() for v in after.values())
    assert any(not torch.equal(before[k], v) for k, v in after.items() if v.is_floating_point())
    assert torch.isfinite(torch.tensor(trainer._trainer.grad_scaler.get_scale()))
