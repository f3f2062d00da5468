"""Detectron's anchors (the official PANet and Detectron models) in detectron2's anchor generator.

Detectron builds each level's anchors from a ``stride x stride`` pixel box: per aspect ratio r it
rounds the width ``round(sqrt(stride**2 / r))`` and height ``round(width * r)``, then scales both
by ``size / stride``. At P2 (stride 4, size 32) that is 48 x 24 for r = 0.5, where detectron2's
exact formula gives 45.3 x 22.6. Its boxes are pixel indices centred on pixel ``(stride - 1) / 2``,
i.e. ``stride / 2`` in detectron2's continuous coordinates (``ANCHOR_GENERATOR.OFFSET 0.5``), and
it orders the anchors of a location ratio-major (detectron2: size-major). Weights trained with
Detectron's anchors (converted official checkpoints) predict deltas for exactly these boxes.
"""

import numpy as np
import torch
from detectron2.modeling.anchor_generator import (
    ANCHOR_GENERATOR_REGISTRY,
    BufferList,
    DefaultAnchorGenerator,
)

__all__ = ["DetectronAnchorGenerator", "detectron_cell_anchors"]


def detectron_cell_anchors(
    stride: int, sizes: list[float], aspect_ratios: list[float]
) -> torch.Tensor:
    """Detectron's cell anchors of one level, centred at (0, 0).

    Returns:
        (len(aspect_ratios) * len(sizes), 4) float XYXY, ratio-major as Detectron orders them.
    """
    anchors = []
    for ratio in aspect_ratios:
        # np.round: half to even, as Detectron (numpy) rounds.
        width = float(np.round(np.sqrt(stride * stride / ratio)))
        height = float(np.round(width * ratio))
        for size in sizes:
            w, h = width * size / stride, height * size / stride
            anchors.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(anchors, dtype=torch.float32)


@ANCHOR_GENERATOR_REGISTRY.register()
class DetectronAnchorGenerator(DefaultAnchorGenerator):
    """``DefaultAnchorGenerator`` with Detectron's rounded cell anchors (see module doc).

    Set ``MODEL.ANCHOR_GENERATOR.OFFSET 0.5`` for Detectron's anchor centres.
    """

    def _calculate_anchors(self, sizes, aspect_ratios):
        cells = [
            detectron_cell_anchors(stride, s, a)
            for stride, s, a in zip(self.strides, sizes, aspect_ratios)
        ]
        return BufferList(cells)
