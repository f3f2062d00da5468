#!/usr/bin/env python3
"""Before/after check of a refactoring: every model family gives bit-identical results.

    python -m dev.check_outputs_identical save before.pt     # on the old code
    python -m dev.check_outputs_identical save after.pt      # on the new code
    python -m dev.check_outputs_identical compare before.pt after.pt

``save`` builds each family from its synthetic quick-schedule config (tiny sizes, seed 0, one
intra-op thread), runs one training step on two fixed synthetic images (losses, then the SHA-256
of every parameter's gradient), one SGD step, and inference on two fixed val images (every output
tensor kept). It also records the learning rate of every iteration of each family's schedule.
``compare`` reports, per family, every loss, gradient and output that is not ``torch.equal``
(exit status 1 if any), and the largest relative difference of the learning rates.

Only public entry points are used (``build_cfg``, ``model_zoo``, ``register_synthetic_datasets``,
``PanopticDatasetMapper``, ``Trainer.build_lr_scheduler``), so the same file runs on both sides.
Set ``DETECTRON2_DATASETS`` to a private folder: the synthetic images are generated there.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from typing import Any

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from panoptic_ext import model_zoo
from panoptic_ext.checkpoint.safe_load import load_checkpoint_file
from panoptic_ext.config import build_cfg
from panoptic_ext.data import PanopticDatasetMapper
from panoptic_ext.data.datasets import register_synthetic_datasets
from panoptic_ext.engine import Trainer

SIZE = 64
TINY = [
    "DATASETS.SYNTHETIC.IMAGE_SIZE", SIZE, "DATASETS.SYNTHETIC.NUM_TRAIN", 8,
    "DATASETS.SYNTHETIC.NUM_VAL", 4, "INPUT.MIN_SIZE_TRAIN", (SIZE,),
    "INPUT.MAX_SIZE_TRAIN", SIZE, "INPUT.MIN_SIZE_TEST", SIZE, "INPUT.MAX_SIZE_TEST", SIZE,
    "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0, "SEED", 0,
]  # fmt: skip
# Random-init models predict little above the usual thresholds: keep everything they predict,
# so instances and panoptic merges are exercised.
KEEP_RCNN = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
    "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", 0.0,
    "MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH", 0.0,
    "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT", 16, "TEST.DETECTIONS_PER_IMAGE", 5,
]  # fmt: skip
KEEP_FCN = [
    "MODEL.PANOPTIC_FCN.INFERENCE.COMBINE.INST_THRESH", 0.0,
    "MODEL.PANOPTIC_FCN.INFERENCE.COMBINE.STUFF_AREA_LIMIT", 16,
    "MODEL.PANOPTIC_FCN.INFERENCE.SCORE_FLOOR", 0.0,
    "MODEL.PANOPTIC_FCN.INFERENCE.INST_THRES", 0.3,
]  # fmt: skip
DCN = [
    "MODEL.PANOPTIC_FCN.POSITION_HEAD.DEFORM", True,
    "MODEL.PANOPTIC_FCN.FEATURE_ENCODER.DEFORM", True,
]  # fmt: skip
FAMILIES: dict[str, tuple[str, list]] = {
    "semantic_fpn": ("quick_schedules/semantic_fpn_synthetic.yaml", []),
    "panoptic_fpn": ("quick_schedules/panoptic_fpn_synthetic.yaml", KEEP_RCNN),
    "panet": ("quick_schedules/panet_synthetic.yaml", KEEP_RCNN),
    "panoptic_fcn": ("quick_schedules/panoptic_fcn_synthetic.yaml", KEEP_FCN),
    "panoptic_fcn_dcn": ("quick_schedules/panoptic_fcn_synthetic.yaml", KEEP_FCN + DCN),
}
# Schedules: every quick schedule's own, plus the official Panoptic FCN poly schedule.
SCHEDULES: dict[str, tuple[str, list]] = {
    **{name: (path, []) for name, (path, _) in FAMILIES.items() if name != "panoptic_fcn_dcn"},
    "poly": ("COCO-PanopticSegmentation/panoptic_fcn_R_50_3x.yaml", ["SOLVER.MAX_ITER", 3000]),
    "poly_floor": (
        "COCO-PanopticSegmentation/panoptic_fcn_R_50_3x.yaml",
        ["SOLVER.MAX_ITER", 3000, "SOLVER.POLY_LR_CONSTANT_ENDING", 0.2],
    ),
}
TRAIN_IMAGES, VAL_IMAGES = (0, 3), (0, 1)  # train image 0 has no things


def _seed(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    head = f"{t.dtype}{tuple(t.shape)}".encode()
    return hashlib.sha256(head + t.view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    """Model outputs -> {dotted name: tensor or plain value}."""
    if isinstance(value, Instances):
        for field, v in sorted(value.get_fields().items()):
            _flatten(getattr(v, "tensor", v), f"{prefix}.{field}", out)
    elif isinstance(value, dict):
        for k in sorted(value):
            _flatten(value[k], f"{prefix}.{k}", out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}.{i}", out)
    elif torch.is_tensor(value):
        out[prefix] = value.detach().cpu().clone()
    else:
        out[prefix] = value


def run_family(name: str) -> dict[str, Any]:
    """Losses, gradient digests and inference outputs of one family (see module docstring)."""
    path, opts = FAMILIES[name]
    cfg = build_cfg(model_zoo.get_config_file(path), [*TINY, *opts], device="cpu")
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    val = DatasetCatalog.get(cfg.DATASETS.TEST[0])
    _seed()
    model = build_model(cfg)
    _seed()
    train_mapper = PanopticDatasetMapper(cfg, is_train=True)
    batch = [train_mapper(dicts[i]) for i in TRAIN_IMAGES]
    model.train()
    _seed()
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    grads = {
        n: _digest(p.grad) if p.grad is not None else None for n, p in model.named_parameters()
    }
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    test_mapper = PanopticDatasetMapper(cfg, is_train=False)
    model.eval()
    with torch.no_grad():
        outputs = model([test_mapper(val[i]) for i in VAL_IMAGES])
    flat: dict[str, Any] = {}
    _flatten(outputs, "out", flat)
    counts = [
        (len(o["instances"]) if "instances" in o else 0)
        + 1000 * (len(o["panoptic_seg"][1]) if "panoptic_seg" in o else 0)
        for o in outputs
    ]
    return {
        "losses": {k: v.detach().clone() for k, v in losses.items()},
        "grads": grads,
        "outputs": flat,
        "counts": [divmod(c, 1000) for c in counts],  # (segments, instances) per image
    }


def run_schedule(name: str) -> list[float]:
    """The learning rate of every iteration of a config's schedule (one parameter group)."""
    path, opts = SCHEDULES[name]
    cfg = build_cfg(model_zoo.get_config_file(path), [*TINY, *opts], device="cpu")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def save(path: str) -> None:
    torch.set_num_threads(1)  # sums in one order: reruns of the same code are bit-identical
    register_synthetic_datasets(SIZE, 8, 4, 0)
    result = {"families": {}, "schedules": {}}
    for name in FAMILIES:
        result["families"][name] = run_family(name)
        family = result["families"][name]
        losses = {k: round(float(v), 5) for k, v in family["losses"].items()}
        print(
            f"{name}: losses {losses}; (panoptic segments, instances) per image {family['counts']}"
        )
    for name in SCHEDULES:
        result["schedules"][name] = run_schedule(name)
    torch.save(result, path)
    print(f"wrote {path}")


def _same(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return type(a) is type(b) and a == b


def _diff_dicts(a: dict, b: dict, what: str) -> list[str]:
    problems = [f"{what} {k}: only in the first file" for k in sorted(set(a) - set(b))]
    problems += [f"{what} {k}: only in the second file" for k in sorted(set(b) - set(a))]
    problems += [f"{what} {k} differs" for k in sorted(set(a) & set(b)) if not _same(a[k], b[k])]
    return problems


def compare(first: str, second: str) -> int:
    a, b = (load_checkpoint_file(p) for p in (first, second))  # tensors and plain data only
    failed = False
    for name in sorted(set(a["families"]) | set(b["families"])):
        fa, fb = a["families"].get(name), b["families"].get(name)
        if fa is None or fb is None:
            print(f"{name}: missing in one file")
            failed = True
            continue
        problems = []
        for part in ("losses", "grads", "outputs"):
            problems += _diff_dicts(fa[part], fb[part], part)
        count = sum(len(fa[p]) for p in ("losses", "grads", "outputs"))
        status = "bit-identical" if not problems else f"{len(problems)} DIFFERENCES"
        print(f"{name}: {count} losses/gradients/outputs compared: {status}")
        for line in problems[:20]:
            print(f"    {line}")
        failed |= bool(problems)
    for name in sorted(set(a["schedules"]) & set(b["schedules"])):
        la, lb = np.array(a["schedules"][name]), np.array(b["schedules"][name])
        if la.shape != lb.shape:
            print(f"lr {name}: {len(la)} vs {len(lb)} iterations")
            failed = True
            continue
        rel = float(np.max(np.abs(la - lb) / np.maximum(np.abs(la), 1e-30)))
        exact = bool(np.array_equal(la, lb))
        print(
            f"lr {name}: {len(la)} iterations, " + ("identical" if exact else f"max rel {rel:.2e}")
        )
        failed |= rel > 1e-12
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("save", help="run every family, write the results").add_argument("output")
    cmp = sub.add_parser("compare", help="compare two saved results")
    cmp.add_argument("first")
    cmp.add_argument("second")
    args = parser.parse_args(argv)
    if args.command == "save":
        save(args.output)
        return 0
    return compare(args.first, args.second)


if __name__ == "__main__":
    sys.exit(main())
