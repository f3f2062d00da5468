"""Device tests of the whole model families: CPU in CI, CUDA on a GPU (``dev/gpu_check.py``).

Batch-N inference equals per-image inference, deterministic mode repeats a run, and the sparse
RoIAlign backward of adaptive feature pooling is used on CPU only (torchvision's kernel on CUDA).
One train step + inference per family and precision: ``engine/test_amp.py``; Panoptic FCN's
batch-N test: ``modeling/panoptic_fcn/test_panoptic_fcn_model.py``.
"""

import warnings

import pytest
import torch
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage
from helpers import (
    DEVICES,
    KEEP_ALL_DETECTIONS_OPTS,
    TINY_OPTS,
    build_tiny_model,
    full_fp32,
    load_cfg,
    one_thread,
    tiny_batch,
)

from panoptic_ext.modeling.roi_heads.afp_pooler import AdaptiveFeaturePooler
from panoptic_ext.utils.determinism import enable_deterministic_mode

FAMILIES = {
    "semantic_fpn": "quick_schedules/semantic_fpn_synthetic.yaml",
    "panoptic_fpn": "quick_schedules/panoptic_fpn_synthetic.yaml",
    "panet": "quick_schedules/panet_synthetic.yaml",
}


def _cfg(family: str, device: str, *opts):
    extra = KEEP_ALL_DETECTIONS_OPTS if family != "semantic_fpn" else []
    return load_cfg(FAMILIES[family], *TINY_OPTS, *extra, "MODEL.DEVICE", device, *opts)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_batched_inference_equals_single_images(family, device):
    cfg = _cfg(family, device)
    model = build_tiny_model(cfg).eval()
    inputs = tiny_batch(cfg, (1, 2, 3), is_train=False)
    with torch.no_grad(), one_thread(), full_fp32():
        batched = model(inputs)
        single = [model([x])[0] for x in inputs]
    assert len(batched) == 3
    for b, s in zip(batched, single):
        torch.testing.assert_close(b["sem_seg"], s["sem_seg"], rtol=1e-4, atol=1e-4)
        if "instances" not in b:
            continue
        assert len(b["instances"]) == len(s["instances"]) > 0
        # Random-init scores are close to each other: compare them sorted (ties may reorder).
        scores = [x["instances"].scores.sort().values for x in (b, s)]
        torch.testing.assert_close(*scores, rtol=1e-4, atol=1e-4)
        seg_b, seg_s = b["panoptic_seg"][0], s["panoptic_seg"][0]
        assert (seg_b == seg_s).float().mean() > 0.99


def _train_and_infer(cfg) -> tuple[dict, list, list[str]]:
    """Deterministic mode, model, 2 SGD steps, inference twice; the warnings PyTorch raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enable_deterministic_mode(cfg)
        batch = tiny_batch(cfg, (0, 3))
        model = build_tiny_model(cfg).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for _ in range(2):
            with EventStorage():
                loss = sum(model(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        inputs = tiny_batch(cfg, (1, 2), is_train=False)
        with torch.no_grad():
            outputs = [model(inputs) for _ in range(2)]
    nondeterministic = [str(w.message) for w in caught if "deterministic" in str(w.message)]
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return state, outputs, nondeterministic


def _same_outputs(a: list[dict], b: list[dict]) -> bool:
    return all(
        torch.equal(x["sem_seg"], y["sem_seg"])
        and torch.equal(x["panoptic_seg"][0], y["panoptic_seg"][0])
        and torch.equal(x["instances"].scores, y["instances"].scores)
        for x, y in zip(a, b)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_mode_repeats_a_run(device):
    """CPU: two runs end bit-identical. CUDA: inference is bit-identical; training is too unless
    PyTorch warned about an op without a deterministic CUDA kernel (README "Deterministic mode"),
    and then the weights still agree to 1e-3."""
    cfg = _cfg("panoptic_fpn", device, "DETERMINISTIC", True, "SEED", 3)
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        with one_thread():
            (w1, out1, warned), (w2, out2, _) = (_train_and_infer(cfg) for _ in range(2))
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[2:]
    assert _same_outputs(*out2), "two inference passes of one model differ"
    assert sum(len(o["instances"]) for o in out2[0]) > 0
    if device == "cpu" or not warned:
        assert all(torch.equal(w1[k], w2[k]) for k in w1), f"runs differ; warnings: {warned}"
        assert _same_outputs(out1[0], out2[0])
        return
    print("ops without a deterministic CUDA kernel:", *sorted(set(warned)), sep="\n  ")
    for k in w1:
        if w1[k].is_floating_point():
            torch.testing.assert_close(w1[k], w2[k], rtol=1e-3, atol=1e-5, msg=k)


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_roi_align_backward_used_on_cpu_only(device):
    """AFP in training: the sparse-matrix RoIAlign backward on CPU, torchvision's on CUDA; both
    give torchvision's gradient (detectron2's per-level poolers are the reference)."""
    pooler = ROIPooler((7, 7), (1 / 4, 1 / 8), sampling_ratio=2, pooler_type="ROIAlignV2")
    afp = AdaptiveFeaturePooler.from_roi_pooler(pooler)
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 8, s, s, generator=g).to(device).requires_grad_() for s in (32, 16)]
    boxes = [
        Boxes(torch.tensor([[4.0, 4.0, 60.0, 50.0], [0.0, 0.0, 127.0, 127.0]], device=device)),
        Boxes(torch.tensor([[30.0, 20.0, 31.0, 90.0]], device=device)),
    ]
    out = afp(feats, boxes)
    backward = {fn.name() for fn, _ in out.grad_fn.next_functions}
    if device == "cpu":
        assert backward == {"_RoIAlignSparseGradBackward"}
    else:
        (name,) = backward
        assert "Sparse" not in name and "roialign" in name.lower().replace("_", ""), name
    grad = torch.randn(out.shape, generator=g).to(device)
    got = torch.autograd.grad(out, feats, grad)
    rois = convert_boxes_to_pooler_format(boxes)
    ref = torch.stack([p(f, rois) for p, f in zip(pooler.level_poolers, feats)])
    assert torch.equal(out, ref)
    for g_got, g_want in zip(got, torch.autograd.grad(ref, feats, grad)):
        assert g_want.abs().sum() > 0
        torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-5)
