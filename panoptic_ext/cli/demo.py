"""Run any panoptic_ext config + weights on images, folders, globs or a video.

    panoptic-ext-demo --config-file configs/quick_schedules/panoptic_fpn_synthetic.yaml \\
        --input datasets/my_images/ "shots/*.jpg" one.png --output out/ \\
        --panoptic-out out/panoptic MODEL.WEIGHTS output/panoptic_fpn_synthetic/model_final.pth
    python demo/demo.py --config-file CFG --video-input clip.mp4 --output out/clip.mp4 \\
        MODEL.WEIGHTS model.pth
    panoptic-ext-demo --onnx export/model.onnx --input shots/ --output out/   # exported model

Images go through the evaluation path's own preprocessing (``PanopticDatasetMapper`` at test
time: ``INPUT.FORMAT`` colour order, ``INPUT.MIN/MAX_SIZE_TEST`` resize) and the weights are
loaded by the trainer's checkpointer, so the demo shows what evaluation measures. Writes
detectron2 ``Visualizer`` overlays (panoptic, else instances, else semantic), and with
``--panoptic-out DIR`` COCO-panoptic ``DIR/<stem>.png`` files plus ``DIR/predictions.json``
(dataset category ids). Class names come from ``--dataset`` (default: the config's first test
set). Before running, the colour order of ``MODEL.PIXEL_MEAN`` is checked against
``INPUT.FORMAT``. With ``--onnx FILE`` (a ``panoptic-ext-export`` output, ``.onnx`` or ``.ts``)
the exported model runs instead (ONNX Runtime / TorchScript, no weights or config needed: the
file carries its preprocessing, post-processing settings and test-set name).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from ..config import build_cfg
from ..data import PanopticDatasetMapper
from ..data.datasets import register_synthetic_datasets
from ..data.image_io import UnreadableImageError, UnsupportedImageError, read_image
from ..engine import Trainer
from ..engine.launch import register_config_datasets
from ..export import ExportedPredictor
from ..structures.boxes import segment_boxes
from ..structures.panoptic_ids import id_to_rgb
from ..utils.meta_arch import META_ARCHITECTURES, ModelOutput
from .demo_inputs import IMAGE_EXTENSIONS, DemoInput, DemoResults, expand_inputs, plan_inputs

__all__ = [
    "DemoPredictor",
    "ExportedDemoPredictor",
    "build_predictor",
    "expand_inputs",
    "main",
    "panoptic_record",
    "plan_inputs",
    "visualize",
]

logger = logging.getLogger("panoptic_ext.demo")

# An image that cannot be read is skipped (named in the log), the others still run.
_UNREADABLE = (UnreadableImageError, UnsupportedImageError)
# ImageNet means differ by ~20 between the R and B channels; a smaller gap says nothing.
_MEAN_ORDER_MARGIN = 5.0


def check_input_format(cfg: CfgNode) -> str | None:
    """Explain a mismatch between ``INPUT.FORMAT`` and the channel order of ``MODEL.PIXEL_MEAN``.

    Natural images have a larger red than blue mean (ImageNet: R 123.7, B 103.5), so a BGR
    model's mean starts with the smaller value and an RGB model's with the larger one. A
    mismatch feeds the network swapped colours (e.g. one bogus whole-image segment).

    Returns:
        a message when the order contradicts the format, else None (also for custom means
        where R and B are too close to tell).
    """
    fmt, mean = cfg.INPUT.FORMAT, list(cfg.MODEL.PIXEL_MEAN)
    if fmt not in ("BGR", "RGB") or len(mean) != 3 or abs(mean[0] - mean[2]) < _MEAN_ORDER_MARGIN:
        return None
    looks = "BGR" if mean[0] < mean[2] else "RGB"
    if looks == fmt:
        return None
    return (
        f"INPUT.FORMAT is {fmt} but MODEL.PIXEL_MEAN {mean} is in {looks} order "
        f"(first channel {'<' if looks == 'BGR' else '>'} last); the model will see swapped "
        f"colours. Set INPUT.FORMAT {looks} or reorder PIXEL_MEAN/PIXEL_STD."
    )


def setup_cfg(config_file: str, opts: list[str]) -> CfgNode:
    """Frozen config with every panoptic_ext key, on CPU when CUDA is absent."""
    cfg = build_cfg(config_file, opts)
    register_config_datasets(cfg)  # class names of DATASETS.TEST[0] (synthetic or the user's)
    return cfg


def demo_metadata(cfg: CfgNode, dataset: str | None = None) -> Any:
    """Class names and id maps: ``dataset``'s, else the config's first registered test/train set.

    COCO configs run without the COCO files on disk: detectron2's own COCO panoptic metadata
    (same separated convention) then supplies the names.
    """
    names = [dataset] if dataset else list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    for name in names:
        try:
            if MetadataCatalog.get(name).get("thing_classes") is not None:
                return MetadataCatalog.get(name)
        except FileNotFoundError as e:  # a builtin dataset whose files are not here
            logger.info(f"no metadata from '{name}': {e}")
    if any(name.startswith("coco_") for name in names):
        return MetadataCatalog.get("coco_2017_val_panoptic_separated")
    logger.warning(f"no registered dataset among {names}: no class names (use --dataset)")
    return MetadataCatalog.get(names[0] if names else "__unused")


class DemoPredictor:
    """Model + the evaluation path's preprocessing, for one image at a time.

    ``__call__(path)`` runs ``PanopticDatasetMapper(cfg, is_train=False)`` on the file, exactly
    as the test loader does; ``on_frame(bgr)`` applies the same colour conversion and resize
    to an in-memory BGR frame (video).
    """

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg
        self.model = Trainer.build_model(cfg)
        self.model.eval()
        checkpointer = Trainer.build_checkpointer(cfg, self.model, inference=True)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
        self.mapper = PanopticDatasetMapper(cfg, is_train=False)
        self.augmentations = T.AugmentationList(
            PanopticDatasetMapper.from_config(cfg, False)["augmentations"]
        )

    @torch.no_grad()
    def _run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return self.model([inputs])[0]

    def __call__(self, path: str) -> tuple[np.ndarray, dict[str, Any]]:
        """Returns the image as RGB uint8 (H, W, 3) and the model's output dict.

        Raises:
            UnsupportedImageError: 16-bit, float, CMYK, ... images; UnreadableImageError: files
            that are not images, truncated, missing.
        """
        rgb = read_image(path, format="RGB")
        h, w = rgb.shape[:2]
        inputs = self.mapper(
            {"file_name": path, "image_id": os.path.basename(path), "height": h, "width": w}
        )
        return rgb, self._run(inputs)

    def on_frame(self, bgr: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Same as ``__call__`` for a decoded (H, W, 3) uint8 BGR frame."""
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        # The same conversion read_image applies to a decoded file.
        image = utils.convert_PIL_to_numpy(Image.fromarray(rgb), self.cfg.INPUT.FORMAT)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        h, w = bgr.shape[:2]
        return rgb, self._run({"image": tensor, "height": h, "width": w})


class ExportedDemoPredictor:
    """:class:`DemoPredictor`'s interface over an exported model (``--onnx``).

    Files are read as the test loader reads them (EXIF orientation applied, then the model's
    colour order); the predictor resizes them as ``INPUT.MIN/MAX_SIZE_TEST`` did at export time.
    """

    def __init__(self, path: str):
        self.predictor = ExportedPredictor(path)
        self.spec = self.predictor.spec

    def __call__(self, path: str) -> tuple[np.ndarray, dict[str, Any]]:
        rgb = read_image(path, format="RGB")  # refuses 16-bit, float, CMYK as the eager path
        image = rgb if self.spec.input_format == "RGB" else rgb[:, :, ::-1]
        tensor = self.predictor.preprocess(np.ascontiguousarray(image))
        return rgb, self.predictor.run_tensor(tensor, *rgb.shape[:2])

    def on_frame(self, bgr: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        return np.ascontiguousarray(bgr[:, :, ::-1]), self.predictor(bgr)


def build_predictor(
    args: argparse.Namespace, check: Callable[[Any, str], None] = lambda metadata, name: None
) -> tuple[Any, Any, str]:
    """The predictor, the class metadata and the model's name, from the command line.

    ``check(metadata, model_name)`` runs before the eager model is built (an exported model
    is loaded first: its file names the dataset and the meta-architecture).
    """
    if args.onnx:
        predictor = ExportedDemoPredictor(args.onnx)
        if args.config_file:
            cfg = setup_cfg(args.config_file, args.opts)
        else:
            cfg = build_cfg(None, args.opts)
            register_synthetic_datasets()  # class names of the synthetic quick schedules
        dataset = args.dataset or predictor.spec.dataset or None
        metadata = demo_metadata(cfg, dataset)
        check(metadata, predictor.spec.meta_architecture)
        return predictor, metadata, predictor.spec.meta_architecture
    cfg = setup_cfg(args.config_file, args.opts)
    problem = check_input_format(cfg)
    if problem:
        logger.warning(problem)
    metadata = demo_metadata(cfg, args.dataset)
    check(metadata, cfg.MODEL.META_ARCHITECTURE)
    return DemoPredictor(cfg), metadata, cfg.MODEL.META_ARCHITECTURE


def visualize(rgb: np.ndarray, outputs: dict[str, Any], metadata: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB overlay: panoptic if predicted, else instances, else semantic."""
    vis = Visualizer(rgb, metadata, instance_mode=ColorMode.IMAGE)
    if "panoptic_seg" in outputs:
        ids, segments = outputs["panoptic_seg"]
        out = vis.draw_panoptic_seg(ids.to("cpu"), segments)
    elif "instances" in outputs:
        out = vis.draw_instance_predictions(outputs["instances"].to("cpu"))
    else:
        out = vis.draw_sem_seg(outputs["sem_seg"].argmax(dim=0).to("cpu"))
    return out.get_image()


def panoptic_record(
    outputs: dict[str, Any], metadata: Any, image_id: Any, file_name: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """COCO-panoptic (H, W, 3) PNG colours and annotation (dataset category ids) of one output."""
    ids_t, segments = outputs["panoptic_seg"]
    ids = ids_t.to("cpu").numpy().astype(np.int64)
    thing = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
    stuff = {v: k for k, v in metadata.stuff_dataset_id_to_contiguous_id.items()}
    # Renumber ids to 1..K in segments_info order (the model's ids can be any integers).
    lut = np.zeros(int(ids.max(initial=0)) + 1, np.int64)
    for k, s in enumerate(segments, start=1):
        lut[s["id"]] = k
    index = lut[ids]
    areas, boxes = segment_boxes(index, len(segments))
    infos = []
    for k, s in enumerate(segments):
        table = thing if s.get("isthing") else stuff
        info = {
            "id": k + 1,
            "category_id": int(table[s["category_id"]]),
            "iscrowd": 0,
            "isthing": bool(s.get("isthing")),
            "area": int(areas[k]),
            "bbox": boxes[k].tolist(),
        }
        if "score" in s:
            info["score"] = float(s["score"])
        infos.append(info)
    return id_to_rgb(index), {"image_id": image_id, "file_name": file_name, "segments_info": infos}


def _video_frames(path: str) -> Iterator[np.ndarray]:
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise FileNotFoundError(f"cannot open video {path}")
    try:
        while True:
            ok, frame = video.read()
            if not ok:
                return
            yield frame
    finally:
        video.release()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", help="config (optional with --onnx: class names)")
    parser.add_argument("--onnx", help="run this exported model (.onnx or .ts) instead")
    parser.add_argument("--input", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--video-input", help="a video file")
    parser.add_argument("--output", help="folder for overlays (a file for one image / the video)")
    parser.add_argument("--panoptic-out", help="folder for COCO-panoptic PNGs + predictions.json")
    parser.add_argument("--dataset", help="registered dataset whose metadata names the classes")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if bool(args.input) == bool(args.video_input):
        parser.error("give exactly one of --input and --video-input")
    if not args.config_file and not args.onnx:
        parser.error("give --config-file (and MODEL.WEIGHTS) or --onnx")
    return args


def _check_outputs(args: argparse.Namespace, meta_architecture: str, metadata: Any) -> None:
    """What ``--panoptic-out`` needs, checked before the model is built."""
    if not args.panoptic_out:
        return
    info = META_ARCHITECTURES.get(meta_architecture)  # unknown models: found out when run
    if info is not None and ModelOutput.PANOPTIC not in info.outputs:
        raise ValueError(f"{meta_architecture} predicts no panoptic_seg; drop --panoptic-out")
    if metadata.get("thing_dataset_id_to_contiguous_id") is None:
        raise ValueError("--panoptic-out needs dataset metadata with id maps: pass --dataset")


def _run_video(args: argparse.Namespace, predictor: DemoPredictor, metadata: Any) -> int:
    writer, frames = None, 0
    for frame in _video_frames(args.video_input):
        frames += 1
        rgb, outputs = predictor.on_frame(frame)
        overlay = visualize(rgb, outputs, metadata)[:, :, ::-1]
        if args.output:
            if writer is None:
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                h, w = overlay.shape[:2]
                writer = cv2.VideoWriter(args.output, fourcc, 15.0, (w, h))
            writer.write(np.ascontiguousarray(overlay))
    if writer is not None:
        writer.release()
    logger.info(f"{args.video_input}: {frames} frames")
    return 0


def _write_image_outputs(
    args: argparse.Namespace, item: DemoInput, single: bool, rgb, outputs, metadata
) -> dict[str, Any] | None:
    """Overlay and COCO-panoptic PNG of one image; returns its record (``--panoptic-out``)."""
    if args.output:
        target = args.output if single else os.path.join(args.output, item.name + ".png")
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        cv2.imwrite(target, visualize(rgb, outputs, metadata)[:, :, ::-1])
    if not args.panoptic_out:
        return None
    colors, record = panoptic_record(outputs, metadata, item.name, item.name + ".png")
    cv2.imwrite(os.path.join(args.panoptic_out, item.name + ".png"), colors[:, :, ::-1])
    record["input_file"] = item.path  # which input each PNG belongs to
    return record


def _run_images(
    args: argparse.Namespace, inputs: list[DemoInput], predictor: DemoPredictor, metadata: Any
) -> int:
    """Every input in turn; an unreadable one is skipped. ``predictions.json`` is written for
    the images that worked even if a later one fails; exit status 1 if any was skipped."""
    results = DemoResults()
    single = len(inputs) == 1 and os.path.splitext(args.output or "")[1].lower() in IMAGE_EXTENSIONS
    if args.panoptic_out:
        os.makedirs(args.panoptic_out, exist_ok=True)
    try:
        for item in inputs:
            try:
                rgb, outputs = predictor(item.path)
            except _UNREADABLE as e:
                results.skip(item.path, e)
                continue
            record = _write_image_outputs(args, item, single, rgb, outputs, metadata)
            if record is not None:
                results.records.append(record)
            logger.info(f"{item.path}: {', '.join(sorted(outputs))}")
    finally:
        if args.panoptic_out:
            results.write_predictions(args.panoptic_out, metadata.get("categories", []))
    return results.exit_status(len(inputs))


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 1 when an input image was skipped (named in the log), else 0."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    # Everything a user gave is checked before the (slow) model is built.
    inputs = plan_inputs(args.input) if args.input else []
    if args.video_input and not os.path.isfile(args.video_input):
        raise FileNotFoundError(f"--video-input {args.video_input!r} does not exist")
    predictor, metadata, _ = build_predictor(
        args, check=lambda metadata, name: _check_outputs(args, name, metadata)
    )
    if args.video_input:
        return _run_video(args, predictor, metadata)
    return _run_images(args, inputs, predictor, metadata)


if __name__ == "__main__":
    sys.exit(main())
