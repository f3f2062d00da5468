"""A deterministic synthetic COCO-panoptic dataset, generated on first use and cached.

Each image has textured stuff bands/blobs (sky, wall, ground), 0..N thing objects (disk, box,
triangle) of 8 px to half the image that occlude each other, sometimes a crowd segment and some
void pixels. Category ids are non-contiguous like COCO's. Files written per split::

    <root>/synthetic_panoptic/<variant>/
        <split>/                      RGB JPEG images
        panoptic_<split>/             panoptic PNGs (rgb2id encoding)
        panoptic_<split>.json         COCO-panoptic JSON (segments_info with area/bbox/iscrowd)
        panoptic_semseg_<split>/      derived things-as-one semantic PNGs (for mIoU evaluation)
        instances_<split>.json        derived COCO instances JSON (for box/mask AP evaluation)

``<root>`` is ``$DETECTRON2_DATASETS`` (default ``datasets``), ``<variant>`` encodes the
generator's parameters, so changing them never reuses stale files.
"""

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
from detectron2.data import MetadataCatalog
from PIL import Image

from ...structures.boxes import segment_boxes
from ...structures.panoptic_ids import id_to_rgb
from ..converters import separate_image
from ..metadata import metadata_from_categories
from ..panoptic_targets import segment_index_map
from .register import load_panoptic_json, register_panoptic_dataset

__all__ = ["SYNTHETIC_CATEGORIES", "SyntheticSpec", "generate_split", "register_synthetic_datasets"]

logger = logging.getLogger(__name__)

# Bump when the drawing code changes so cached datasets are regenerated.
_GENERATOR_VERSION = 1

# Non-contiguous ids and interleaved things/stuff, like COCO's categories.
SYNTHETIC_CATEGORIES = [
    {"id": 3, "name": "disk", "isthing": 1, "color": [220, 20, 60], "supercategory": "shape"},
    {"id": 9, "name": "sky", "isthing": 0, "color": [70, 130, 180], "supercategory": "stuff"},
    {"id": 7, "name": "box", "isthing": 1, "color": [0, 80, 230], "supercategory": "shape"},
    {"id": 21, "name": "wall", "isthing": 0, "color": [102, 102, 156], "supercategory": "stuff"},
    {"id": 12, "name": "triangle", "isthing": 1, "color": [250, 170, 30], "supercategory": "shape"},
    {"id": 30, "name": "ground", "isthing": 0, "color": [152, 110, 60], "supercategory": "stuff"},
]
_DISK, _BOX, _TRIANGLE = 3, 7, 12
_SKY, _WALL, _GROUND = 9, 21, 30
_COLORS = {c["id"]: np.array(c["color"], np.float32) for c in SYNTHETIC_CATEGORIES}


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of one generated split."""

    image_size: int = 128  # width, and height unless image_height is set
    num_images: int = 96
    seed: int = 0
    # Fraction of images drawn with no thing at all.
    empty_fraction: float = 0.15
    # Fraction of images that get one crowd segment.
    crowd_fraction: float = 0.2
    max_things: int = 6
    # Height of the images when they are not square (None: image_size).
    image_height: int | None = None

    @property
    def height(self) -> int:
        return self.image_size if self.image_height is None else self.image_height


def _texture(rng: np.random.Generator, kind: int, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 RGB texture of a stuff class."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    if kind == _SKY:  # vertical blue gradient
        t = yy[..., None] / max(h, 1)
        base = (
            np.array([120, 170, 235], np.float32) * (1 - t)
            + np.array([200, 220, 250], np.float32) * t
        )
        return base + noise
    if kind == _WALL:  # grey bricks
        brick = ((yy.astype(int) % 8) == 0) | (
            ((xx.astype(int) + 6 * ((yy.astype(int) // 8) % 2)) % 12) == 0
        )
        base = np.where(brick[..., None], 70.0, 140.0) + np.array([0, 0, 10], np.float32)
        return base + noise
    # ground: brown with diagonal stripes and speckle
    stripes = ((xx + yy).astype(int) % 10 < 3)[..., None] * 25.0
    return np.array([130, 95, 55], np.float32) + stripes + 2 * noise


def _shape_mask(
    rng: np.random.Generator, kind: int, size: int, cy: float, cx: float, h: int, w: int
) -> np.ndarray:
    """(h, w) bool mask of one thing of extent ``size`` centred at (cy, cx)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = size / 2
    if kind == _DISK:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == _BOX:
        aspect = rng.uniform(0.6, 1.6)
        hh, hw = r * min(aspect, 1.0), r / max(aspect, 1.0)
        return (np.abs(yy - cy) <= hh) & (np.abs(xx - cx) <= hw)
    # triangle: apex up or down, half-plane tests
    flip = 1.0 if rng.random() < 0.5 else -1.0
    dy = flip * (yy - cy)
    return (dy <= r) & (dy >= -r) & (np.abs(xx - cx) <= (dy + r) / 2)


class _Canvas:
    """One image being drawn: RGB floats, segment ids and the ``segments_info`` so far."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.rng = rng
        self.h, self.w = height, width
        self.image = np.zeros((height, width, 3), np.float32)
        self.ids = np.zeros((height, width), np.int64)
        self.segments: list[dict] = []
        self._used: set[int] = set()
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)

    def label(self, mask: np.ndarray, category: int, iscrowd: int = 0) -> None:
        """Give the pixels of ``mask`` a new random segment id (drawn last, so it occludes)."""
        while True:
            seg_id = int(self.rng.integers(1, 256**3))
            if seg_id not in self._used:
                break
        self._used.add(seg_id)
        self.ids[mask] = seg_id
        self.segments.append({"id": seg_id, "category_id": category, "iscrowd": iscrowd})


def _draw_stuff(c: _Canvas) -> None:
    """Wavy bands sky / wall / ground, plus sometimes a wall blob inside the ground."""
    rng, h, w, yy, xx = c.rng, c.h, c.w, c.yy, c.xx
    xs = np.arange(w, dtype=np.float32)
    phase, amp = rng.uniform(0, 6.28), rng.uniform(0, h * 0.05)
    h1 = h * rng.uniform(0.2, 0.4) + amp * np.sin(xs / w * 6.28 + phase)
    h2 = h * rng.uniform(0.55, 0.75) + amp * np.cos(xs / w * 6.28 + phase)
    band = np.where(yy < h1[None], _SKY, np.where(yy < h2[None], _WALL, _GROUND))
    if rng.random() < 0.3:  # no wall in this image
        band[band == _WALL] = _SKY
    if rng.random() < 0.5:
        cy, cx = rng.uniform(0.75, 0.95) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(0.04, 0.1) * h, rng.uniform(0.08, 0.2) * w
        band[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = _WALL
    for cat in (_SKY, _WALL, _GROUND):
        region = band == cat
        if region.any():
            c.image[region] = _texture(rng, cat, h, w)[region]
            c.label(region, cat)


def _draw_things(c: _Canvas, spec: SyntheticSpec, num_things: int) -> None:
    """Things drawn back to front, so later ones occlude earlier ones."""
    rng, h, w = c.rng, c.h, c.w
    for _ in range(num_things):
        cat = int(rng.choice([_DISK, _BOX, _TRIANGLE]))
        size = float(np.exp(rng.uniform(np.log(8), np.log(min(h, w) / 2))))
        cy, cx = rng.uniform(size / 2, h - size / 2), rng.uniform(size / 2, w - size / 2)
        mask = _shape_mask(rng, cat, int(size), cy, cx, h, w)
        if not mask.any():
            continue
        color = np.clip(_COLORS[cat] + rng.uniform(-25, 25, 3), 0, 255)
        shade = 1.0 - 0.25 * (c.yy - cy) / max(size, 1.0)  # light from above
        noise = rng.normal(0, 5, (int(mask.sum()), 3))
        c.image[mask] = (color[None] * shade[mask][:, None]) + noise
        c.label(mask, cat)


def _draw_crowd(c: _Canvas) -> None:
    """A tight cluster of small disks annotated as one crowd segment."""
    rng, h, w, yy, xx = c.rng, c.h, c.w, c.yy, c.xx
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    crowd = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(4, 9))):
        oy, ox, r = rng.normal(0, h * 0.05), rng.normal(0, w * 0.05), rng.uniform(2, 4)
        crowd |= (yy - cy - oy) ** 2 + (xx - cx - ox) ** 2 <= r * r
    c.image[crowd] = _COLORS[_DISK]
    c.label(crowd, _DISK, iscrowd=1)


def _draw_void(c: _Canvas) -> None:
    """An unlabeled strip along one border in some images (COCO has void pixels too)."""
    if c.rng.random() < 0.3:
        width = int(c.rng.integers(2, max(3, c.w // 16)))
        c.ids[:, :width] = 0
        c.image[:, :width] = c.rng.uniform(0, 40, (c.h, width, 1))


def _draw_image(rng: np.random.Generator, spec: SyntheticSpec, index: int):
    """Draw one image. Returns (rgb uint8 (H, W, 3), ids int64 (H, W), segments list)."""
    c = _Canvas(rng, spec.height, spec.image_size)
    _draw_stuff(c)
    empty = rng.random() < spec.empty_fraction or index == 0  # image 0 is always thing-free
    _draw_things(c, spec, 0 if empty else int(rng.integers(1, spec.max_things + 1)))
    if not empty and rng.random() < spec.crowd_fraction:
        _draw_crowd(c)
    _draw_void(c)
    # Keep segments that still own pixels; fill in area and bbox from the final id map.
    seg_index = segment_index_map(c.ids, [seg["id"] for seg in c.segments], f"image {index}")
    areas, boxes = segment_boxes(seg_index, len(c.segments))
    kept = [
        {**seg, "area": area, "bbox": box}
        for seg, area, box in zip(c.segments, areas.tolist(), boxes.tolist())
        if area
    ]
    return np.clip(c.image, 0, 255).astype(np.uint8), c.ids, kept


def generate_split(out_dir: str, split: str, spec: SyntheticSpec) -> None:
    """Write one split of the dataset into ``out_dir`` (see the module docstring for the layout)."""
    rng = np.random.default_rng(spec.seed)
    meta = metadata_from_categories(SYNTHETIC_CATEGORIES)
    for sub in (split, f"panoptic_{split}", f"panoptic_semseg_{split}"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    images, annotations, instances = [], [], []
    for i in range(spec.num_images):
        rgb, ids, segments = _draw_image(rng, spec, i)
        stem = f"{split}_{i:06d}"
        image_id = i + 1
        Image.fromarray(rgb).save(os.path.join(out_dir, split, stem + ".jpg"), quality=95)
        Image.fromarray(id_to_rgb(ids)).save(
            os.path.join(out_dir, f"panoptic_{split}", stem + ".png")
        )
        # Derived files, made by the converter that users run on their own datasets.
        sem, anns = separate_image(
            ids, segments, meta, image_id, len(instances) + 1, file_name=stem
        )
        Image.fromarray(sem).save(os.path.join(out_dir, f"panoptic_semseg_{split}", stem + ".png"))
        instances.extend(anns)
        images.append(
            {
                "id": image_id,
                "file_name": stem + ".jpg",
                "width": rgb.shape[1],
                "height": rgb.shape[0],
            }
        )
        annotations.append(
            {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}
        )
    categories = SYNTHETIC_CATEGORIES
    with open(os.path.join(out_dir, f"panoptic_{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    thing_cats = [c for c in categories if c["isthing"]]
    with open(os.path.join(out_dir, f"instances_{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": instances, "categories": thing_cats}, f)


def _split_dir(root: str, split: str, spec: SyntheticSpec) -> str:
    size = f"{spec.image_size}" if spec.image_height is None else f"{spec.image_size}x{spec.height}"
    variant = f"v{_GENERATOR_VERSION}_s{size}_n{spec.num_images}_seed{spec.seed}"
    return os.path.join(root, "synthetic_panoptic", variant, split)


def ensure_split(root: str, split: str, spec: SyntheticSpec) -> str:
    """Generate the split under ``root`` unless it is already complete; return its folder.

    Writes into a temporary folder and renames it into place, so concurrent processes (e.g. DDP
    ranks) and interrupted runs never see a half-written dataset.
    """
    final = _split_dir(root, split, spec)
    if os.path.isfile(os.path.join(final, f"panoptic_{split}.json")):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{split}-", dir=os.path.dirname(final))
    try:
        logger.info("Generating synthetic panoptic split '%s' (%s) in %s", split, spec, final)
        generate_split(tmp, split, spec)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first
            if not os.path.isfile(os.path.join(final, f"panoptic_{split}.json")):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def register_synthetic_datasets(
    image_size: int = 128,
    num_train: int = 96,
    num_val: int = 24,
    seed: int = 0,
    root: str | None = None,
) -> None:
    """(Re-)register ``synthetic_panoptic_train`` and ``synthetic_panoptic_val``.

    Files are generated lazily, the first time the dataset dicts are requested.
    """
    root = root or os.getenv("DETECTRON2_DATASETS", "datasets")
    specs = {
        "train": SyntheticSpec(image_size, num_train, seed=2 * seed),
        "val": SyntheticSpec(image_size, num_val, seed=2 * seed + 1),
    }
    for split, spec in specs.items():
        name = f"synthetic_panoptic_{split}"
        folder = _split_dir(root, split, spec)
        panoptic_json = os.path.join(folder, f"panoptic_{split}.json")

        def load(split=split, spec=spec, panoptic_json=panoptic_json, name=name):
            folder = ensure_split(root, split, spec)
            return load_panoptic_json(
                panoptic_json,
                os.path.join(folder, split),
                os.path.join(folder, f"panoptic_{split}"),
                os.path.join(folder, f"panoptic_semseg_{split}"),
                MetadataCatalog.get(name),
            )

        register_panoptic_dataset(
            name,
            image_root=os.path.join(folder, split),
            panoptic_root=os.path.join(folder, f"panoptic_{split}"),
            panoptic_json=panoptic_json,
            categories=SYNTHETIC_CATEGORIES,
            sem_seg_root=os.path.join(folder, f"panoptic_semseg_{split}"),
            instances_json=os.path.join(folder, f"instances_{split}.json"),
            loader=load,
        )
