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

Output paths are checked before the model is built (no output over an input, writable folders,
a video extension for ``--video-input``); an image that fails is skipped with the reason, a
failed write stops the run naming the file; overlays are drawn at most
:data:`~panoptic_ext.vis.predictions.OVERLAY_MAX_SIDE` pixels wide and high; SIGTERM still
writes ``predictions.json`` (see RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np

from ..config import build_cfg
from ..data.datasets import register_synthetic_datasets
from ..data.image_io import UnreadableImageError, UnsupportedImageError
from ..engine.launch import build_cfg_with_datasets
from ..engine.predictor import DemoPredictor, check_input_format, demo_metadata, panoptic_record
from ..export import ExportedDemoPredictor
from ..utils.meta_arch import META_ARCHITECTURES, ModelOutput
from ..utils.paths import refuse_outputs_over_inputs
from ..utils.write_errors import OutputWriteError, reporting_write_errors, write_bytes
from ..vis.predictions import visualize
from .demo_inputs import (
    IMAGE_EXTENSIONS,
    DemoInput,
    DemoResults,
    not_a_regular_file,
    plan_inputs,
)

__all__ = ["build_predictor", "check_output_paths", "main", "parse_args"]

logger = logging.getLogger("panoptic_ext.demo")

# An image that cannot be read is skipped (named in the log), the others still run.
_UNREADABLE = (UnreadableImageError, UnsupportedImageError)
# --output of --video-input: containers OpenCV writes with the "mp4v" codec.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi")


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
            cfg = build_cfg_with_datasets(args.config_file, args.opts)
        else:
            cfg = build_cfg(None, args.opts)
            register_synthetic_datasets()  # class names of the synthetic quick schedules
        dataset = args.dataset or predictor.spec.dataset or None
        metadata = demo_metadata(cfg, dataset)
        check(metadata, predictor.spec.meta_architecture)
        return predictor, metadata, predictor.spec.meta_architecture
    cfg = build_cfg_with_datasets(args.config_file, args.opts)
    problem = check_input_format(cfg)
    if problem:
        logger.warning(problem)
    metadata = demo_metadata(cfg, args.dataset)
    check(metadata, cfg.MODEL.META_ARCHITECTURE)
    return DemoPredictor(cfg), metadata, cfg.MODEL.META_ARCHITECTURE


def _video_frames(path: str) -> Iterator[np.ndarray]:
    """The frames of a video; fewer than its header announces is a warning naming both counts
    (a truncated or damaged file ends early without an error from OpenCV)."""
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise FileNotFoundError(f"cannot open video {path}")
    expected, read = int(video.get(cv2.CAP_PROP_FRAME_COUNT)), 0
    try:
        while True:
            ok, frame = video.read()
            if not ok:
                break
            read += 1
            yield frame
    finally:
        video.release()
    if 0 < read < expected:
        logger.warning(
            f"{path}: read {read} of {expected} frames; the file may be truncated or damaged"
        )


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


def _single_image_output(args: argparse.Namespace, inputs: list[DemoInput]) -> bool:
    """``--output`` names the overlay file itself (one input image, an image extension)."""
    ext = os.path.splitext(args.output or "")[1].lower()
    return len(inputs) == 1 and ext in IMAGE_EXTENSIONS


def _probe_folder(folder: str, option: str) -> None:
    """Write a file in ``folder`` (created for the probe, then removed again if it was new), so
    that a read-only, full or forbidden output stops the run before the model is built (naming
    the option and the folder), and a run refused later leaves no empty folder behind."""
    created = []
    parent = os.path.abspath(folder)
    while not os.path.exists(parent):
        created.append(parent)
        parent = os.path.dirname(parent)
    try:
        with reporting_write_errors(folder):
            os.makedirs(folder, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder) as f:
                f.write(b"probe")
                f.flush()
    except OutputWriteError as e:
        raise OutputWriteError(f"{option} {folder}", e) from e
    finally:
        for path in created:  # deepest first
            with contextlib.suppress(OSError):
                os.rmdir(path)


def _make_output_folders(args: argparse.Namespace, inputs: list[DemoInput]) -> None:
    """Create the output folders once the model is built and the run starts writing."""
    for paths in _planned_outputs(args, inputs).values():
        for path in paths:
            folder = os.path.dirname(os.path.abspath(path))
            with reporting_write_errors(folder):
                os.makedirs(folder, exist_ok=True)


def _planned_outputs(args: argparse.Namespace, inputs: list[DemoInput]) -> dict[str, list[str]]:
    """Every file the run will write, by option: overlays, COCO-panoptic PNGs + predictions."""
    planned: dict[str, list[str]] = {"--output": [], "--panoptic-out": []}
    if args.output:
        if args.video_input or _single_image_output(args, inputs):
            planned["--output"].append(args.output)
        else:
            planned["--output"] += [os.path.join(args.output, i.name + ".png") for i in inputs]
    if args.panoptic_out:
        pngs = [os.path.join(args.panoptic_out, i.name + ".png") for i in inputs]
        planned["--panoptic-out"] += [*pngs, os.path.join(args.panoptic_out, "predictions.json")]
    return planned


def check_output_paths(args: argparse.Namespace, inputs: list[DemoInput]) -> None:
    """Where the demo writes, checked before the model is built: no output over an input, a
    video extension OpenCV can write, folders that can be created and written."""
    sources = {"--input": [i.path for i in inputs], "--video-input": args.video_input}
    refuse_outputs_over_inputs(sources, _planned_outputs(args, inputs))
    if args.video_input and args.output:
        if os.path.splitext(args.output)[1].lower() not in VIDEO_EXTENSIONS:
            raise ValueError(
                f"--output {args.output!r} for --video-input must be a video file name ending "
                f"in one of {', '.join(VIDEO_EXTENSIONS)}"
            )
    if args.output:
        single = args.video_input or _single_image_output(args, inputs)
        folder = os.path.dirname(os.path.abspath(args.output)) if single else args.output
        if not single and os.path.exists(args.output) and not os.path.isdir(args.output):
            raise ValueError(
                f"--output {args.output} is not a folder: for several images, or a name "
                f"without an image extension ({', '.join(IMAGE_EXTENSIONS)}), --output is the "
                "folder of the overlays"
            )
        if not (single and os.path.exists(args.output)):  # an existing file is replaced
            _probe_folder(folder, "--output")
    if args.panoptic_out:
        _probe_folder(args.panoptic_out, "--panoptic-out")


def _check_outputs(args: argparse.Namespace, meta_architecture: str, metadata: Any) -> None:
    """What ``--panoptic-out`` needs, checked before the model is built."""
    if not args.panoptic_out:
        return
    info = META_ARCHITECTURES.get(meta_architecture)  # unknown models: found out when run
    if info is not None and ModelOutput.PANOPTIC not in info.outputs:
        raise ValueError(f"{meta_architecture} predicts no panoptic_seg; drop --panoptic-out")
    if metadata.get("thing_dataset_id_to_contiguous_id") is None:
        raise ValueError("--panoptic-out needs dataset metadata with id maps: pass --dataset")


def _write_image(path: str, bgr: np.ndarray) -> None:
    """Encode by ``path``'s extension and write; failures name the file and the cause
    (``cv2.imwrite`` only returns False)."""
    ext = os.path.splitext(path)[1] or ".png"
    ok, data = cv2.imencode(ext, np.ascontiguousarray(bgr))
    if not ok:
        raise OutputWriteError(path, OSError(0, f"OpenCV cannot encode a {ext} image"))
    write_bytes(path, data.tobytes())


def _run_video(args: argparse.Namespace, predictor: DemoPredictor, metadata: Any) -> int:
    writer, frames = None, 0
    try:
        for frame in _video_frames(args.video_input):
            frames += 1
            rgb, outputs = predictor.on_frame(frame)
            overlay = np.ascontiguousarray(visualize(rgb, outputs, metadata)[:, :, ::-1])
            if not args.output:
                continue
            if writer is None:
                h, w = overlay.shape[:2]
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                writer = cv2.VideoWriter(args.output, fourcc, 15.0, (w, h))
                if not writer.isOpened():
                    raise OutputWriteError(
                        args.output, OSError(0, f"OpenCV cannot open a {w}x{h} mp4v video there")
                    )
            writer.write(overlay)
    finally:
        if writer is not None:
            writer.release()
    if writer is not None and not (os.path.isfile(args.output) and os.path.getsize(args.output)):
        raise OutputWriteError(args.output, OSError(0, "OpenCV wrote nothing (disk full?)"))
    logger.info(f"{args.video_input}: {frames} frames" + (f" -> {args.output}" if writer else ""))
    return 0


def _write_image_outputs(
    args: argparse.Namespace, item: DemoInput, single: bool, rgb, outputs, metadata
) -> dict[str, Any] | None:
    """Overlay and COCO-panoptic PNG of one image; returns its record (``--panoptic-out``)."""
    if args.output:
        target = args.output if single else os.path.join(args.output, item.name + ".png")
        _write_image(target, visualize(rgb, outputs, metadata)[:, :, ::-1])
    if not args.panoptic_out:
        return None
    colors, record = panoptic_record(outputs, metadata, item.name, item.name + ".png")
    _write_image(os.path.join(args.panoptic_out, item.name + ".png"), colors[:, :, ::-1])
    record["input_file"] = item.path  # which input each PNG belongs to
    return record


def _run_images(
    args: argparse.Namespace, inputs: list[DemoInput], predictor: DemoPredictor, metadata: Any
) -> int:
    """Every input in turn. One that fails (unreadable, not a regular file, too small to
    resize, ...) is skipped with the reason; a failed write stops the run. ``predictions.json``
    is written for the images done whatever ends the run; exit status 1 if any was skipped."""
    results = DemoResults()
    single = _single_image_output(args, inputs)
    done = 0
    try:
        for item in inputs:
            problem = not_a_regular_file(item.path)
            if problem:
                results.skip(item.path, problem)
                continue
            try:
                rgb, outputs = predictor(item.path)
                record = _write_image_outputs(args, item, single, rgb, outputs, metadata)
            except OutputWriteError:
                raise  # the next image would fail the same way
            except _UNREADABLE as e:
                results.skip(item.path, e)
                continue
            except Exception as e:  # this image only: the others still run
                results.skip(item.path, f"{type(e).__name__}: {e}")
                continue
            done += 1
            if record is not None:
                results.records.append(record)
            logger.info(f"{item.path}: {', '.join(sorted(outputs))}")
    except (SystemExit, KeyboardInterrupt):
        logger.error(f"interrupted after {done} of {len(inputs)} images")
        raise
    finally:
        if args.panoptic_out:
            results.write_predictions(args.panoptic_out, metadata.get("categories", []))
    return results.exit_status(len(inputs))


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler's time limit) unwinds like Ctrl-C, so that the
    ``finally`` blocks write ``predictions.json``; the exit status is then 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 1 when an input image was skipped (named in the log), else 0."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    # Everything a user gave is checked before the (slow) model is built.
    inputs = plan_inputs(args.input) if args.input else []
    if args.video_input:
        if not os.path.lexists(args.video_input):
            raise FileNotFoundError(f"--video-input {args.video_input!r} does not exist")
        problem = not_a_regular_file(args.video_input)
        if problem:
            raise ValueError(f"--video-input {args.video_input!r} {problem}")
    check_output_paths(args, inputs)
    with _sigterm_as_exit():
        predictor, metadata, _ = build_predictor(
            args, check=lambda metadata, name: _check_outputs(args, name, metadata)
        )
        _make_output_folders(args, inputs)
        if args.video_input:
            return _run_video(args, predictor, metadata)
        return _run_images(args, inputs, predictor, metadata)


if __name__ == "__main__":
    sys.exit(main())
