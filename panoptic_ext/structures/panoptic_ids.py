"""The COCO-panoptic PNG encoding of segment ids: ``id = R + 256 G + 256^2 B``."""

import numpy as np

__all__ = ["id_to_rgb", "rgb_to_id"]


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO-panoptic decoding ``id = R + 256 G + 256^2 B``.

    Args:
        rgb: (H, W, 3) uint8.
    Returns:
        (H, W) int64 segment ids (0 = void).
    """
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_id`: (H, W) int ids -> (H, W, 3) uint8."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)
