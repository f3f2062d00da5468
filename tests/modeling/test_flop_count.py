"""detectron2's flop counting (``tools/analyze_model.py --tasks flop``) on every model family."""

import pytest
import torch
from detectron2.utils.analysis import FlopCountAnalysis
from helpers import QUICK_SCHEDULES, TINY_OPTS, build_tiny_model, load_cfg, one_thread, tiny_batch


@pytest.mark.parametrize("config", QUICK_SCHEDULES)
def test_flop_count_traces_each_family(config):
    cfg = load_cfg(f"quick_schedules/{config}", *map(str, TINY_OPTS))
    model = build_tiny_model(cfg).eval()
    inputs = tiny_batch(cfg, (1,), is_train=False)  # image 1 has things
    with one_thread(), torch.no_grad():
        flops = FlopCountAnalysis(model, inputs)
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total = flops.total()
    # The whole model was traced: the backbone's convolutions (64x64 input) count tens of
    # MFLOPs, and the heads after it count too.
    by_module = flops.by_module()
    assert by_module["model.backbone"] > 1e7, by_module["model.backbone"]
    assert total > 1.05 * by_module["model.backbone"], total
