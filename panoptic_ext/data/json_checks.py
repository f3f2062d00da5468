"""Checks of a COCO-panoptic JSON, made while it is loaded (and by the validator, which reports
the same :class:`Problem` list plus what only the files can tell).

Without them a wrong file trains on wrong labels without a word: two ``images`` with one id pair
an image with another's PNG, ``"isthing": "0"`` is a true string (a stuff class becomes a thing),
an annotation may name the PNG of another image. Every problem names the JSON, the entry and the
value. Types are coerced only where that is unambiguous (an integral float such as ``64.0`` for
an integer field); anything else is refused:

=====================  ================================================================
field                  accepted
=====================  ================================================================
image ``id``           int, or str (e.g. Cityscapes); annotations must use the same type
``height``/``width``   int > 0
``file_name``          non-empty str
``segments_info``      list of objects with ``id`` (int 1 .. 2^24-1) and ``category_id``
``category_id``        int, one of ``categories``
``isthing``            0, 1, true, false (a string is refused: "0" would count as true)
``iscrowd``            as ``isthing``; optional (default 0)
``area`` / ``bbox``    optional: a number / 4 numbers (only the validator checks them)
=====================  ================================================================
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ERROR",
    "WARNING",
    "DatasetJsonError",
    "Problem",
    "category_problems",
    "check_categories",
    "panoptic_json_problems",
    "read_panoptic_json",
]

logger = logging.getLogger(__name__)

ERROR, WARNING = "error", "warning"
# Panoptic PNGs encode segment ids in 24 bits of RGB.
_MAX_SEGMENT_ID = 256**3 - 1
# How many problems an error message lists before "... and N more".
_SHOWN = 12


@dataclass(frozen=True)
class Problem:
    """One finding: ``level`` "error" | "warning", a ``code`` (see ``data/validation.py``), the
    file and the id (image / segment / category) it concerns, and a readable message."""

    level: str
    code: str
    file: str
    id: Any
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper()} [{self.code}] {self.file} (id {self.id}): {self.message}"


class DatasetJsonError(ValueError):
    """A COCO-panoptic JSON that cannot be used as it is; ``problems`` lists every error."""

    # What the message says was found (subclasses refine it).
    heading = "problem(s) in the dataset JSON"

    def __init__(self, json_file: str, problems: Sequence[Problem]):
        self.json_file, self.problems = json_file, list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:_SHOWN])
        more = len(self.problems) - _SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{json_file}: {len(self.problems)} {self.heading}:\n{shown}{tail}\n"
            "(panoptic-ext-validate-dataset lists every problem, PNGs and images included)"
        )

    def __reduce__(self):  # picklable across data-loader workers
        return type(self), (self.json_file, self.problems)


class _Findings:
    """Collects problems of one JSON; ``where`` names the entry in each message."""

    def __init__(self, json_file: str):
        self.json_file = json_file
        self.problems: list[Problem] = []

    def add(self, code: str, ident: Any, message: str, level: str = ERROR, file: str = "") -> None:
        self.problems.append(Problem(level, code, file or self.json_file, ident, message))

    def wrong(
        self, entry: dict, key: str, where: str, ident: Any, need: str, code: str = ""
    ) -> None:
        """Report ``entry[key]``: missing, or not what is needed."""
        if key not in entry:
            self.add("missing_key" if not code else code, ident, f"{where} has no '{key}'")
        else:
            value = _short(entry[key])
            self.add(code or "bad_type", ident, f"{where}: '{key}' is {value}; need {need}")

    def integer(self, entry: dict, key: str, where: str, ident: Any, minimum: int = 0) -> bool:
        """``entry[key]`` must be an int >= ``minimum`` (an integral float is made an int)."""
        value = entry.get(key)
        if type(value) is float and value.is_integer():
            value = entry[key] = int(value)
        if type(value) is not int or value < minimum:
            self.wrong(entry, key, where, ident, f"an int >= {minimum}")
            return False
        return True

    def flag(self, entry: dict, key: str, where: str, ident: Any, code: str = "bad_type") -> None:
        """``entry[key]`` must be 0 / 1 / true / false."""
        value = entry.get(key)
        if type(value) is float and value in (0.0, 1.0):
            value = entry[key] = int(value)
        if value not in (0, 1) or type(value) not in (int, bool):
            hint = " (a string is true unless empty)" if isinstance(value, str) else ""
            self.wrong(entry, key, where, ident, f"0 or 1{hint}", code=code)

    def text(self, entry: dict, key: str, where: str, ident: Any) -> bool:
        value = entry.get(key)
        if not isinstance(value, str) or not value:
            self.wrong(entry, key, where, ident, "a non-empty string")
            return False
        return True


def _entries(found: _Findings, data: dict, key: str) -> list[dict]:
    """``data[key]`` as a list of objects; non-objects are reported and left out."""
    entries = data[key]
    good = [e for e in entries if isinstance(e, dict)]
    if len(good) != len(entries):
        i = next(i for i, e in enumerate(entries) if not isinstance(e, dict))
        found.add("bad_type", None, f"'{key}'[{i}] is {entries[i]!r}; need an object")
    return good


def _image_id(found: _Findings, entry: dict, key: str, where: str) -> Any:
    """An image id (int or non-empty str; an integral float is made an int), else None."""
    value = entry.get(key)
    if type(value) is float and value.is_integer():
        value = entry[key] = int(value)
    if type(value) is int or (isinstance(value, str) and value):
        return value
    found.wrong(entry, key, where, value, "an int or a string")
    return None


def category_problems(categories: Sequence[dict], json_file: str) -> list[Problem]:
    """Problems of a ``categories`` table: empty, ids (type, repeated, 0), ``isthing``, name."""
    found = _Findings(json_file)
    if not categories:
        found.add("no_categories", None, "the JSON has no categories")
    ids = []
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict):
            found.add("bad_type", None, f"categories[{i}] is {cat!r}; need an object")
            continue
        where = f"category {cat.get('name')!r}"
        if found.integer(cat, "id", where, cat.get("id")):
            ids.append(cat["id"])
            if cat["id"] == 0:
                msg = "category id 0 is reserved (void, and detectron2's merged things class)"
                found.add("reserved_category_id", 0, msg)
        found.flag(cat, "isthing", where, cat.get("id"), code="missing_isthing")
        found.text(cat, "name", f"category {cat.get('id')}", cat.get("id"))
    for cat_id, n in Counter(ids).items():
        if n > 1:
            found.add("duplicate_category_id", cat_id, f"category id appears {n} times")
    return found.problems


def check_categories(categories: Sequence[dict], json_file: str) -> None:
    """Raise :class:`DatasetJsonError` when :func:`category_problems` finds an error."""
    errors = [p for p in category_problems(categories, json_file) if p.level == ERROR]
    if errors:
        raise DatasetJsonError(json_file, errors)


def _check_images(found: _Findings, images: list[dict]) -> dict[Any, dict]:
    """Image entries by id; repeated ids / file names and bad fields are reported."""
    by_id: dict[Any, dict] = {}
    by_file: dict[str, Any] = {}
    for img in images:
        ident = _image_id(found, img, "id", f"image {img.get('file_name')!r}")
        where = f"image {ident!r}"
        if found.text(img, "file_name", where, ident) and img["file_name"] in by_file:
            first = by_file[img["file_name"]]
            msg = f"{where} has file_name {img['file_name']!r}, as image {first!r}"
            found.add("duplicate_image_file", ident, msg)
        for key in ("height", "width"):
            found.integer(img, key, where, ident, minimum=1)
        if ident is None:
            continue
        if ident in by_id:
            names = f"{by_id[ident].get('file_name')!r} and {img.get('file_name')!r}"
            msg = f"image id repeated: {names}"
            found.add("duplicate_image_id", ident, msg)
            continue
        by_id[ident] = img
        by_file.setdefault(img.get("file_name"), ident)
    return by_id


_NUMBER, _FLAG = (int, float), (int, bool)


def _segment_is_clean(seg: Any, category_ids: set[int]) -> bool:
    """The common case, decided without building messages (1M+ segments in COCO train).

    ``area`` and ``bbox`` are not looked at: training and PQ evaluation take them from the PNG.
    """
    if type(seg) is not dict:
        return False
    sid, cat = seg.get("id"), seg.get("category_id")
    if type(sid) is not int or not 0 < sid <= _MAX_SEGMENT_ID or type(cat) is not int:
        return False
    crowd, thing = seg.get("iscrowd", 0), seg.get("isthing", 0)
    if cat not in category_ids or type(crowd) not in _FLAG or crowd not in (0, 1):
        return False
    return type(thing) in _FLAG and thing in (0, 1)


def _check_segments(
    found: _Findings, ann: dict, where: str, png: str, category_ids: set[int], geometry: bool
) -> None:
    segments = ann.get("segments_info")
    if not isinstance(segments, list):
        found.wrong(ann, "segments_info", where, ann.get("image_id"), "a list")
        return
    for i, seg in enumerate(segments):
        if not _segment_is_clean(seg, category_ids):
            _check_segment(found, seg, f"{where}, segments_info[{i}]", png, category_ids)
        elif geometry:
            _check_geometry(found, seg, f"{where}, segments_info[{i}] (id {seg['id']})", seg["id"])
    ids = [seg.get("id") for seg in segments if type(seg) is dict and type(seg.get("id")) is int]
    if len(set(ids)) != len(ids):
        for sid, n in Counter(ids).items():
            if n > 1:
                msg = f"segment id appears {n} times in segments_info"
                found.add("duplicate_segment_id", sid, msg, file=png)


def _check_segment(
    found: _Findings, seg: Any, where: str, png: str, category_ids: set[int]
) -> None:
    """Report what is wrong with one segment (integral floats are made ints in place)."""
    if not isinstance(seg, dict):
        found.add("bad_type", None, f"{where} is {_short(seg)}; need an object")
        return
    sid = seg.get("id")
    here = f"{where} (id {sid!r})"
    if found.integer(seg, "id", here, sid):
        if seg["id"] == 0:
            found.add("void_segment_id", 0, "segment id 0 is void in the PNG encoding", file=png)
        elif seg["id"] > _MAX_SEGMENT_ID:
            found.add("bad_type", sid, f"{here}: id above {_MAX_SEGMENT_ID} (24-bit RGB)")
    if found.integer(seg, "category_id", here, sid, minimum=1):
        if seg["category_id"] not in category_ids:
            msg = f"category_id {seg['category_id']} is not in categories"
            found.add("unknown_category", sid, msg, file=png)
    for key in ("iscrowd", "isthing"):
        if key in seg:
            found.flag(seg, key, here, sid)


def _check_geometry(found: _Findings, seg: dict, where: str, sid: Any) -> None:
    area, bbox = seg.get("area"), seg.get("bbox")
    if "area" in seg and (type(area) not in (int, float) or not math.isfinite(area) or area < 0):
        msg = f"{where}: 'area' is {area!r}; need a finite number >= 0 (its pixel count)"
        found.add("bad_area", sid, msg)
    numbers = isinstance(bbox, list) and all(type(v) in (int, float) for v in bbox)
    if "bbox" in seg and not (numbers and len(bbox) == 4):
        found.add("bad_type", sid, f"{where}: 'bbox' is {bbox!r}; need [x, y, width, height]")


def _stem(file_name: str) -> str:
    return os.path.splitext(os.path.basename(file_name))[0]


def _check_annotations(
    found: _Findings,
    annotations: list[dict],
    images: dict[Any, dict],
    panoptic_root: str | None,
    category_ids: set[int],
    geometry: bool,
) -> None:
    """Each annotation names one known image (its own PNG) and has well-formed segments."""
    owners: dict[str, set] = {}  # image file stem -> ids of the images with that stem
    for i, img in images.items():
        if isinstance(img.get("file_name"), str):
            owners.setdefault(_stem(img["file_name"]), set()).add(i)
    id_types = sorted({type(i).__name__ for i in images})
    annotated: dict[Any, str] = {}
    pngs: dict[str, Any] = {}
    for ann in annotations:
        ident = _image_id(found, ann, "image_id", f"annotation {ann.get('file_name')!r}")
        where = f"annotation of image {ident!r}"
        has_png = found.text(ann, "file_name", where, ident)
        png = os.path.join(panoptic_root, ann["file_name"]) if has_png and panoptic_root else ""
        _check_segments(found, ann, where, png, category_ids, geometry)
        if ident is None or not has_png:
            continue
        if ident not in images:
            mixed = type(ident).__name__ not in id_types
            hint = f" (images use {'/'.join(id_types)} ids)" if mixed else ""
            msg = f"{where} ({ann['file_name']}) names an image id that is not in 'images'{hint}"
            found.add("unknown_image_id", ident, msg)
        elif ident in annotated:
            msg = f"two annotations for image {ident!r}: {annotated[ident]} and {ann['file_name']}"
            found.add("duplicate_annotation", ident, msg)
        if ann["file_name"] in pngs:
            first = pngs[ann["file_name"]]
            msg = f"{where} uses {ann['file_name']}, the PNG of image {first!r} too"
            found.add("duplicate_png", ident, msg)
        named_after = sorted(owners.get(_stem(ann["file_name"]), ()), key=repr)
        if ident in images and named_after and ident not in named_after:
            other = named_after[0]
            msg = (
                f"{where} ({images[ident]['file_name']}) uses {ann['file_name']}, which is named "
                f"after image {other!r} ({images[other]['file_name']}): PNGs swapped?"
            )
            found.add("mismatched_png", ident, msg)
        annotated.setdefault(ident, ann["file_name"])
        pngs.setdefault(ann["file_name"], ident)
    _report_unannotated(found, images, annotated)


def _report_unannotated(found: _Findings, images: dict[Any, dict], annotated: Iterable) -> None:
    annotated = set(annotated)
    for ident, img in images.items():
        if ident not in annotated:
            msg = f"image {img.get('file_name')} has no annotation"
            found.add("no_annotation", ident, msg, level=WARNING)
    if not annotated:
        found.add("empty_dataset", None, "no image has an annotation: the dataset is empty")


def panoptic_json_problems(
    data: Any, json_file: str, panoptic_root: str | None = None, geometry: bool = False
) -> list[Problem]:
    """Every problem of a loaded COCO-panoptic JSON (integral floats are made ints in place).

    Args:
        data: the decoded JSON.
        json_file: its path, named in the problems.
        panoptic_root: folder of the PNGs; per-segment problems then name the PNG.
        geometry: also check the types of segments' ``area`` and ``bbox`` (the validator
            compares them with the PNGs; nothing else reads them).
    """
    found = _Findings(json_file)
    if not isinstance(data, dict):
        msg = f"the JSON holds a {type(data).__name__}, not an object"
        found.add("json_unreadable", None, msg)
        return found.problems
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            msg = f"top-level '{key}' is {_short(data.get(key))}; need a list"
            found.add("json_unreadable", None, msg)
    if found.problems:
        return found.problems
    found.problems += category_problems(data["categories"], json_file)
    cats = [c for c in data["categories"] if isinstance(c, dict)]
    category_ids = {c["id"] for c in cats if type(c.get("id")) is int}
    images = _check_images(found, _entries(found, data, "images"))
    annotations = _entries(found, data, "annotations")
    _check_annotations(found, annotations, images, panoptic_root, category_ids, geometry)
    return found.problems


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_panoptic_json(json_file: str, panoptic_root: str | None = None) -> dict[str, Any]:
    """Read and check a COCO-panoptic JSON; warnings are logged, errors raised.

    Raises:
        FileNotFoundError: naming the file.
        DatasetJsonError: (a ``ValueError``) listing every error with its entry and value; also
            for a file that is not valid JSON.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"panoptic json not found: {json_file}")
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        problem = Problem(ERROR, "json_unreadable", json_file, None, f"not valid JSON: {e}")
        raise DatasetJsonError(json_file, [problem]) from None
    problems = panoptic_json_problems(data, json_file, panoptic_root)
    errors = [p for p in problems if p.level == ERROR]
    if errors:
        raise DatasetJsonError(json_file, errors)
    _log_warnings(json_file, [p for p in problems if p.level == WARNING])
    return data


def _log_warnings(json_file: str, warnings: list[Problem]) -> None:
    by_code: dict[str, list[Problem]] = {}
    for p in warnings:
        by_code.setdefault(p.code, []).append(p)
    for code, found in by_code.items():
        ids = ", ".join(repr(p.id) for p in found[:5]) + (", ..." if len(found) > 5 else "")
        logger.warning(f"{json_file}: {len(found)} x [{code}] (ids {ids}): {found[0].message}")
