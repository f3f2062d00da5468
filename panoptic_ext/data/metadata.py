"""detectron2 metadata (class names, colors, id maps) derived from COCO-panoptic ``categories``.

Used by dataset registration, the converters and the synthetic generator; it reads no file.
"""

from typing import Any

from .colors import category_colors

__all__ = ["metadata_from_categories"]

# Color drawn for the merged "things" entry of stuff_classes (index 0 of the separated convention).
_THINGS_COLOR = (0, 0, 0)


def metadata_from_categories(categories: list[dict[str, Any]], source: str = "") -> dict[str, Any]:
    """Build detectron2 metadata from COCO-panoptic ``categories``.

    Follows detectron2's *separated* convention, which ``PanopticFPN`` and
    ``COCOPanopticEvaluator`` expect: things -> contiguous 0..T-1; ``stuff_classes[0]`` is the
    merged "things" class and stuff -> 1..S; ``stuff_dataset_id_to_contiguous_id`` holds ``{0: 0}``.
    Colours come from the categories' ``color``, else from detectron2's colormap (one distinct
    colour per class, see :func:`~panoptic_ext.data.colors.category_colors`).

    Raises:
        ValueError: naming ``source`` and the entry when an id repeats, is 0 (reserved for the
            merged things class), ``isthing`` is missing or a ``color`` is malformed.
    """
    seen: set[int] = set()
    for cat in categories:
        if "isthing" not in cat:
            raise ValueError(
                f"{source}: category {cat.get('id')} ({cat.get('name')}) lacks 'isthing'"
            )
        if cat["id"] in seen:
            raise ValueError(f"{source}: category id {cat['id']} appears more than once")
        if cat["id"] == 0:
            raise ValueError(f"{source}: category id 0 is reserved for void / merged things")
        seen.add(cat["id"])
    colors = category_colors(categories, source)
    things = [(c, col) for c, col in zip(categories, colors) if c["isthing"]]
    stuff = [(c, col) for c, col in zip(categories, colors) if not c["isthing"]]
    stuff_map = {c["id"]: i + 1 for i, (c, _) in enumerate(stuff)}
    stuff_map[0] = 0
    return {
        "thing_classes": [c["name"] for c, _ in things],
        "thing_colors": [col for _, col in things],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, (c, _) in enumerate(things)},
        "stuff_classes": ["things"] + [c["name"] for c, _ in stuff],
        "stuff_colors": [_THINGS_COLOR] + [col for _, col in stuff],
        "stuff_dataset_id_to_contiguous_id": stuff_map,
    }
