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

from ..structures.panoptic_ids import rgb_to_id

try:  # libdeflate inflates ~10x faster than zlib, which is most of the time libpng takes
    import deflate as _libdeflate
except ImportError:  # pragma: no cover - optional speed-up, every caller has the cv2 path
    _libdeflate = None

__all__ = [
    "UnsupportedPanopticPngError",
    "bgr_to_id32",
    "decode_png_rows",
    "index_map",
    "read_panoptic_png",
    "read_panoptic_rows",
]


class UnsupportedPanopticPngError(ValueError):
    """A panoptic label file whose format cannot hold exact 24-bit ids (``reason`` says why)."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"panoptic PNG {path}: {reason}")

    def __reduce__(self):  # picklable across data-loader workers
        return type(self), (self.path, self.reason)


# PNG colour types (IHDR byte 9) that carry the 24-bit RGB id exactly: RGB, palette, RGBA.
_ID_COLOUR_TYPES = {2: "RGB", 3: "palette", 6: "RGBA"}
_GRAY_COLOUR_TYPES = {0: "gray", 4: "gray + alpha"}
_JPEG_SIGNATURE = b"\xff\xd8\xff"


def _check_png_kind(path: str, data: bytes) -> None:
    """Refuse label files that OpenCV would decode into wrong ids without a word.

    A JPEG (even named ``.png``) shifts colours, so ids change at every edge; a gray PNG
    decodes to R = G = B (ids ``v * 65793``); a 16-bit PNG is scaled to 8 bits on decoding.
    Palette PNGs hold exact colours and are accepted.

    Raises:
        UnsupportedPanopticPngError: naming the file and its format.
    """
    fix = "write the ids as 8-bit RGB PNG (panopticapi's id_to_rgb), not converted"
    if data[:3] == _JPEG_SIGNATURE:
        reason = f"is a JPEG file (lossy compression changes the ids at every edge); {fix}"
        raise UnsupportedPanopticPngError(path, reason)
    if data[:8] != _PNG_SIGNATURE:
        return  # another format: decoding reads it exactly or reports it
    if len(data) < 33 or data[12:16] != b"IHDR":
        return  # truncated: decoding reports it
    depth, colour = data[24], data[25]
    if colour in _GRAY_COLOUR_TYPES:
        reason = f"is a {_GRAY_COLOUR_TYPES[colour]} PNG (ids need 24-bit RGB); {fix}"
        raise UnsupportedPanopticPngError(path, reason)
    if colour in _ID_COLOUR_TYPES and depth != 8 and colour != 3:
        reason = f"is a {depth}-bit {_ID_COLOUR_TYPES[colour]} PNG (decoded to 8 bits); {fix}"
        raise UnsupportedPanopticPngError(path, reason)


def read_panoptic_png(path: str) -> np.ndarray:
    """Read a COCO-panoptic PNG into (H, W) uint32 segment ids (``R + 256 G + 256^2 B``).

    Raises:
        FileNotFoundError: naming the file when it is missing or cannot be decoded.
    """
    rows, row_index = read_panoptic_rows(path)
    return rows[row_index]


def read_panoptic_rows(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a COCO-panoptic PNG as its distinct rows: ``ids = rows[row_index]``.

    Label maps repeat rows a lot (a PNG row filtered "Up" to all zeros equals the row above);
    callers that map ids per pixel do it on ``rows`` only and expand their small result.

    Returns:
        rows: (K, W) uint32 segment ids of K <= H rows (each row that repeats the row above
            is left out).
        row_index: (H,) intp, the row of ``rows`` that each image row equals.
    Raises:
        FileNotFoundError: naming the file when it is missing or cannot be decoded.
        UnsupportedPanopticPngError: (a ``ValueError``) for a JPEG, gray or 16-bit file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FileNotFoundError(f"cannot read panoptic PNG {path}: {e}") from e
    _check_png_kind(path, data)
    decoded = decode_png_rows(data)
    if decoded is not None:
        rows, row_index = decoded
        return bgr_to_id32(rows), row_index
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot decode panoptic PNG {path}")
    return bgr_to_id32(bgr), np.arange(bgr.shape[0])


def bgr_to_id32(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3 | 4) uint8 BGR(A) (OpenCV order) -> (H, W) uint32 ids, as :func:`rgb_to_id`.

    The little-endian RGBA bytes of a pixel read as one uint32 are ``R + 256 G + 256^2 B +
    256^3 A``; masking A out gives the COCO-panoptic id without three int64 temporaries.
    """
    if sys.byteorder != "little":
        return rgb_to_id(bgr[:, :, 2::-1]).astype(np.uint32)
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA if bgr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
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
# PNG row filter types whose all-zero row reproduces the row above ("Up"; "Paeth" predicts the
# pixel above whenever the row so far equals the row above).
_REPEAT_FILTERS = (2, 4)


def decode_png_rows(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """Decode an 8-bit, non-interlaced RGB / RGBA PNG into its distinct rows.

    Inflates with libdeflate (most of libpng's time on label maps is zlib's inflate), drops the
    rows that repeat the row above (all-zero "Up" / "Paeth" rows), and has libpng undo the row
    filters of the remaining rows from an uncompressed PNG made of them: a dropped row equals
    the row above it, so every kept row sees the same row above as in the full image and each
    pixel is what libpng decodes from the original file.

    Returns:
        ``(rows, row_index)``: (K, W, C) uint8 rows in OpenCV order (BGR / BGRA) and (H,) intp
        with ``image == rows[row_index]``; or None when the PNG is of another kind, libdeflate
        is missing or the data are not a valid PNG (the caller then decodes with OpenCV).
    """
    if _libdeflate is None or data[:8] != _PNG_SIGNATURE:
        return None
    header, idat, pos = None, [], 8
    while pos + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IHDR":
            header = data[pos + 8 : pos + 8 + 13]
        elif kind == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + size])
        elif kind == b"IEND":
            break
        pos += 12 + size
    if header is None or len(header) != 13 or not idat:
        return None
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or color_type not in (2, 6) or interlace != 0 or width * height == 0:
        return None
    stride = width * (3 if color_type == 2 else 4) + 1
    try:
        raw = _libdeflate.zlib_decompress(b"".join(idat), height * stride)
    except Exception:  # corrupt or truncated stream: OpenCV reports it
        return None
    if len(raw) != height * stride:
        return None
    raw = np.frombuffer(raw, np.uint8).reshape(height, stride)
    filters = raw[:, 0]
    repeat = (filters == _REPEAT_FILTERS[0]) | (filters == _REPEAT_FILTERS[1])
    repeat[repeat] = ~raw[repeat, 1:].any(axis=1)
    repeat[0] = False
    keep = ~repeat
    row_index = np.cumsum(keep) - 1
    rows = raw[keep]
    # An uncompressed ("stored") zlib stream: libpng only copies it.
    png = b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", struct.pack(">II", width, len(rows)) + header[8:]),
            _png_chunk(b"IDAT", _stored_zlib(rows.tobytes())),
            _png_chunk(b"IEND", b""),
        )
    )
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.shape[:2] != (len(rows), width):
        return None
    return image, row_index


def _stored_zlib(data: bytes) -> bytes:
    """``data`` as a zlib stream of uncompressed deflate blocks (what ``zlib.compress(data, 0)``
    makes, with libdeflate's faster checksum)."""
    view, step = memoryview(data), 0xFFFF
    parts = [b"\x78\x01"]
    for start in range(0, max(len(data), 1), step):
        block = view[start : start + step]
        final = start + step >= len(data)
        parts += [struct.pack("<BHH", final, len(block), 0xFFFF ^ len(block)), block]
    parts.append(struct.pack(">I", _libdeflate.adler32(data)))
    return b"".join(parts)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc32 = _libdeflate.crc32 if _libdeflate is not None else zlib.crc32
    crc = crc32(payload, crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)
