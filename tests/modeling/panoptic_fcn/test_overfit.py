"""Panoptic FCN learns: a few synthetic images, a bounded number of steps, PQ >= 80 on them
(COCO panoptic evaluation through the project's Trainer.test)."""

import torch
from detectron2.data import DatasetCatalog
from detectron2.utils.events import EventStorage
from helpers import TINY_OPTS, build_tiny_model, load_cfg, register_tiny

from panoptic_ext.data import PanopticDatasetMapper
from panoptic_ext.engine import Trainer

ITERS = 200
LR = 3e-3


def test_overfit_four_images_reaches_pq_80(tmp_path):
    register_tiny()
    cfg = load_cfg(
        "quick_schedules/panoptic_fcn_synthetic.yaml",
        *TINY_OPTS,
        "INPUT.RANDOM_FLIP", "none",
        "DATASETS.TEST", ("synthetic_panoptic_val",),
        "TEST.EVALUATORS", ["panoptic"],
        "MODEL.PANOPTIC_FCN.INFERENCE.COMBINE.STUFF_AREA_LIMIT", 16,
        # 4-32 px objects on 64 px images: stride-4 masks cap thing IoU (PQ 77; stride 2: 89).
        "MODEL.PANOPTIC_FCN.SEMANTIC_FPN.COMMON_STRIDE", 2,
        "OUTPUT_DIR", str(tmp_path),
    )  # fmt: skip
    model = build_tiny_model(cfg)
    mapper = PanopticDatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get("synthetic_panoptic_val")]  # the 4 images
    assert sum(len(x["instances"]) for x in batch) > 0
    # AdamW + one-cycle: the shortest reliable from-scratch schedule for a CPU test.
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=ITERS, pct_start=0.1)
    model.train()
    with EventStorage():
        for _ in range(ITERS):
            loss = sum(model(batch).values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
    assert torch.isfinite(loss)
    results = Trainer.test(cfg, model.eval())
    pq = results["panoptic_seg"]
    assert pq["PQ"] >= 80, pq
