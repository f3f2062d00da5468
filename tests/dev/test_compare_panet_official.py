"""dev/compare_panet_official.py: the pieces that need no official code (shims, matching,
config checks), and, when a checkout of ShuLiu1993/PANet is found (``PANET_OFFICIAL_ROOT`` or
``../ref/PANet`` next to the repository; CI has none), the official model build and one parity
run."""

import os
import sys

import numpy as np
import pytest
import torch
from detectron2.config import CfgNode
from helpers import REPO
from torchvision.ops import nms, roi_align

import dev.compare_panet_official

OFFICIAL_ROOT = os.environ.get(
    "PANET_OFFICIAL_ROOT", os.path.join(os.path.dirname(REPO), "ref", "PANet")
)
HAS_OFFICIAL = os.path.isfile(os.path.join(OFFICIAL_ROOT, "lib", "modeling", "model_builder.py"))
needs_official = pytest.mark.skipif(not HAS_OFFICIAL, reason="no ShuLiu1993/PANet checkout")


@pytest.fixture(scope="module")
def tool():
    return dev.compare_panet_official


@pytest.fixture
def official_imports():
    """Undo what importing the official code leaves in this process: its ``lib`` on sys.path,
    its top-level modules (``core``, ``utils``, ``nn``, ``model``...), the shims' stand-ins and
    numpy aliases, so that later tests see the usual module namespace."""
    path, modules = list(sys.path), set(sys.modules)
    aliases = [a for a in ("float", "int", "bool", "object") if a not in np.__dict__]
    yield
    sys.path[:] = path
    lib = os.path.join(os.path.abspath(OFFICIAL_ROOT), "lib")
    for name in set(sys.modules) - modules:
        mod = sys.modules[name]
        origin = getattr(mod, "__file__", None) or ""
        if origin.startswith(lib) or getattr(mod, "__spec__", None) is None:
            del sys.modules[name]
    for a in aliases:
        if a in np.__dict__:
            delattr(np, a)


def official_like_cfg(mask: bool = True, two_fc: bool = False) -> CfgNode:
    """The official cfg values the tool reads (Detectron defaults + configs/panet/*.yaml)."""
    box_head = "roi_2mlp_head_gn_panet" if two_fc else "roi_Xconv1fc_gn_head_panet"
    return CfgNode(
        {
            "PIXEL_MEANS": [[[102.9801, 115.9465, 122.7717]]],
            "RESNETS": {
                "STRIDE_1X1": True,
                "NUM_GROUPS": 1,
                "WIDTH_PER_GROUP": 64,
                "RES5_DILATION": 1,
            },
            "FPN": {
                "DIM": 256,
                "USE_GN": True,
                "RPN_ASPECT_RATIOS": (0.5, 1, 2),
                "RPN_ANCHOR_START_SIZE": 32,
                "RPN_MIN_LEVEL": 2,
                "RPN_MAX_LEVEL": 6,
                "RPN_COLLECT_SCALE": 1,
            },
            "MODEL": {
                "NUM_CLASSES": 81,
                "BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0),
                "CLS_AGNOSTIC_BBOX_REG": False,
                "MASK_ON": mask,
            },
            "TEST": {
                "SCORE_THRESH": 0.05,
                "NMS": 0.5,
                "DETECTIONS_PER_IM": 100,
                "RPN_NMS_THRESH": 0.7,
                "RPN_PRE_NMS_TOP_N": 1000,
                "RPN_POST_NMS_TOP_N": 1000,
                "SCALE": 1000,
                "MAX_SIZE": 1400,
            },
            "FAST_RCNN": {
                "ROI_BOX_HEAD": f"fast_rcnn_heads.{box_head}",
                "ROI_XFORM_RESOLUTION": 7,
                "ROI_XFORM_SAMPLING_RATIO": 2,
                "MLP_HEAD_DIM": 1024,
                "CONV_HEAD_DIM": 256,
                "NUM_STACKED_CONVS": 4,
            },
            "MRCNN": {
                "ROI_MASK_HEAD": "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs_gn_adp_ff",
                "DIM_REDUCED": 256,
                "CLS_SPECIFIC_MASK": True,
                "ROI_XFORM_RESOLUTION": 14,
                "ROI_XFORM_SAMPLING_RATIO": 2,
            },
        }
    )


VARIANTS = {"mask_2x": (True, False), "det_1x": (False, False), "det_2fc_1x": (False, True)}


# ---------------------------------------------------------------------------------------------
# Shims
# ---------------------------------------------------------------------------------------------
def test_detectron_nms_uses_plus_one_and_greater_equal(tool):
    # Detectron IoU of these two: inter 10x5 / (100 + 50 - 50) = 0.5 exactly -> suppressed
    # (>= 0.5); the continuous IoU (torchvision) is 36 / 81 = 0.44 -> kept.
    dets = np.array([[0, 0, 9, 9, 0.9], [0, 0, 9, 4, 0.8]], np.float32)
    assert tool.detectron_nms(dets, 0.5).tolist() == [0]
    kept = nms(torch.from_numpy(dets[:, :4]), torch.from_numpy(dets[:, 4]), 0.5)
    assert kept.tolist() == [0, 1]
    assert tool.detectron_nms(np.zeros((0, 5), np.float32), 0.5).shape == (0,)


def test_detectron_nms_matches_a_direct_greedy_loop(tool):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (60, 2))
    wh = rng.uniform(2, 40, (60, 2))
    dets = np.hstack([xy, xy + wh, rng.uniform(0, 1, (60, 1))]).astype(np.float32)
    iou = tool.detectron_bbox_overlaps(dets[:, :4], dets[:, :4])
    keep, alive = [], np.ones(len(dets), bool)
    for i in np.argsort(-dets[:, 4]):
        if alive[i]:
            keep.append(i)
            alive &= ~(iou[i] >= 0.3)
    assert tool.detectron_nms(dets, 0.3).tolist() == sorted(keep)


def test_detectron_bbox_overlaps(tool):
    boxes = np.array([[0, 0, 9, 9]], np.float32)
    query = np.array([[0, 0, 9, 4], [10, 0, 19, 9], [0, 0, 9, 9]], np.float32)
    np.testing.assert_allclose(tool.detectron_bbox_overlaps(boxes, query), [[0.5, 0.0, 1.0]])


def test_roi_align_stand_in_is_the_non_aligned_roi_align(tool):
    feat = torch.arange(16.0).view(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0]])
    # One bin, one sample at the RoI centre (1, 1) -> feat[1, 1] = 5 (aligned: (0.5, 0.5)).
    out = tool._RoIAlign(1, 1, 1.0, 1)(feat, rois)
    assert out.item() == pytest.approx(5.0)
    assert roi_align(feat, rois, (1, 1), 1.0, 1, aligned=True).item() == pytest.approx(2.5)
    feat = torch.randn(2, 3, 20, 24)
    rois = torch.tensor([[1, 2.5, 3.0, 17.2, 11.9], [0, 0.0, 0.0, 0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(
        tool._RoIAlign(7, 7, 0.5, 2)(feat, rois),
        roi_align(feat, rois.float(), (7, 7), 0.5, 2, aligned=False),
    )


def test_shims_make_the_official_imports_resolvable(tool, official_imports):
    tool.install_official_shims()
    assert sys.modules["utils.cython_nms"].nms is tool.detectron_nms
    align = sys.modules["modeling.roi_xfrom.roi_align.functions.roi_align"]
    assert align.RoIAlignFunction is tool._RoIAlign
    assert sys.modules["nn.parallel"].DataParallel is torch.nn.DataParallel
    six = sys.modules["six"]
    assert isinstance("x", six.string_types) and six.moves.cPickle.loads
    assert np.float is float
    with pytest.raises(NotImplementedError):
        sys.modules["model.roi_crop.functions.roi_crop"].RoICropFunction()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the shim is a no-op with CUDA")
def test_cuda_calls_keep_cpu_tensors_inside_the_context_only(tool):
    x = torch.zeros(2)
    with tool.cpu_cuda_calls():
        assert x.cuda(x.get_device()) is x
    with pytest.raises((AssertionError, RuntimeError)):
        x.cuda(-1)


# ---------------------------------------------------------------------------------------------
# Matching, rows, inputs
# ---------------------------------------------------------------------------------------------
def _det(tool, cls: int, score: float, box: tuple) -> object:
    return tool.Detection(cls, score, np.asarray(box, np.float64))


def test_match_detections_by_class_score_and_overlap(tool):
    theirs = [
        _det(tool, 1, 0.9, (0, 0, 10, 10)),
        _det(tool, 1, 0.5, (20, 20, 30, 30)),
        _det(tool, 1, 0.5, (50, 50, 60, 60)),  # same score: told apart by the box
        _det(tool, 2, 0.7, (0, 0, 5, 5)),
    ]
    ours = [
        _det(tool, 1, 0.50001, (50.4, 50, 60.4, 60)),
        _det(tool, 1, 0.49999, (20.5, 20, 30.5, 30)),
        _det(tool, 1, 0.9, (0, 0, 11, 10)),
        _det(tool, 3, 0.7, (0, 0, 5, 5)),  # other class
    ]
    m = tool.match_detections(ours, theirs, 1e-3)
    assert len(m.pairs) == 3
    assert all(a.cls == b.cls and tool.box_iou(a.box, b.box) > 0.8 for a, b in m.pairs)
    assert [d.cls for d in m.unmatched_ours] == [3] and [d.cls for d in m.unmatched_theirs] == [2]
    assert m.max_box_diff() == pytest.approx(1.0)
    assert m.max_score_diff() == pytest.approx(1e-5, abs=1e-9)
    # A score difference beyond the tolerance leaves both unmatched.
    m = tool.match_detections([_det(tool, 1, 0.9002, (0, 0, 10, 10))], theirs[:1], 1e-4)
    assert not m.pairs


def test_ious(tool):
    assert tool.box_iou(np.array([0, 0, 10, 10]), np.array([0, 0, 10, 5])) == 0.5
    assert tool.box_iou(np.array([5, 5, 5, 9]), np.array([5, 5, 5, 9])) == 0.0  # empty
    a = np.zeros((4, 4), bool)
    a[:2] = True
    assert tool.mask_iou(a, a) == 1.0 and tool.mask_iou(a, ~a) == 0.0
    assert tool.mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_diff_row(tool):
    b = torch.tensor([1.0, -4.0], dtype=torch.float64)
    row = tool.diff_row("x", b + torch.tensor([0.0, 2e-4], dtype=torch.float64), b, 1e-4)
    assert row.max_abs == pytest.approx(2e-4) and row.max_rel == pytest.approx(5e-5)
    assert not row.failed
    assert tool.diff_row("x", b * 1.01, b, 1e-4).failed
    assert tool.diff_row("x", b[:1], b, 1e-4).failed  # shape mismatch
    assert not tool.diff_row("x", b * 2, b, None).failed  # reported only


def test_inputs(tool):
    cfg = tool.our_config("det_1x", [])
    images = tool.make_images(cfg, "random", 2, (64, 96), 0)
    assert [name for name, _ in images] == ["random0", "random1"]
    assert all(img.shape == (64, 96, 3) and img.dtype == np.uint8 for _, img in images)
    assert not np.array_equal(images[0][1], images[1][1])
    with pytest.raises(SystemExit, match="multiples of 32"):
        tool.make_images(cfg, "random", 1, (60, 96), 0)
    boxes = tool.extra_boxes(100, (64, 96), 0)
    assert boxes.shape == (100, 4) and (boxes[:, :2] >= 0).all()
    assert (boxes[:, 2] <= 95).all() and (boxes[:, 3] <= 63).all()
    assert (boxes[:, 2:] - boxes[:, :2] >= 6.9).all()


def test_randomize_biases_and_norms(tool):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Linear(4, 4, bias=True)
    )
    assert tool.randomize_biases_and_norms(model, 0) == 4  # conv bias, GN weight + bias, fc bias
    gn = model[1]
    assert ((gn.weight >= 0.5) & (gn.weight <= 1.5)).all()
    for p in (model[0].bias, gn.bias, model[2].bias):
        assert (p != 0).all()


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_our_official_configs_have_the_official_settings(tool, variant):
    official = official_like_cfg(*VARIANTS[variant])
    assert tool.config_mismatches(tool.our_config(variant, []), official) == []


def test_config_mismatches_are_reported(tool):
    cfg = tool.our_config("mask_2x", ["MODEL.PANET.FF_RELU", False])
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    bad = tool.config_mismatches(cfg, official_like_cfg())
    assert len(bad) == 2
    assert any("FF_RELU" in b for b in bad) and any("ROIAlignV2" in b for b in bad)
    # The 2fc head in place of the conv head: every structural key is named.
    bad = tool.config_mismatches(tool.our_config("det_1x", []), official_like_cfg(False, True))
    assert {b.split(":")[0] for b in bad} >= {
        "MODEL.ROI_BOX_HEAD.NUM_CONV",
        "MODEL.ROI_BOX_HEAD.NUM_FC",
        "MODEL.PANET.BOX_FC_NORM",
    }


def test_our_checkpoint_is_refused(tool):
    with pytest.raises(SystemExit, match="ours -> official"):
        tool.main(
            [
                "--official-root",
                "/nonexistent",
                "--weights",
                "x.pth",
                "--images",
                "random",
                "--size",
                "64x64",
            ]
        )


# ---------------------------------------------------------------------------------------------
# With the official checkout
# ---------------------------------------------------------------------------------------------
@needs_official
def test_official_models_build_and_their_keys_are_listed(tool, tmp_path, official_imports):
    out = tmp_path / "keys.txt"
    tool.dump_official_keys(OFFICIAL_ROOT, str(out))
    lines = out.read_text().splitlines()
    assert len([x for x in lines if x.startswith("#")]) == 3
    counts = {}
    for line in lines[3:]:
        config, key, _ = line.split(" ", 2)
        counts[config] = counts.get(config, 0) + 1
    assert counts == {
        "e2e_panet_R-50-FPN_2x_mask.yaml": 273,
        "e2e_panet_R-50-FPN_1x_det.yaml": 240,
        "e2e_panet_R-50-FPN_1x_det_2fc.yaml": 237,
    }
    assert "e2e_panet_R-50-FPN_2x_mask.yaml Mask_Outs.classify.weight (81, 256, 1, 1)" in lines
    official = tool.import_official(OFFICIAL_ROOT)
    for variant, (mask, two_fc) in VARIANTS.items():
        ocfg = tool.official_cfg(official, OFFICIAL_ROOT, variant)
        assert tool.config_mismatches(tool.our_config(variant, []), ocfg) == []
        assert bool(ocfg.MODEL.MASK_ON) == mask
        assert ocfg.FAST_RCNN.ROI_BOX_HEAD.endswith("2mlp_head_gn_panet") == two_fc


@needs_official
@pytest.mark.slow
def test_parity_run_on_a_small_image(tool, capsys, official_imports):
    rc = tool.main(
        [
            "--official-root",
            OFFICIAL_ROOT,
            "--variant",
            "det_2fc_1x",
            "--images",
            "random",
            "--size",
            "160x224",
            "--num-boxes",
            "16",
            "--accept-postprocess",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "RESULT: OK" in out and "box features" in out
    assert "official post-processing of our raw outputs vs official" in out
