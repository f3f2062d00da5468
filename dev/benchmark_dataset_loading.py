#!/usr/bin/env python3
"""Time of the JSON checks made while a COCO-panoptic dataset is loaded, side by side.

    python -m dev.benchmark_dataset_loading [--images 118287] [--segments 11] [--repeats 3]

Writes a COCO-train-sized JSON (118287 images, 11 segments each, 133 categories by default) to a
temporary folder, then times, interleaved in one run: ``json.load`` alone, the checks alone
(:func:`panoptic_ext.data.json_checks.panoptic_json_problems`) and the whole loader
(:func:`panoptic_ext.data.datasets.register.load_panoptic_json`). Prints the medians.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

from panoptic_ext.data.datasets.register import load_panoptic_json
from panoptic_ext.data.json_checks import panoptic_json_problems


def make_json(path: str, num_images: int, num_segments: int, num_categories: int = 133) -> None:
    categories = [
        {"id": i + 1, "name": f"c{i}", "isthing": int(i < 80), "color": [i, i, i]}
        for i in range(num_categories)
    ]
    images, annotations = [], []
    for i in range(num_images):
        name = f"{i:012d}"
        images.append({"id": i + 1, "file_name": name + ".jpg", "height": 480, "width": 640})
        segments = [
            {"id": 1000 * s + 7, "category_id": 1 + (i + s) % num_categories, "iscrowd": 0,
             "area": 1234, "bbox": [1, 2, 30, 40]}
            for s in range(num_segments)
        ]  # fmt: skip
        annotations.append(
            {"image_id": i + 1, "file_name": name + ".png", "segments_info": segments}
        )
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=118287)
    parser.add_argument("--segments", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "panoptic.json")
        make_json(path, args.images, args.segments)
        size = os.path.getsize(path)
        times = {"json.load": [], "checks": [], "load_panoptic_json": []}
        for _ in range(args.repeats):
            t = time.perf_counter()
            with open(path) as f:
                data = json.load(f)
            times["json.load"].append(time.perf_counter() - t)
            t = time.perf_counter()
            assert not [p for p in panoptic_json_problems(data, path) if p.level == "error"]
            times["checks"].append(time.perf_counter() - t)
            t = time.perf_counter()
            load_panoptic_json(path, tmp, tmp)
            times["load_panoptic_json"].append(time.perf_counter() - t)
    print(f"{args.images} images x {args.segments} segments ({size / 1e6:.0f} MB JSON)")
    for name, values in times.items():
        print(
            f"{name:>20}: median {statistics.median(values):.2f} s  {[round(v, 2) for v in values]}"
        )


if __name__ == "__main__":
    main()
