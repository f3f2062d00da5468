"""Pure functions that turn a COCO-panoptic PNG + ``segments_info`` into training targets.

Shared by the mapper, the synthetic generator and the evaluators so that every consumer derives
the same labels from the same file. All functions are vectorised over segments.
"""

from collections.abc import Sequence

import numpy as np

from ..structures.sem_seg_format import SemSegFormat

# The INPUT.SEM_SEG_FORMAT strings, as named in error messages.
SEM_SEG_FORMATS = tuple(f.value for f in SemSegFormat)


class PanopticLabelError(ValueError):
    """A panoptic annotation that does not agree with its PNG or with the dataset metadata."""


def segment_index_map(ids: np.ndarray, segment_ids: Sequence[int], file_name: str) -> np.ndarray:
    """Replace the PNG's segment ids by 1-based positions in ``segment_ids`` (0 = void).

    Args:
        ids: (H, W) int segment ids decoded from the PNG.
        segment_ids: the ``id`` of each entry of ``segments_info``, in order.
        file_name: named in the error message.
    Returns:
        (H, W) int32 index map.
    Raises:
        PanopticLabelError: naming the file and the ids when the PNG holds ids that have no
            segment, or ``segments_info`` repeats an id.
    """
    seg = np.asarray(segment_ids, dtype=np.int64)
    if len(np.unique(seg)) != len(seg):
        vals, counts = np.unique(seg, return_counts=True)
        raise PanopticLabelError(f"{file_name}: duplicated segment ids {vals[counts > 1].tolist()}")
    order = np.argsort(seg)
    sorted_ids = seg[order]
    if len(seg):
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(seg) - 1)
        found = sorted_ids[pos] == ids
    else:
        pos, found = np.zeros(ids.shape, np.int64), np.zeros(ids.shape, bool)
    stray = (~found) & (ids != 0)
    if stray.any():
        raise PanopticLabelError(
            f"{file_name}: PNG segment ids {np.unique(ids[stray]).tolist()[:20]} "
            "have no entry in segments_info"
        )
    index = np.zeros(ids.shape, dtype=np.int32)
    if len(seg):
        index[found] = order[pos[found]] + 1
    return index


def category_labels(
    category_ids: Sequence[int],
    thing_id_map: dict[int, int],
    stuff_id_map: dict[int, int],
    file_name: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Map dataset category ids to (is_thing, contiguous id).

    ``stuff_id_map`` follows detectron2's separated convention (stuff -> 1..S, ``{0: 0}`` for the
    merged things class); ``thing_id_map`` maps things -> 0..T-1.

    Returns:
        is_thing: (K,) bool; contiguous: (K,) int64 (thing id for things, stuff id for stuff).
    Raises:
        PanopticLabelError: naming the file and every category id absent from the metadata.
    """
    cats = [int(c) for c in category_ids]
    unknown = sorted(
        {c for c in cats if c not in thing_id_map and (c not in stuff_id_map or c == 0)}
    )
    if unknown:
        raise PanopticLabelError(
            f"{file_name}: category ids {unknown} are not in the dataset metadata "
            f"(things {sorted(thing_id_map)}, stuff {sorted(k for k in stuff_id_map if k != 0)})"
        )
    is_thing = np.array([c in thing_id_map for c in cats], dtype=bool)
    contiguous = np.array(
        [thing_id_map[c] if c in thing_id_map else stuff_id_map[c] for c in cats], dtype=np.int64
    )
    return is_thing, contiguous


def segment_labels(
    segments: Sequence[dict], num_things: int, num_stuff: int, file_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """(is_thing, contiguous id) of dataset-dict segments in detectron2's panoptic convention.

    Args:
        segments: ``segments_info`` entries with contiguous ``category_id`` and ``isthing``, as
            ``load_panoptic_json`` (and detectron2's ``load_coco_panoptic_json``) make them:
            things 0..num_things-1, stuff 1..num_stuff (separated convention).
        file_name: named in error messages.
    Returns:
        is_thing: (K,) bool; contiguous: (K,) int64.
    Raises:
        PanopticLabelError: naming the file when an entry has no ``isthing`` (raw JSON ids, whose
            meaning would otherwise be guessed) or a contiguous id outside its range.
    """
    if any("isthing" not in s for s in segments):
        raise PanopticLabelError(
            f"{file_name}: segments_info entries lack 'isthing'; dataset dicts must follow "
            "detectron2's panoptic convention (contiguous category_id + isthing), as "
            "panoptic_ext.data.datasets.load_panoptic_json makes them"
        )
    is_thing = np.array([bool(s["isthing"]) for s in segments], dtype=bool)
    contiguous = np.array([int(s["category_id"]) for s in segments], dtype=np.int64)
    bad_things = contiguous[is_thing & ((contiguous < 0) | (contiguous >= num_things))]
    bad_stuff = contiguous[~is_thing & ((contiguous < 1) | (contiguous > num_stuff))]
    if len(bad_things) or len(bad_stuff):
        raise PanopticLabelError(
            f"{file_name}: category ids {sorted(set(bad_things.tolist() + bad_stuff.tolist()))} "
            f"are outside the metadata's contiguous ranges (things 0..{num_things - 1}: "
            f"{sorted(set(bad_things.tolist()))}, stuff 1..{num_stuff}: "
            f"{sorted(set(bad_stuff.tolist()))})"
        )
    return is_thing, contiguous


def semantic_lookup(
    is_thing: np.ndarray,
    contiguous: np.ndarray,
    num_things: int,
    sem_seg_format: str,
    ignore_value: int,
) -> np.ndarray:
    """Lookup table from segment index (0 = void, 1..K) to semantic label.

    Returns:
        (K + 1,) int64: ``things_as_one``: thing -> 0, stuff -> its 1..S id; ``all_classes``:
        thing -> 0..T-1, stuff -> T + (id - 1). Index 0 (void) -> ``ignore_value``.
    """
    if sem_seg_format == SemSegFormat.THINGS_AS_ONE:
        labels = np.where(is_thing, 0, contiguous)
    elif sem_seg_format == SemSegFormat.ALL_CLASSES:
        labels = np.where(is_thing, contiguous, num_things + contiguous - 1)
    else:
        raise ValueError(f"sem_seg_format must be one of {SEM_SEG_FORMATS}, got {sem_seg_format!r}")
    return np.concatenate([[ignore_value], labels]).astype(np.int64)
