"""WarmupPolyLR: the official Panoptic FCN schedule, built by the Trainer from the config."""

import pytest
import torch
from detectron2.config import get_cfg

from panoptic_ext import add_panoptic_ext_config
from panoptic_ext.engine import Trainer
from panoptic_ext.utils.yaml_config import merge_config_file


def _cfg(**solver):
    cfg = add_panoptic_ext_config(get_cfg())
    merge_config_file(cfg, "configs/COCO-PanopticSegmentation/panoptic_fcn_R_50_1x.yaml")
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


def _lrs(cfg, num_iters):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.SOLVER.BASE_LR, momentum=0.9)
    sched = Trainer.build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(num_iters):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def _reference(it, base, max_iter, warmup_iters, warmup_factor, power, ending=0.0):
    # Official rule: multiplicative linear warmup, then (1 - it / max_iter)^power with a floor.
    if it < warmup_iters:
        alpha = it / warmup_iters
        return base * (warmup_factor * (1 - alpha) + alpha) * (1 - it / max_iter) ** power
    poly = (1 - it / max_iter) ** power
    return base * (max(poly, ending) if ending > 0 else poly)


def test_coco_config_uses_official_poly_schedule():
    cfg = _cfg(MAX_ITER=100, WARMUP_ITERS=10)
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR"
    assert cfg.SOLVER.POLY_LR_POWER == 0.9
    lrs = _lrs(cfg, 100)
    expected = [_reference(i, 0.01, 100, 10, 0.001, 0.9) for i in range(100)]
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert lrs[0] == pytest.approx(0.01 * 0.001)
    assert max(lrs) == pytest.approx(lrs[10])  # peak right after warmup
    assert lrs[99] == pytest.approx(0.01 * 0.01**0.9)  # decays to ~0 at the end


def test_constant_ending_floors_the_decay_after_warmup():
    cfg = _cfg(MAX_ITER=100, WARMUP_ITERS=10, POLY_LR_CONSTANT_ENDING=0.2)
    lrs = _lrs(cfg, 100)
    expected = [_reference(i, 0.01, 100, 10, 0.001, 0.9, 0.2) for i in range(100)]
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert min(lrs[10:]) == pytest.approx(0.002)
    assert lrs[0] < 0.002  # the floor does not apply during warmup


def test_other_schedules_stay_detectron2s():
    cfg = _cfg(MAX_ITER=100, WARMUP_ITERS=0, LR_SCHEDULER_NAME="WarmupCosineLR")
    lrs = _lrs(cfg, 51)
    assert lrs[50] == pytest.approx(0.005, rel=1e-6)  # cosine half-way


@pytest.mark.parametrize(
    "solver, match",
    [
        ({"WARMUP_METHOD": "exp"}, "SOLVER.WARMUP_METHOD"),
        ({"POLY_LR_POWER": -1.0}, "SOLVER.POLY_LR_POWER"),
        ({"POLY_LR_CONSTANT_ENDING": 1.5}, "SOLVER.POLY_LR_CONSTANT_ENDING"),
    ],
)
def test_bad_values_name_the_key(solver, match):
    with pytest.raises(ValueError, match=match):
        _lrs(_cfg(MAX_ITER=100, WARMUP_ITERS=10, **solver), 1)


def test_it_is_deeplabs_scheduler():
    from detectron2.projects.deeplab.lr_scheduler import WarmupPolyLR

    cfg = _cfg(MAX_ITER=100, WARMUP_ITERS=10)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    assert isinstance(Trainer.build_lr_scheduler(cfg, optimizer), WarmupPolyLR)
