"""The custom training script of GETTING_STARTED.md: Trainer's class methods without a Trainer."""

import torch
from detectron2.evaluation import inference_on_dataset
from detectron2.utils.events import EventStorage
from helpers import TINY_OPTS, load_cfg, one_thread, register_tiny

from panoptic_ext.engine import Trainer, build_evaluators


def test_documented_custom_loop_trains_and_evaluates():
    register_tiny()
    cfg = load_cfg("quick_schedules/panoptic_fpn_synthetic.yaml", *map(str, TINY_OPTS))
    cfg.SOLVER.MAX_ITER = 2
    with one_thread():
        model = Trainer.build_model(cfg)
        optimizer = Trainer.build_optimizer(cfg, model)
        scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
        loader = Trainer.build_train_loader(cfg)
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        with EventStorage(0):
            for _, batch in zip(range(cfg.SOLVER.MAX_ITER), loader):
                loss = sum(model(batch).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
        after = [p for p in model.parameters() if p.requires_grad]
        assert any(not torch.equal(a, b) for a, b in zip(after, before))
        model.eval()
        (name,) = cfg.DATASETS.TEST
        results = inference_on_dataset(
            model, Trainer.build_test_loader(cfg, name), build_evaluators(cfg, name)
        )
    assert {"panoptic_seg", "sem_seg"} <= set(results)
    assert 0.0 <= results["panoptic_seg"]["PQ"] <= 100.0
