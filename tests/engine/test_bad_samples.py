"""Bad input is reported with the file, key or value at fault, and nothing good is lost.

Covered elsewhere (foundation tests): unknown category id, PNG id without segment, missing
panoptic PNG, unknown config key, class counts that disagree with the dataset metadata.
"""

import copy
import itertools
import os

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import PeriodicCheckpointer, SimpleTrainer
from detectron2.utils.events import EventStorage, get_event_storage
from helpers import (
    QUICK_SCHEDULES,
    TINY_OPTS,
    build_tiny_model,
    load_cfg,
    one_thread,
    tiny_batch,
)
from torch import nn

from panoptic_ext.checkpoint import SafeCheckpointer
from panoptic_ext.data import PanopticDatasetMapper
from panoptic_ext.data.datasets import register_panoptic_dataset
from panoptic_ext.data.train_loader import BadSampleError, CheckedMapper
from panoptic_ext.engine import Trainer
from panoptic_ext.engine.hooks import NanGuardHook


def _cfg(*opts):
    return load_cfg("quick_schedules/panoptic_fpn_synthetic.yaml", *TINY_OPTS, *opts)


def _register_with_bad_image(name: str, records, tmp_path, content: bytes) -> str:
    """Register ``name``: the tiny train split with image 3 replaced by ``content``."""
    meta = MetadataCatalog.get("synthetic_panoptic_train")
    bad = str(tmp_path / os.path.basename(records[3]["file_name"]))
    with open(bad, "wb") as f:
        f.write(content)
    dicts = copy.deepcopy(records)
    dicts[3]["file_name"] = bad
    register_panoptic_dataset(
        name, meta.image_root, meta.panoptic_root, meta.panoptic_json, loader=lambda: dicts
    )
    return bad


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_bad_image_is_named_through_the_training_loader(records, tmp_path, kind):
    good = open(records[3]["file_name"], "rb").read()
    content = good[: len(good) // 3] if kind == "truncated" else b"not an image at all"
    bad = _register_with_bad_image(f"reliability_bad_{kind}", records, tmp_path, content)
    cfg = _cfg("DATASETS.TRAIN", (f"reliability_bad_{kind}",), "DATALOADER.NUM_WORKERS", 1)
    loader = Trainer.build_train_loader(cfg)
    # The 8 images are all read within 4 batches of 2; the error crosses the worker process.
    with pytest.raises(Exception, match=os.path.basename(bad)) as err:
        for _ in itertools.islice(loader, 4):
            pass
    assert "cannot read image" in str(err.value)


def test_sem_seg_label_outside_num_classes_is_named(records):
    cfg = _cfg()
    mapper = PanopticDatasetMapper(cfg, is_train=True)
    # 4 semantic classes in the data (things + 3 stuff); a model built for 3 cannot learn label 3.
    checked = CheckedMapper(mapper, num_sem_seg_classes=3, num_thing_classes=3, ignore_value=255)
    record = next(r for r in records if len(r["segments_info"]) > 3)
    with pytest.raises(BadSampleError, match=r"sem_seg.*train_\d+\.jpg.*\[3\].*\[0, 3\)") as err:
        checked(record)
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES" in str(err.value)
    assert "255" in str(err.value)  # the ignore value is named as allowed, not reported
    # The same sample passes with the right count, void pixels (255) included.
    out = CheckedMapper.from_config(cfg, mapper)(record)
    assert out["sem_seg"].max() <= 255


def test_thing_class_outside_num_classes_is_named(records):
    mapper = PanopticDatasetMapper(_cfg(), is_train=True)
    checked = CheckedMapper(mapper, num_sem_seg_classes=4, num_thing_classes=1)
    record = next(r for r in records if len(r["segments_info"]) > 3)
    with pytest.raises(BadSampleError, match=r"gt_classes \[.*\].*\[0, 1\).*ROI_HEADS"):
        checked(record)


class _LossModel(nn.Module):
    """Two loss terms; ``loss_mask`` turns NaN at iteration ``nan_at``."""

    def __init__(self, nan_at: int):
        super().__init__()
        self.nan_at = nan_at
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, batch):
        bad = float("nan") if get_event_storage().iter == self.nan_at else 0.0
        return {
            "loss_cls": (self.weight**2).sum(),
            "loss_mask": self.weight.sum() * 0.1 + bad,
        }


def test_nan_loss_names_term_and_iteration_and_keeps_checkpoint(tmp_path):
    model = _LossModel(nan_at=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleTrainer(model, itertools.repeat([{}]), optimizer)
    trainer.checkpointer = SafeCheckpointer(model, str(tmp_path), trainer=trainer)
    trainer.register_hooks([PeriodicCheckpointer(trainer.checkpointer, 1), NanGuardHook()])
    with pytest.raises(FloatingPointError) as err:
        trainer.train(0, 6)
    msg = str(err.value)
    assert "iteration 3" in msg and "loss_mask=nan" in msg and "loss_cls" not in msg
    assert "model_0000002.pth" in msg
    # The step that produced NaN never ran: the weights are finite and equal to the last
    # checkpoint, which is still the one tagged in last_checkpoint.
    assert torch.isfinite(model.weight).all()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    assert not (tmp_path / "model_0000003.pth").exists()
    saved = torch.load(tmp_path / "model_0000002.pth", weights_only=True)["model"]["weight"]
    assert torch.equal(saved, model.weight.detach())


@pytest.mark.parametrize("name", QUICK_SCHEDULES)
def test_batch_without_any_object_trains(name, records):
    """A batch whose images have no things at all: finite losses and gradients, every model."""
    assert not any(s["isthing"] for s in records[0]["segments_info"])
    cfg = load_cfg(f"quick_schedules/{name}", *TINY_OPTS)
    with one_thread():
        model = build_tiny_model(cfg)
        model.train()
        with EventStorage(0):
            losses = model(tiny_batch(cfg, indices=(0, 0)))
        assert losses and all(torch.isfinite(v) for v in losses.values()), losses
        sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
