"""detectron2 metadata (class names, colors, id maps) derived from COCO-panoptic ``categories``.

Used by dataset registration, the converters and the synthetic generator; it reads no file.
"""

from typing import Any

__all__ = ["metadata_from_categories"]

# Color drawn for the merged "things" entry of stuff_classes (index 0 of the separated convention).
_THINGS_COLOR = (0, 0, 0)


def metadata_from_categories(categories: list[dict[str, Any]], source: str = "") -> dict[str, Any]:
    """Build detectron2 metadata from COCO-panoptic ``categories``.

    Follows detectron2's *separated* convention, which ``PanopticFPN`` and
    ``COCOPanopticEvaluator`` expect: things -> contiguous 0..T-1; ``stuff_classes[0]`` is the
    merged "things" class and stuff -> 1..S; ``stuff_dataset_id_to_contiguous_id`` holds ``{0: 0}``.

    Raises:
        ValueError: naming ``source`` and the entry when an id repeats, is 0 (reserved for the
            merged things class), or ``isthing`` is missing.
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
    things = [c for c in categories if c["isthing"]]
    stuff = [c for c in categories if not c["isthing"]]

    def color(cat: dict[str, Any]) -> tuple[int, int, int]:
        return tuple(cat.get("color", (128, 128, 128)))

    stuff_map = {c["id"]: i + 1 for i, c in enumerate(stuff)}
    stuff_map[0] = 0
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [color(c) for c in things],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_classes": ["things"] + [c["name"] for c in stuff],
        "stuff_colors": [_THINGS_COLOR] + [color(c) for c in stuff],
        "stuff_dataset_id_to_contiguous_id": stuff_map,
    }
