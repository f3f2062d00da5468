"""tools/convert_panoptic_fcn_official.py on a state dict with the official names and shapes
(generated here from the key table of the official R50 model, no official code)."""

import functools
import importlib

import pytest
import torch
from helpers import build_tiny_model, load_cfg

from panoptic_ext.modeling.panoptic_fcn.official_keys import official_to_ours, ours_to_official

R50_1X = "COCO-PanopticSegmentation/panoptic_fcn_R_50_1x.yaml"


@functools.cache
def _load_tool():
    return importlib.import_module("panoptic_ext.cli.convert_panoptic_fcn_official")


def official_r50_state_dict(things: int = 80, stuff: int = 54, e: int = 64, d: int = 256):
    """Official Panoptic FCN R50 names and shapes; values are distinct small random numbers."""
    g = torch.Generator().manual_seed(0)
    sd = {}

    def add(name, *shape):
        sd[name] = torch.rand(shape, generator=g)

    def norm(prefix, c, frozen=True):
        for s in ("weight", "bias") + (("running_mean", "running_var") if frozen else ()):
            add(f"{prefix}.norm.{s}", c)

    bu = "backbone.bottom_up"
    add(f"{bu}.stem.conv1.weight", 64, 3, 7, 7)
    norm(f"{bu}.stem.conv1", 64)
    cin, cout, mid = 64, 256, 64
    for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
        for i in range(blocks):
            p = f"{bu}.res{stage}.{i}"
            if i == 0:
                add(f"{p}.shortcut.weight", cout, cin, 1, 1)
                norm(f"{p}.shortcut", cout)
            add(f"{p}.conv1.weight", mid, cin if i == 0 else cout, 1, 1)
            add(f"{p}.conv2.weight", mid, mid, 3, 3)
            add(f"{p}.conv3.weight", cout, mid, 1, 1)
            for conv, c in (("conv1", mid), ("conv2", mid), ("conv3", cout)):
                norm(f"{p}.{conv}", c)
        cin, cout, mid = cout, cout * 2, mid * 2
    for lvl, c in zip((2, 3, 4, 5), (256, 512, 1024, 2048)):
        add(f"backbone.fpn_lateral{lvl}.weight", d, c, 1, 1)
        add(f"backbone.fpn_lateral{lvl}.bias", d)
        add(f"backbone.fpn_output{lvl}.weight", d, d, 3, 3)
        add(f"backbone.fpn_output{lvl}.bias", d)
    for p in ("p6", "p7"):
        add(f"backbone.top_block.{p}.weight", d, d, 3, 3)
        add(f"backbone.top_block.{p}.bias", d)
    for name in ("p2.0", "p3.0", "p4.0", "p4.2", "p5.0", "p5.2", "p5.4"):
        add(f"semantic_fpn.{name}.weight", d, d, 3, 3)
        norm(f"semantic_fpn.{name}", d, frozen=False)
    for k in (1, 2, 3):
        p = f"position_head.position_head.position_head_head_{k}"
        add(f"{p}.offset_mask_conv.weight", 27, d, 3, 3)
        add(f"{p}.offset_mask_conv.bias", 27)
        add(f"{p}.dcnv2.weight", d, d, 3, 3)
        norm(f"{p}.dcnv2", d, frozen=False)
    for name, c in (("out_inst", things), ("out_sem", stuff)):
        add(f"position_head.{name}.weight", c, d, 3, 3)
        add(f"position_head.{name}.bias", c)
    for k in (1, 2, 3):
        p = f"kernel_head.kernel_head.kernel_head_head_{k}"
        add(f"{p}.weight", d, d + 2 if k == 1 else d, 3, 3)
        norm(p, d, frozen=False)
    add("kernel_head.out_conv.weight", d, d, 3, 3)
    add("kernel_head.out_conv.bias", d)
    for k in (1, 2, 3):
        p = f"feature_encoder.encode_head.encode_head_head_{k}"
        add(f"{p}.weight", e, d + 2 if k == 1 else e, 3, 3)
        add(f"{p}.bias", e)
    for gen in ("thing_generator", "stuff_generator"):
        add(f"{gen}.embed_extractor.weight", e, d, 1, 1)
        add(f"{gen}.embed_extractor.bias", e)
    return sd


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    sd = official_r50_state_dict()
    # The official R50-1x model: 346 entries, 37,105,751 elements.
    assert len(sd) == 346 and sum(v.numel() for v in sd.values()) == 37_105_751
    path = tmp_path_factory.mktemp("ckpt") / "official.pth"
    momentum = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": []}
    torch.save({"model": sd, "optimizer": momentum, "iteration": 89999}, path)
    return path, sd


def test_converter_round_trip(official_file, tmp_path, capsys):
    path, sd = official_file
    out = tmp_path / "converted.pth"
    assert _load_tool().main([str(path), str(out)]) == 0
    assert "matched:   346 / 346" in capsys.readouterr().out
    converted = torch.load(out, weights_only=True)["model"]

    model = build_tiny_model(load_cfg(R50_1X, "MODEL.WEIGHTS", ""))
    model.load_state_dict(converted, strict=True)
    assert set(converted) == set(model.state_dict())
    deform = frozenset({"position_head.tower"})
    back = {ours_to_official(k, deform): v for k, v in converted.items()}
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # Spot checks of the renaming.
    assert (
        official_to_ours("position_head.position_head.position_head_head_2.dcnv2.norm.weight")
        == "position_head.tower.layer2.norm.weight"
    )
    assert official_to_ours("semantic_fpn.p5.4.weight") == "encoder.semantic_fpn.p5.4.weight"
    assert torch.equal(
        model.encoder.tower.layer1.weight,
        sd["feature_encoder.encode_head.encode_head_head_1.weight"],
    )


def test_converter_refuses_incomplete_or_foreign_checkpoints(official_file, tmp_path, capsys):
    _, sd = official_file
    tool = _load_tool()
    for broken in (
        {k: v for k, v in sd.items() if k != "kernel_head.out_conv.bias"},  # missing
        {**sd, "extra_head.weight": torch.zeros(1)},  # unmatched
        {**sd, "position_head.out_inst.bias": torch.zeros(81)},  # wrong shape
    ):
        path, out = tmp_path / "in.pth", tmp_path / "out.pth"
        torch.save({"model": broken}, path)
        assert tool.main([str(path), str(out)]) == 1
        assert not out.exists()
    text = capsys.readouterr().out
    assert "kernel_head.out_conv.bias" in text and "extra_head.weight" in text
    assert "NOT writing" in text
