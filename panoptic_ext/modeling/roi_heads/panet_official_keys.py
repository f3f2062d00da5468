"""Official PANet checkpoints (ShuLiu1993/PANet, a Detectron.pytorch code base) -> this project.

The official model is ``Generalized_RCNN`` with the modules ``Conv_Body`` (ResNet with frozen
affine "BN" + FPN + bottom-up path), ``RPN``, ``Box_Head`` / ``Box_Outs`` and ``Mask_Head`` /
``Mask_Outs``. Names map one to one onto our PAFPN + PANetROIHeads model built from
``configs/Base-PANet-Official.yaml`` variants; three tensors change layout, as detectron2 needs:

* class scores: Detectron puts background first, detectron2 last (rows rotated by one);
* box deltas: Detectron also predicts deltas for the background class (first 4 rows dropped);
* mask logits: Detectron's channel 0 is the background class (dropped).

The ResNet's ``AffineChannel2d`` (scale, bias) becomes detectron2's ``FrozenBatchNorm2d`` with
``running_mean`` 0 and ``running_var`` 1 - eps, so that its scale ``weight / sqrt(var + eps)`` is
exactly the official one.
"""

import re
from collections.abc import Mapping

import torch

from ...utils.official_layouts import PANET_OFFICIAL
from ...utils.state_dict_rename import convert_renamed_state_dict

__all__ = [
    "OFFICIAL_PANET_MODULES",
    "convert_panet_official_state_dict",
    "is_official_panet_state_dict",
    "official_panet_variant",
    "panet_official_to_ours",
]

# Top-level module names of the official Generalized_RCNN (a checkpoint's key prefixes).
OFFICIAL_PANET_MODULES = PANET_OFFICIAL.prefixes
# detectron2's FrozenBatchNorm2d eps (its default, used by detectron2's ResNet).
_FROZEN_BN_EPS = 1e-5

_BACKBONE = "backbone."
_RPN = "proposal_generator.rpn_head."
_BOX = "roi_heads.box_head."
_MASK = "roi_heads.mask_head."

# (official regex, our name template) tried in order; the official names are the module paths of
# the official code (nn.Sequential children are numbered: 0 = conv/fc, 1 = its GroupNorm).
_RULES: tuple[tuple[str, str], ...] = (
    # ResNet (Conv_Body.conv_body.*): stem, bottleneck convs, shortcut.
    (r"Conv_Body\.conv_body\.res1\.conv1\.weight", _BACKBONE + "bottom_up.stem.conv1.weight"),
    (
        r"Conv_Body\.conv_body\.res1\.bn1\.(weight|bias)",
        _BACKBONE + "bottom_up.stem.conv1.norm.{0}",
    ),
    (
        r"Conv_Body\.conv_body\.res(\d)\.(\d+)\.conv(\d)\.weight",
        _BACKBONE + "bottom_up.res{0}.{1}.conv{2}.weight",
    ),
    (
        r"Conv_Body\.conv_body\.res(\d)\.(\d+)\.bn(\d)\.(weight|bias)",
        _BACKBONE + "bottom_up.res{0}.{1}.conv{2}.norm.{3}",
    ),
    (
        r"Conv_Body\.conv_body\.res(\d)\.(\d+)\.downsample\.0\.weight",
        _BACKBONE + "bottom_up.res{0}.{1}.shortcut.weight",
    ),
    (
        r"Conv_Body\.conv_body\.res(\d)\.(\d+)\.downsample\.1\.(weight|bias)",
        _BACKBONE + "bottom_up.res{0}.{1}.shortcut.norm.{2}",
    ),
    # RPN shared by all levels.
    (r"RPN\.FPN_RPN_conv\.(weight|bias)", _RPN + "conv.{0}"),
    (r"RPN\.FPN_RPN_cls_score\.(weight|bias)", _RPN + "objectness_logits.{0}"),
    (r"RPN\.FPN_RPN_bbox_pred\.(weight|bias)", _RPN + "anchor_deltas.{0}"),
    # Box head roi_Xconv1fc_gn_head_panet: conv1 per level, convs = conv2..conv4 (conv, GN, ReLU).
    (r"Box_Head\.conv1_head\.(\d+)\.0\.weight", _BOX + "conv1_levels.{0}.weight"),
    (r"Box_Head\.conv1_head\.(\d+)\.1\.(weight|bias)", _BOX + "conv1_levels.{0}.norm.{1}"),
    (r"Box_Head\.fc\.(weight|bias)", _BOX + "fc1.{0}"),
    # Box head roi_2mlp_head_gn_panet: fc1 per level (fc, GN, ReLU), fc2 (fc, GN, ReLU).
    (r"Box_Head\.fc1\.(\d+)\.0\.(weight|bias)", _BOX + "fc1_levels.{0}.{1}"),
    (r"Box_Head\.fc1\.(\d+)\.1\.(weight|bias)", _BOX + "fc1_levels.{0}.norm.{1}"),
    (r"Box_Head\.fc2\.0\.(weight|bias)", _BOX + "fc2.{0}"),
    (r"Box_Head\.fc2\.1\.(weight|bias)", _BOX + "fc2.norm.{0}"),
    (r"Box_Outs\.(cls_score|bbox_pred)\.(weight|bias)", "roi_heads.box_predictor.{0}.{1}"),
    # Mask head mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff: mask_conv1 per level, conv_fcn = convs
    # 2 and 3, mask_conv4 the 4th, the FF branch (mask_conv4_fc, mask_conv5_fc, mask_fc).
    (r"Mask_Head\.mask_conv1\.(\d+)\.0\.weight", _MASK + "mask_fcn1_levels.{0}.weight"),
    (r"Mask_Head\.mask_conv1\.(\d+)\.1\.(weight|bias)", _MASK + "mask_fcn1_levels.{0}.norm.{1}"),
    (r"Mask_Head\.mask_conv4\.0\.weight", _MASK + "mask_fcn4.weight"),
    (r"Mask_Head\.mask_conv4\.1\.(weight|bias)", _MASK + "mask_fcn4.norm.{0}"),
    (r"Mask_Head\.mask_conv4_fc\.0\.weight", _MASK + "fc_branch_conv1.weight"),
    (r"Mask_Head\.mask_conv4_fc\.1\.(weight|bias)", _MASK + "fc_branch_conv1.norm.{0}"),
    (r"Mask_Head\.mask_conv5_fc\.0\.weight", _MASK + "fc_branch_conv2.weight"),
    (r"Mask_Head\.mask_conv5_fc\.1\.(weight|bias)", _MASK + "fc_branch_conv2.norm.{0}"),
    (r"Mask_Head\.mask_fc\.0\.(weight|bias)", _MASK + "fc_mask.{0}"),
    (r"Mask_Head\.upconv\.(weight|bias)", _MASK + "deconv.{0}"),
    (r"Mask_Outs\.classify\.(weight|bias)", _MASK + "predictor.{0}"),
)
_COMPILED = tuple((re.compile(pattern), template) for pattern, template in _RULES)

# Conv/norm sequences numbered (conv, GN, ReLU) = 3 children per layer: index // 3 is the layer.
_SEQUENCES = (
    # official prefix, first layer number of ours, our name template
    ("Box_Head.convs.", 2, _BOX + "conv{}"),
    ("Mask_Head.conv_fcn.", 2, _MASK + "mask_fcn{}"),
)


def _fpn_name(rest: str) -> str | None:
    """Our name for a ``Conv_Body.`` FPN / bottom-up parameter (``rest`` after the prefix).

    Official module lists run from the coarsest level: conv_top is res5's lateral conv,
    topdown_lateral_modules.i the lateral of stage 4 - i, posthoc_modules.i the output conv of
    stage 5 - i. Bottom-up: conv1_modules.i (stride 2) reads N(2+i), conv2_modules.i makes N(3+i).
    """
    m = re.fullmatch(
        r"(conv_top|topdown_lateral_modules\.(\d)\.conv_lateral|posthoc_modules\.(\d)"
        r"|panet_buttomup_conv1_modules\.(\d)|panet_buttomup_conv2_modules\.(\d))"
        r"(?:\.(0|1))?\.(weight|bias)",
        rest,
    )
    if m is None:
        return None
    module, lateral, output, down, up, child, param = m.groups()
    if module == "conv_top":
        ours = "fpn_lateral5"
    elif lateral is not None:
        ours = f"fpn_lateral{4 - int(lateral)}"
    elif output is not None:
        ours = f"fpn_output{5 - int(output)}"
    elif down is not None:
        ours = f"pa_down{2 + int(down)}"
    else:
        ours = f"pa_out{3 + int(up)}"
    # Without GN the module is the conv itself (no child index); child 1 is the GroupNorm.
    return f"{_BACKBONE}{ours}.{'norm.' if child == '1' else ''}{param}"


def panet_official_to_ours(name: str) -> str | None:
    """Our parameter name for an official PANet one, or None when no rule applies."""
    for pattern, template in _COMPILED:
        m = pattern.fullmatch(name)
        if m:
            return template.format(*m.groups())
    for prefix, first, template in _SEQUENCES:
        m = re.fullmatch(re.escape(prefix) + r"(\d+)\.(weight|bias)", name)
        if m:
            index, param = int(m.group(1)), m.group(2)
            layer = template.format(first + index // 3)
            if index % 3 == 0 and param == "weight":
                return f"{layer}.weight"
            if index % 3 == 1:
                return f"{layer}.norm.{param}"
            return None
    if name.startswith("Conv_Body."):
        return _fpn_name(name[len("Conv_Body.") :])
    return None


def _to_detectron2_layout(ours: str, value: torch.Tensor) -> torch.Tensor:
    """Class-dependent tensors: Detectron's background entries moved (scores) or dropped."""
    if ours.startswith("roi_heads.box_predictor.cls_score."):
        return torch.cat([value[1:], value[:1]])  # background first -> last
    if ours.startswith("roi_heads.box_predictor.bbox_pred."):
        return value[4:]  # no background deltas in detectron2
    if ours.startswith(_MASK + "predictor."):
        return value[1:]  # no background mask channel
    return value


def is_official_panet_state_dict(state: Mapping[str, object]) -> bool:
    """True when the keys are the official PANet (Detectron.pytorch) module names."""
    keys = [k[len("module.") :] if k.startswith("module.") else k for k in state]
    return (
        bool(keys)
        and any(k.startswith("Conv_Body.") for k in keys)
        and all(k.startswith(OFFICIAL_PANET_MODULES) for k in keys)
    )


def official_panet_variant(state: Mapping[str, object]) -> str:
    """The config (relative to configs/) of the released model whose layout ``state`` has."""
    if any(k.startswith(("Mask_Head.", "module.Mask_Head.")) for k in state):
        return "COCO-InstanceSegmentation/panet_R_50_official_2x.yaml"
    if any(".fc2." in k for k in state):
        return "COCO-Detection/panet_R_50_2fc_official_1x.yaml"
    return "COCO-Detection/panet_R_50_official_1x.yaml"


def _frozen_bn_statistics(expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """running_mean 0 / running_var 1 - eps for every FrozenBN of the ResNet (see module doc)."""
    stats = {}
    for name, value in expected.items():
        if name.startswith(_BACKBONE + "bottom_up.") and name.endswith(".norm.running_mean"):
            stats[name] = torch.zeros_like(value)
        elif name.startswith(_BACKBONE + "bottom_up.") and name.endswith(".norm.running_var"):
            stats[name] = torch.full_like(value, 1.0 - _FROZEN_BN_EPS)
    return stats


def convert_panet_official_state_dict(
    official: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Convert an official PANet ``model`` state dict to ours.

    Args:
        official: the official state dict (a ``module.`` prefix of DataParallel is accepted).
        expected: ``model.state_dict()`` of our model built from the matching official config.
    Returns:
        the converted state dict (every tensor of ``expected`` when the report is clean) and the
        report of :func:`~panoptic_ext.utils.state_dict_rename.convert_renamed_state_dict`.
    """
    official = {
        (k[len("module.") :] if k.startswith("module.") else k): v for k, v in official.items()
    }
    converted, report = convert_renamed_state_dict(
        official, expected, panet_official_to_ours, _to_detectron2_layout
    )
    stats = _frozen_bn_statistics(expected)
    converted.update(stats)
    report["missing"] = [k for k in report["missing"] if k not in stats]
    return converted, report
