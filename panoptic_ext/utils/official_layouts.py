"""Checkpoints of the official code bases panoptic_ext converts: how their parameter names look
and which command converts them. The weight loader names the converter when it meets such a file;
the converters accept only their own layout."""

from dataclasses import dataclass

__all__ = ["OFFICIAL_LAYOUTS", "OfficialLayout", "PANET_OFFICIAL", "PANOPTIC_FCN_OFFICIAL"]


@dataclass(frozen=True)
class OfficialLayout:
    """Parameter-name prefixes of an official checkpoint and the converter of that layout."""

    prefixes: tuple[str, ...]
    code_base: str  # how messages name it
    converter: str  # the console script


# Official PANet (ShuLiu1993/PANet, Detectron.pytorch): Generalized_RCNN's module names.
PANET_OFFICIAL = OfficialLayout(
    ("Conv_Body.", "RPN.", "Box_Head.", "Box_Outs.", "Mask_Head.", "Mask_Outs."),
    "the official PANet (Detectron.pytorch)",
    "panoptic-ext-convert-panet-official",
)
# Official Panoptic FCN: its head towers' names (ours are encoder.tower, ...).
PANOPTIC_FCN_OFFICIAL = OfficialLayout(
    ("feature_encoder.encode_head.", "position_head.position_head.", "kernel_head.kernel_head."),
    "the official Panoptic FCN",
    "panoptic-ext-convert-panoptic-fcn",
)
OFFICIAL_LAYOUTS = (PANET_OFFICIAL, PANOPTIC_FCN_OFFICIAL)
