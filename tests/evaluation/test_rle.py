"""encode_masks gives pycocotools' RLE bytes for every kind of mask, borders included."""

import numpy as np
import pycocotools.mask as mask_util
import pytest

from panoptic_ext.evaluation.rle import encode_masks


def _masks(h, w, rng):
    yy, xx = np.ogrid[:h, :w]
    out = [np.zeros((h, w), bool), np.ones((h, w), bool)]
    for _ in range(40):
        cy, cx, ry, rx = (
            rng.uniform(0, h),
            rng.uniform(0, w),
            rng.uniform(0.5, h),
            rng.uniform(0.5, w),
        )
        out.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)  # blobs, often cut
        out.append(rng.random((h, w)) > rng.uniform(0, 1))  # noise: many short runs
        box = np.zeros((h, w), bool)
        (a, b), (c, d) = sorted(rng.integers(0, h + 1, 2)), sorted(rng.integers(0, w + 1, 2))
        box[a:b, c:d] = True
        out.append(box)
    for y, x in ((0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0)):  # corner pixels
        m = np.zeros((h, w), bool)
        m[y, x] = True
        out.append(m)
    half = np.zeros((h, w), bool)
    half[:, w // 2 :] = True  # full columns up to the last pixel
    out.append(half)
    return np.stack(out).view(np.uint8)


@pytest.mark.parametrize("size", [(64, 48), (7, 5), (1, 1), (3, 40), (40, 3)])
def test_same_bytes_as_pycocotools(size):
    masks = _masks(*size, np.random.default_rng(sum(size)))
    ours = encode_masks(masks)
    assert len(ours) == len(masks)
    for rle, m in zip(ours, masks):
        assert rle == mask_util.encode(np.asfortranarray(m[:, :, None]))[0]


def test_refuses_other_inputs():
    with pytest.raises(ValueError, match=r"\(N, H, W\) uint8.*bool"):
        encode_masks(np.zeros((2, 4, 4), bool))
