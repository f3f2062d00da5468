"""Fast reading of COCO-panoptic PNGs and mapping of their segment ids to positions.

Used by the PQ evaluator and the dataset tools on every ground-truth PNG, so both avoid the
int64 temporaries and sorts of the straightforward implementations.
"""

import struct
import sys
import threading
import zlib
from collections.abc import Sequence

import cv2
import numpy as np

from .panoptic_targets import rgb_to_id

try:  # libdeflate inflates ~10x faster than zlib, which is most of the time libpng takes
    import deflate as _libdeflate
except ImportError:  # pragma: no cover - optional speed-up, every caller has the cv2 path
    _libdeflate = None

__all__ = ["bgr_to_id32", "decode_png_rows", "index_map", "read_panoptic_png", "read_panoptic_rows"]


def read_panoptic_png(path: str) -> np.ndarray:
    """Read a COCO-panoptic PNG into (H, W) uint32 segment ids (``R + 256 G + 256^2 B``).

    Raises:
        FileNotFoundError: naming the file when it is missing or cannot be decoded.
    """
    rows, row_index = read_panoptic_rows(path)
    return rows[row_index]


def read_panoptic_rows(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a COCO-panoptic PNG as its distinct runs of rows: ``ids = rows[row_index]``.

    Label maps repeat rows a lot (a PNG row filtered "Up" to all zeros equals the row above);
    callers that map ids per pixel do it on ``rows`` only and expand their small result.

    Returns:
        rows: (K, W) uint32 segment ids of the K <= H rows that differ from the row above.
        row_index: (H,) intp, the row of ``rows`` that each image row equals.
    Raises:
        FileNotFoundError: naming the file when it is missing or cannot be decoded.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FileNotFoundError(f"cannot read panoptic PNG {path}: {e}") from e
    decoded = decode_png_rows(data)
    if decoded is not None:
        rgb, row_index = decoded
        rgba = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA) if rgb.shape[2] == 3 else rgb
        if sys.byteorder == "little":
            return rgba.view(np.uint32)[..., 0] & np.uint32(0xFFFFFF), row_index
        return rgb_to_id(rgba[..., :3]).astype(np.uint32), row_index
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot decode panoptic PNG {path}")
    return bgr_to_id32(bgr), np.arange(bgr.shape[0])


def bgr_to_id32(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR (OpenCV order) -> (H, W) uint32 ids, equal to :func:`rgb_to_id`.

    The little-endian RGBA bytes of a pixel read as one uint32 are ``R + 256 G + 256^2 B +
    256^3 A``; masking A out gives the COCO-panoptic id without three int64 temporaries.
    """
    if sys.byteorder != "little":
        return rgb_to_id(bgr[:, :, ::-1])
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA)
    return rgba.view(np.uint32)[..., 0] & np.uint32(0xFFFFFF)


# COCO-panoptic ids are 24-bit RGB colours: a lookup table over all of them costs 16 MB of
# mostly untouched (zero-page) memory per thread, and one gather maps a whole image.
_ID_BITS = 24
_TABLES = threading.local()


def _lookup_table(dtype: type) -> np.ndarray:
    """This thread's all-zero table of 2^24 entries (zeros again after every use)."""
    name = np.dtype(dtype).name
    table = getattr(_TABLES, name, None)
    if table is None:
        table = np.zeros(1 << _ID_BITS, dtype=dtype)
        setattr(_TABLES, name, table)
    return table


def index_map(ids: np.ndarray, segment_ids: Sequence[int], stray: int) -> np.ndarray:
    """Map an (H, W) id map to positions: 0 = void, 1..K = ``segment_ids`` order, else ``stray``.

    Unlike ``panoptic_targets.segment_index_map`` this never raises: ids without a segment get
    ``stray`` so that callers can count or report them. Ids below 2^16 (model predictions) go
    through one gather in a table of codes, other ids below 2^24 (every PNG id) through a
    per-thread lookup table, the rest through a binary search.

    Args:
        ids: (H, W) integer ids.
        segment_ids: (K,) segment ids; a repeated id maps to its last position.
        stray: code of ids that are neither 0 nor in ``segment_ids``.
    Returns:
        (H, W) positions, an unsigned or int64 integer array (cast before arithmetic).
    """
    segment_ids = np.asarray(segment_ids, dtype=np.int64)
    k = len(segment_ids)
    if ids.size == 0:
        return np.zeros(ids.shape, np.int64)
    max_id = int(ids.max())
    in_range = max_id < 1 << _ID_BITS and (ids.dtype.kind == "u" or int(ids.min()) >= 0)
    top = max(k, stray)
    small = np.uint8 if top < 1 << 8 else np.uint16 if top < 1 << 16 else np.int64
    if in_range and max_id < 1 << 16:
        # Small ids (model predictions): a table of the final codes, one gather.
        lut = np.full(max_id + 1, stray, dtype=small)
        keep = (segment_ids > 0) & (segment_ids < len(lut))
        lut[segment_ids[keep]] = np.nonzero(keep)[0] + 1
        lut[0] = 0
        return np.take(lut, ids)
    if in_range and small != np.int64:
        table = _lookup_table(small)
        keep = (segment_ids > 0) & (segment_ids < 1 << _ID_BITS)
        # Segments -> 1..K; void and unknown ids both read 0 from the all-zero table.
        table[segment_ids[keep]] = np.nonzero(keep)[0] + 1
        try:
            codes = np.take(table, ids)
        finally:
            table[segment_ids[keep]] = 0
        if np.count_nonzero(codes) == np.count_nonzero(ids):  # no unknown id: done
            return codes
        codes[(codes == 0) & (ids != 0)] = stray
        return codes
    # Same dtype on both sides keeps searchsorted fast; the sentinel exceeds every id.
    keys = np.concatenate([[0], segment_ids, [np.iinfo(np.int64).max]]).astype(np.int64)
    codes = np.concatenate([[0], np.arange(1, k + 1), [stray]])
    order = np.argsort(keys, kind="stable")
    keys, codes = keys[order].astype(ids.dtype, copy=False), codes[order]
    if ids.dtype != np.int64:
        keys[-1] = np.iinfo(ids.dtype).max
    pos = np.searchsorted(keys, ids)
    out = codes[pos]
    out[keys[pos] != ids] = stray
    return out


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# More runs of rows than these and libpng's C loop beats numpy's per-run calls: fall back.
_MAX_RUNS, _MAX_LIBPNG_RUNS, _MAX_PAETH_ROWS = 96, 12, 4


def decode_png_rows(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """Decode an 8-bit, non-interlaced RGB / RGBA PNG into its distinct runs of rows.

    Inflates with libdeflate and undoes the row filters with numpy ("None", "Sub", "Up", short
    runs of "Paeth") or, for other rows, with libpng on a small PNG made of those rows and the
    row above them, so every pixel is what libpng itself decodes. Rows whose filtered bytes are all
    zero under "Up" or "Paeth" equal the row above and are not decoded again.

    Returns:
        ``(rows, row_index)``: (K, W, C) uint8 RGB(A) rows and (H,) intp with
        ``image == rows[row_index]``; or None when the PNG is of another kind, libdeflate is
        missing, the data are not a valid PNG, or the filters vary too much row to row (the
        caller then decodes with OpenCV).
    """
    if _libdeflate is None or data[:8] != _PNG_SIGNATURE:
        return None
    header, idat, pos = None, [], 8
    while pos + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IHDR":
            header = struct.unpack_from(">IIBBBBB", data, pos + 8)
        elif kind == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + size])
        elif kind == b"IEND":
            break
        pos += 12 + size
    if header is None or not idat:
        return None
    width, height, depth, color_type, _, _, interlace = header
    if depth != 8 or color_type not in (2, 6) or interlace != 0 or width * height == 0:
        return None
    channels = 3 if color_type == 2 else 4
    stride = width * channels
    try:
        raw = _libdeflate.zlib_decompress(b"".join(idat), height * (stride + 1))
    except Exception:  # corrupt / truncated stream: let libpng report it
        return None
    if len(raw) != height * (stride + 1):
        return None
    raw = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    filters, filtered = raw[:, 0], raw[:, 1:]
    if int(filters.max()) > 4:
        return None
    zero = ~filtered.any(axis=1)
    repeat = zero & ((filters == 2) | (filters == 4))
    repeat[0] = False
    keys = np.flatnonzero(~repeat)
    row_index = np.cumsum(~repeat) - 1
    # Runs of consecutive key rows with the same filter.
    key_filters = filters[keys]
    breaks = np.flatnonzero((np.diff(keys) != 1) | (np.diff(key_filters) != 0)) + 1
    starts = [0, *breaks.tolist()]
    ends = [*breaks.tolist(), len(keys)]
    if len(starts) > _MAX_RUNS:
        return None
    out = np.empty((len(keys), stride), np.uint8)
    libpng_runs = 0
    for s, e in zip(starts, ends):
        rows = filtered[keys[s] : keys[s] + e - s]
        kind = int(key_filters[s])
        # The row above a run is the last key row before it (repeats equal it); none for row 0.
        above = out[s - 1] if s else np.zeros(stride, np.uint8)
        if kind == 0:
            out[s:e] = rows
        elif kind == 1:
            pixels = out[s:e].reshape(e - s, width, channels)
            np.cumsum(rows.reshape(e - s, width, channels), axis=1, dtype=np.uint8, out=pixels)
        elif kind == 2:
            np.cumsum(rows, axis=0, dtype=np.uint8, out=out[s:e])
            out[s:e] += above
        elif kind == 4 and e - s <= _MAX_PAETH_ROWS:
            for i in range(s, e):
                out[i] = _unpaeth_row(rows[i - s], out[i - 1] if i else above, channels)
        else:
            libpng_runs += 1
            if libpng_runs > _MAX_LIBPNG_RUNS:
                return None
            decoded = _libpng_rows(above, rows, kind, width, color_type)
            if decoded is None:
                return None
            out[s:e] = decoded
    return out.reshape(len(keys), width, channels), row_index


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _libpng_rows(
    above: np.ndarray, rows: np.ndarray, kind: int, width: int, color_type: int
) -> np.ndarray | None:
    """Unfilter (N, stride) rows of one filter ``kind`` under the unfiltered row ``above``."""
    n, stride = rows.shape
    body = np.empty((n + 1, stride + 1), np.uint8)
    body[0, 0], body[0, 1:] = 0, above  # filter "None": libpng reads it as is
    body[1:, 0], body[1:, 1:] = kind, rows
    png = b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, n + 1, 8, color_type, 0, 0, 0)),
            _png_chunk(b"IDAT", zlib.compress(body.tobytes(), 1)),
            _png_chunk(b"IEND", b""),
        )
    )
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.shape[:2] != (n + 1, width):
        return None
    code = cv2.COLOR_BGR2RGB if color_type == 2 else cv2.COLOR_BGRA2RGBA
    return cv2.cvtColor(image, code)[1:].reshape(n, stride)


def _unpaeth_row(filtered: np.ndarray, above: np.ndarray, channels: int) -> np.ndarray:
    """Undo the PNG "Paeth" filter on one (stride,) uint8 row under the unfiltered ``above``.

    Where the row above is flat (``b == c``) the Paeth predictor picks the left pixel, so the
    row is a running sum there; only at its few vertical edges is the predictor evaluated.
    """
    raw = filtered.reshape(-1, channels)
    up = above.reshape(-1, channels)
    up_left = np.zeros_like(up)
    up_left[1:] = up[:-1]
    edge = (up != up_left).any(axis=1)
    edge[0] = True  # no left pixel: a = c = 0
    running = np.cumsum(raw, axis=0, dtype=np.uint8)
    starts = np.flatnonzero(edge)
    # Only the pixels at run starts are needed in Python (few per row).
    raw_l, up_l, ul_l = raw[starts].tolist(), up[starts].tolist(), up_left[starts].tolist()
    start_sum, before_sum = running[starts].tolist(), running[starts - 1].tolist()
    values: list[list[int]] = []
    for k in range(len(starts)):
        if k == 0:  # pixel 0: a = c = 0
            left = [0] * channels
        else:  # left pixel = value at the previous run's start + running sum since then
            left = [
                (v + x - y) & 255 for v, x, y in zip(values[-1], before_sum[k], start_sum[k - 1])
            ]
        start_value = []
        for ch in range(channels):
            a, b, c = left[ch], up_l[k][ch], ul_l[k][ch]
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
            pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            start_value.append((raw_l[k][ch] + pred) & 255)
        values.append(start_value)
    run = np.cumsum(edge) - 1
    out = (
        np.array(values, np.uint8)[run] + running - running[starts][run]
    )  # uint8: wraps like the filter
    return out.reshape(-1)
