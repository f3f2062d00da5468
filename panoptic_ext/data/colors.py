"""One distinct display colour per category: the JSON's ``color`` where given, else detectron2's
colormap, so that classes without a colour are no longer all drawn the same grey."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

from detectron2.utils.colormap import colormap

__all__ = ["category_colors"]

Color = tuple[int, int, int]


def _palette() -> list[Color]:
    """detectron2's colormap (RGB, 0..255) in its order, each colour once."""
    seen: dict[Color, None] = {}
    for c in colormap(rgb=True, maximum=255).round().astype(int).tolist():
        seen.setdefault(tuple(c), None)
    return list(seen)


def _generated(index: int) -> Color:
    """Colours past the colormap: golden-ratio hue steps at three saturation/value levels."""
    hue = (index * 0.618033988749895) % 1.0
    sat, val = ((0.9, 0.9), (0.55, 1.0), (1.0, 0.6))[index % 3]
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return round(255 * r), round(255 * g), round(255 * b)


def _json_color(cat: dict[str, Any], source: str) -> Color | None:
    color = cat.get("color")
    if color is None:
        return None
    ok = isinstance(color, Sequence) and not isinstance(color, str) and len(color) == 3
    # 220 and 220.0 mean the same; 0.5 (a 0..1 scale?) or True do not say which colour.
    ok = ok and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()
        for v in color
    )
    if not ok or not all(0 <= v <= 255 for v in color):
        raise ValueError(
            f"{source}: category {cat.get('id')} ({cat.get('name')}) has color {color!r}; "
            "expected three integers in 0..255"
        )
    return tuple(int(v) for v in color)


def category_colors(categories: Sequence[dict[str, Any]], source: str = "") -> list[Color]:
    """RGB colours of ``categories``, in their order.

    A category's ``color`` is kept as given; the others get the next colour of detectron2's
    colormap (then generated ones) that no category uses yet, so those are distinct per class.

    Raises:
        ValueError: naming ``source`` and the category when a ``color`` is not three 0..255 ints.
    """
    given = [_json_color(c, source) for c in categories]
    used = {c for c in given if c is not None}
    palette = iter(_palette())
    extra = 0
    out = []
    for color in given:
        while color is None:
            candidate = next(palette, None)
            if candidate is None:
                candidate, extra = _generated(extra), extra + 1
            if candidate not in used:
                color = candidate
        used.add(color)
        out.append(color)
    return out
