"""Weights that cannot be right: NaN/Inf tensors, files that fill nothing (or no head, for
inference), foreign layouts named with their converter, a resume into another model."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from panoptic_ext.checkpoint import SafeCheckpointer
from panoptic_ext.checkpoint.weight_checks import (
    NonFiniteWeightsError,
    ResumeMismatchError,
    WeightsMismatchError,
    changed_model_keys,
    check_coverage,
    check_finite,
    recognise_layout,
)


class _Model(nn.Module):
    """A backbone and two heads, as detectron2 meta-architectures are laid out."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.backbone = nn.Conv2d(3, width, 1)
        self.box_head = nn.Linear(width, 2)
        self.mask_head = nn.Linear(width, 3)


def _save(path, state, **extra) -> str:
    torch.save({"model": state, **extra}, path)
    return str(path)


def test_check_finite_names_each_bad_tensor_and_counts():
    state = {"a": torch.tensor([1.0, float("nan"), float("inf")]), "b": torch.ones(2),
             "c": np.array([np.nan]), "steps": torch.tensor([3]), "note": "text"}  # fmt: skip
    with pytest.raises(NonFiniteWeightsError) as err:
        check_finite(state, "w.pth")
    assert str(err.value).startswith(
        "Refusing weights w.pth: 2 tensor(s) hold NaN/Inf values: a (1 NaN, 1 Inf of 3 values), "
        "c (1 NaN, 0 Inf of 1 values)."
    )
    check_finite({"b": torch.ones(2), "i": torch.arange(3)}, "ok.pth")


@pytest.mark.parametrize(
    "keys, command",
    [
        (["Conv_Body.conv_body.res2.0.conv1.weight", "Box_Outs.cls_score.weight",
          "Mask_Outs.classify.weight"], "panoptic-ext-convert-panet-official"),
        (["module.RPN.RPN_conv.weight", "module.Box_Head.conv1_head.0.0.weight"],
         "panoptic-ext-convert-panet-official"),
        (["backbone.bottom_up.stem.conv1.weight",
          "position_head.position_head.position_head_head_0.weight",
          "kernel_head.kernel_head.kernel_head_head_0.weight"],
         "panoptic-ext-convert-panoptic-fcn"),
        (["backbone.bottom_up.stem.conv1.weight", "roi_heads.box_head.fc1.weight"], None),
    ],
    ids=["panet", "panet_ddp", "panoptic_fcn", "detectron2"],
)  # fmt: skip
def test_foreign_layouts_are_recognised_by_their_names(keys, command):
    hint = recognise_layout(keys)
    assert (hint is None) == (command is None)
    if command:
        assert f"convert the file first with `{command}`" in hint


def test_coverage_allows_backbone_only_for_training_only():
    model = ["backbone.weight", "backbone.bias", "box_head.weight", "mask_head.weight"]
    loaded = ["backbone.weight", "backbone.bias"]
    check_coverage(model, loaded, loaded, [], "r50.pkl", inference=False)
    with pytest.raises(WeightsMismatchError, match=r"they leave the head\(s\) box_head, "
                       r"mask_head of the model entirely at random"):  # fmt: skip
        check_coverage(model, loaded, loaded, [], "r50.pkl", inference=True)
    # One head partly filled (another class count) is detectron2's fine-tuning case.
    check_coverage(model, [*loaded, "box_head.weight", "mask_head.weight"], loaded, [],
                   "w.pth", inference=True)  # fmt: skip
    with pytest.raises(WeightsMismatchError, match=r"they fill none of the model's 4 tensors"):
        check_coverage(model, [], ["x.w"], ["x.w"], "other.pth", inference=False)


def test_checkpointer_refuses_nan_empty_and_foreign_weights(tmp_path):
    model = _Model()
    state = model.state_dict()
    bad = {**state, "mask_head.bias": torch.tensor([0.0, float("nan"), 0.0])}
    with pytest.raises(NonFiniteWeightsError, match=r"mask_head.bias \(1 NaN"):
        SafeCheckpointer(model).load(_save(tmp_path / "nan.pth", bad))
    with pytest.raises(WeightsMismatchError, match="MODEL.WEIGHTS is empty"):
        SafeCheckpointer(model, inference=True).resume_or_load("", resume=False)
    SafeCheckpointer(model).resume_or_load("", resume=False)  # training from scratch: fine
    foreign = {"Conv_Body.conv1.weight": torch.ones(1), "Box_Outs.cls_score.weight": torch.ones(1)}
    with pytest.raises(WeightsMismatchError) as err:
        SafeCheckpointer(model).load(_save(tmp_path / "panet.pth", foreign))
    msg = str(err.value)
    assert "they fill none of the model's 6 tensors" in msg
    assert "model tensors not in the file: backbone.bias, backbone.weight, box_head.bias, " in msg
    assert "tensors of the file the model does not use: Box_Outs.cls_score.weight, " \
           "Conv_Body.conv1.weight" in msg  # fmt: skip
    assert "`panoptic-ext-convert-panet-official`" in msg


def test_nan_last_checkpoint_stops_resume_instead_of_falling_back(tmp_path):
    model = _Model()
    _save(tmp_path / "model_0000000.pth", model.state_dict())
    bad = {k: v.clone().fill_(float("nan")) for k, v in model.state_dict().items()}
    _save(tmp_path / "model_0000001.pth", bad)
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    with pytest.raises(NonFiniteWeightsError, match="model_0000001.pth: 6 tensor"):
        SafeCheckpointer(_Model(), str(tmp_path)).resume_or_load("", resume=True)


def test_resume_into_another_model_names_tensors_and_changed_keys(tmp_path):
    saved_cfg = "MODEL:\n  WIDTH: 4\n  DEVICE: cuda\nSOLVER:\n  MAX_ITER: 10\n"
    now_cfg = "MODEL:\n  WIDTH: 8\n  DEVICE: cpu\nSOLVER:\n  MAX_ITER: 20\n"
    writer = SafeCheckpointer(_Model(4), str(tmp_path), config_yaml=saved_cfg)
    writer.save("model_0000009")
    reader = SafeCheckpointer(_Model(8), str(tmp_path), config_yaml=now_cfg)
    for check in (reader.check_resume, lambda: reader.resume_or_load("", resume=True)):
        with pytest.raises(ResumeMismatchError) as err:
            check()
        msg = str(err.value)
        assert msg.startswith(f"Cannot --resume from {tmp_path}/model_0000009.pth: it was saved")
        assert (
            "tensors changed shape: backbone.weight (4, 3, 1, 1) in the file, (8, 3, 1, 1)" in msg
        )
        assert "against the config saved in the checkpoint):\n    MODEL.WIDTH: 4 -> 8\n" in msg
        assert "DEVICE" not in msg and "MAX_ITER" not in msg
    # The same model resumes; a run saved before configs were kept uses OUTPUT_DIR/config.yaml.
    SafeCheckpointer(_Model(4), str(tmp_path), config_yaml=saved_cfg).check_resume()
    os.remove(tmp_path / "model_0000009.pth")
    _save(tmp_path / "model_0000009.pth", _Model(4).state_dict())
    (tmp_path / "config.yaml").write_text(saved_cfg)
    with pytest.raises(ResumeMismatchError, match=r"against .*config.yaml\):\n    MODEL.WIDTH"):
        reader.check_resume()


def test_changed_model_keys_ignores_weights_device_and_other_sections():
    saved = "MODEL:\n  WEIGHTS: a.pth\n  A: [1, 2]\n  B: {C: 1}\nSOLVER: {LR: 1}\n"
    now = "MODEL:\n  WEIGHTS: b.pth\n  A: [1, 2]\n  B: {C: 2, D: 0}\nSOLVER: {LR: 2}\n"
    assert changed_model_keys(saved, now) == ["MODEL.B.C: 1 -> 2", "MODEL.B.D: '<absent>' -> 0"]


def test_d2_checkpoint_reader_refuses_nan(tmp_path):
    """The PANet-from-detectron2 path (checkpoint report, converter) reads through the same
    check."""
    from panoptic_ext.checkpoint import read_d2_checkpoint

    path = _save(tmp_path / "d2.pth", {"roi_heads.box_head.fc1.weight": torch.full((2,), np.inf)})
    with pytest.raises(NonFiniteWeightsError, match=r"fc1.weight \(0 NaN, 2 Inf of 2 values\)"):
        read_d2_checkpoint(path)


def test_resume_ignores_old_detectron2_anchor_buffers(tmp_path):
    """detectron2 checkpoints from before cell_anchors became non-persistent still resume."""
    state = {**_Model().state_dict(), "anchor_generator.cell_anchors.0": torch.zeros(3, 4)}
    _save(tmp_path / "model_0000001.pth", state)
    SafeCheckpointer(_Model(), str(tmp_path)).check_resume()
