"""Export a built model to ONNX or TorchScript, after checking it against the eager model.

The network of the model's family is traced once on the first sample image (the TorchScript
tracer; the ONNX file is written by ``torch.onnx.export(dynamo=False)``, the path detectron2
itself supports), with the image height and width dynamic. Before the file is published, the
exported model runs on every sample image at its test size and at a second, different size,
next to the eager model, through the *same* runtime predictor users get; if any result differs
beyond float rounding (see :class:`~panoptic_ext.evaluation.compare.Tolerance`) nothing is written.

With ``quantize``, the INT8 model is then derived from the written fp32 file
(:mod:`~panoptic_ext.export.quantize`) and checked the same way, on the same inputs, by its
outcomes (:class:`~panoptic_ext.evaluation.compare.OutcomeTolerance`: matched segments,
confident instances, pixel agreement); it is written as ``model_int8.onnx`` only if it passes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.export.torchscript_patch import patch_builtin_len
from torch import nn

from ..evaluation.compare import (
    Comparison,
    OutcomeTolerance,
    Tolerance,
    compare_outcomes,
    compare_results,
)
from .base import Family, NetworkOutputs
from .families import family_of
from .quantize import QuantizeOptions, quantize_int8
from .runtime import INPUT_NAME, ExportedPredictor
from .spec import SPEC_KEY, ExportFormat, ExportSpec, settings_to_dict
from .symbolics import OPSET, register_symbolics

__all__ = ["ExportCheckError", "ExportResult", "export_model", "check_inputs"]

logger = logging.getLogger(__name__)

# Size step of the second check size (at least the backbone's size divisibility).
_MIN_CHECK_STEP = 32
# File name of the INT8 model, next to the fp32 ``model.onnx``.
INT8_FILE_NAME = "model_int8.onnx"


class ExportCheckError(RuntimeError):
    """The exported model's results differ from the eager model's (nothing was written)."""


@dataclass(frozen=True)
class ExportResult:
    """The written file and its spec; ``int8``: the INT8 model's, when one was asked for."""

    path: str
    spec: ExportSpec
    int8: ExportResult | None = None


def _versions() -> dict[str, str]:
    import torchvision

    # The parent package is loaded whenever this module is (importing it would run up the layers).
    package = sys.modules.get(__name__.split(".")[0])
    versions = {
        "panoptic_ext": getattr(package, "__version__", "unknown"),
        "torch": torch.__version__,
    }
    versions["torchvision"] = torchvision.__version__
    with contextlib.suppress(ImportError):
        import onnx

        versions["onnx"] = onnx.__version__
    return versions


def build_spec(cfg: CfgNode, model: nn.Module, fmt: ExportFormat) -> ExportSpec:
    """The spec of ``model`` (built from ``cfg``) exported as ``fmt``."""
    family = family_of(cfg.MODEL.META_ARCHITECTURE)
    return ExportSpec(
        meta_architecture=cfg.MODEL.META_ARCHITECTURE,
        input_format=cfg.INPUT.FORMAT,
        min_size_test=int(cfg.INPUT.MIN_SIZE_TEST),
        max_size_test=int(cfg.INPUT.MAX_SIZE_TEST),
        output_names=family.output_names(model),
        settings=settings_to_dict(family.settings(model)),
        dataset=cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "",
        format=fmt.value,
        versions=_versions(),
    )


def _write_onnx(
    network: nn.Module,
    image: torch.Tensor,
    spec: ExportSpec,
    path: str,
    output_axes: dict[str, dict[int, str]],
) -> None:
    import onnx

    register_symbolics()
    axes = {INPUT_NAME: {1: "height", 2: "width"}, **output_axes}
    torch.onnx.export(
        network,
        (image,),
        path,
        dynamo=False,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=list(spec.output_names),
        dynamic_axes=axes,
    )
    _set_onnx_spec(path, spec, onnx)


def _set_onnx_spec(path: str, spec: ExportSpec, onnx: Any) -> None:
    proto = onnx.load(path)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, spec.to_json()
    onnx.save(proto, path)


def second_size(height: int, width: int, divisibility: int) -> tuple[int, int]:
    """A size whose padded height and width both differ from those of (height, width).

    With step d >= the size divisibility, padding rounds h up by at most d - 1, so h + d + 1
    pads to at least one more multiple of d (same for w + 2d + 3); the aspect ratio changes too.
    A size that tracing baked into the graph (a padded shape, a feature-map size, a crop) then
    gives a difference instead of passing unnoticed.
    """
    d = max(divisibility, _MIN_CHECK_STEP)
    return height + d + 1, width + 2 * d + 3


def _resized(sample: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """``sample`` with its image bilinearly resized to ``size`` (output size unchanged)."""
    image = sample["image"]
    out = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)
    return {**sample, "image": out[0].round().clamp(0, 255).to(image.dtype)}


def check_inputs(samples: list[dict[str, Any]], divisibility: int) -> list[dict[str, Any]]:
    """Each sample at its own size, then each at its :func:`second_size`."""
    second = [_resized(s, second_size(*s["image"].shape[-2:], divisibility)) for s in samples]
    return list(samples) + second


def _max_abs_diff(a: NetworkOutputs, b: NetworkOutputs) -> float:
    """Largest absolute difference between two runs' outputs (inf where a shape differs)."""
    worst = 0.0
    for name, x in a.items():
        y = b[name]
        if x.shape != y.shape:
            return float("inf")
        if x.numel():
            worst = max(worst, float((x.double() - y.double()).abs().max()))
    return worst


@torch.no_grad()
def _check(
    model: nn.Module,
    path: str,
    samples: list[dict[str, Any]],
    compare: Callable[[dict[str, Any], dict[str, Any]], Comparison],
    refusal: str = "the exported model's results differ from PyTorch's; nothing written",
    threads: int = 0,
) -> list[dict[str, Any]]:
    """Run eager and exported side by side; the figures of each input, or ExportCheckError.

    ``compare(expected, actual)``: the float rounding check or the INT8 outcome check;
    ``refusal``: the error's first line. The exported model runs with ``threads`` intra-op
    threads and, for ONNX, again with one thread: its results must not depend on the thread
    count by ``compare`` (figure ``thread_output_max_diff``, the largest difference of the
    network's outputs between the two runs).
    """
    predictor = ExportedPredictor(path, threads=threads)
    single = ExportedPredictor(path, threads=1) if path.endswith(".onnx") else None
    figures, problems = [], []
    for i, sample in enumerate(check_inputs(samples, model.backbone.size_divisibility)):
        h, w = sample["image"].shape[-2:]
        height = int(sample.get("height", h))
        width = int(sample.get("width", w))
        expected = model([{"image": sample["image"], "height": height, "width": width}])[0]
        try:
            outputs = predictor.backend(sample["image"])
            actual = predictor.postprocess(outputs, (h, w), height, width)
        except Exception as e:  # e.g. a shape baked into the graph: ONNX Runtime refuses it
            problems.append(f"check input {i} ({h}x{w}): the exported model fails: {e}")
            continue
        result = compare(expected, actual)
        figures.append({"input": i, "size": [int(h), int(w)], **result.figures})
        problems += [f"check input {i} ({h}x{w}): {p}" for p in result.problems]
        if single is not None:
            single_outputs = single.backend(sample["image"])
            figures[-1]["thread_output_max_diff"] = _max_abs_diff(outputs, single_outputs)
            by_threads = compare(actual, single.postprocess(single_outputs, (h, w), height, width))
            problems += [
                f"check input {i} ({h}x{w}): 1 thread vs {threads or 'default'} threads: {p}"
                for p in by_threads.problems
            ]
    if problems:
        raise ExportCheckError(f"{refusal}:\n  " + "\n  ".join(problems))
    return figures


def export_model(
    model: nn.Module,
    cfg: CfgNode,
    fmt: ExportFormat,
    output_dir: str,
    samples: list[dict[str, Any]],
    tolerance: Tolerance | None = None,
    threads: int = 0,
    quantize: QuantizeOptions | None = None,
    int8_tolerance: OutcomeTolerance | None = None,
) -> ExportResult:
    """Export ``model`` (built from ``cfg``, weights loaded) into ``output_dir``.

    Args:
        model: the eager model; put in eval mode.
        cfg: its config (meta-architecture, ``INPUT`` format and test sizes, test dataset).
        fmt: ONNX or TorchScript.
        output_dir: folder of ``model.onnx`` / ``model.ts`` (created).
        samples: test-time inputs ``{"image": (3, H, W) uint8, "height", "width"}`` (as
            ``PanopticDatasetMapper(cfg, is_train=False)`` makes them); the first one is traced,
            all of them are checked at two sizes.
        tolerance: allowed differences between exported and eager results (default: the
            family's, :class:`Tolerance` with Panoptic FCN's stuff near-ties).
        threads: ONNX Runtime intra-op threads of the check (0: its default, one per physical
            core); an ONNX export is also run with one thread, and must give the same results.
        quantize: also derive, check and write the INT8 model ``model_int8.onnx`` (ONNX only).
        int8_tolerance: what the INT8 check requires (default: the family's).

    Raises:
        ExportCheckError: results differ (the file is not written).
        ValueError: the model cannot be exported (named config key).
    """
    if not samples:
        raise ValueError("export needs at least one sample image to trace and check")
    family = family_of(cfg.MODEL.META_ARCHITECTURE)
    if quantize is not None and fmt is not ExportFormat.ONNX:
        raise ValueError("--quantize int8 needs --format onnx")
    if quantize is not None and family.int8_float_nodes is None:
        raise ValueError(f"{family.name} has no INT8 export yet (--quantize int8)")
    family.check(model)
    model.eval()
    network = family.network(model).eval()
    spec = build_spec(cfg, model, fmt)
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, fmt.file_name)
    root, ext = os.path.splitext(final)
    tmp = f"{root}.tmp{os.getpid()}{ext}"  # same folder: the final rename is atomic
    try:
        # patch_builtin_len: detectron2's ROI heads split per-image results with len(Instances),
        # which tracing would freeze to the sample's number of detections.
        with torch.no_grad(), patch_builtin_len():
            image = samples[0]["image"]
            if fmt is ExportFormat.ONNX:
                _write_onnx(network, image, spec, tmp, family.dynamic_axes(model))
            else:
                traced = torch.jit.trace(network, (image,), check_trace=False)
                torch.jit.save(traced, tmp, _extra_files={SPEC_KEY: spec.to_json()})
        tol = tolerance or family.tolerance
        checks = _check(
            model, tmp, samples, lambda e, a: compare_results(e, a, tol), threads=threads
        )
        spec = dataclasses.replace(spec, checks=checks)
        if fmt is ExportFormat.ONNX:
            import onnx

            _set_onnx_spec(tmp, spec, onnx)
        else:
            torch.jit.save(traced, tmp, _extra_files={SPEC_KEY: spec.to_json()})
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    logger.info(f"exported {cfg.MODEL.META_ARCHITECTURE} to {final} ({len(checks)} inputs checked)")
    int8 = None
    if quantize is not None:
        tol8 = int8_tolerance or family.int8_tolerance
        int8 = _export_int8(model, family, spec, final, samples, quantize, tol8)
    return ExportResult(final, spec, int8)


def _export_int8(
    model: nn.Module,
    family: Family,
    spec: ExportSpec,
    fp32_path: str,
    samples: list[dict[str, Any]],
    options: QuantizeOptions,
    tolerance: OutcomeTolerance,
) -> ExportResult:
    """Quantize the written fp32 model, check its outcomes, write ``model_int8.onnx``."""
    import onnx

    final = os.path.join(os.path.dirname(fp32_path), INT8_FILE_NAME)
    tmp = f"{os.path.splitext(final)[0]}.tmp{os.getpid()}.onnx"
    try:
        keep_float = quantize_int8(fp32_path, tmp, options, family.int8_float_nodes)
        quantization = {
            "precision": "int8",
            "method": options.method.value,
            "calibration_images": len(options.images),
            "calibration_dataset": options.dataset,
            "float_nodes": keep_float,
        }
        spec = dataclasses.replace(spec, checks=[], quantization=quantization)
        _set_onnx_spec(tmp, spec, onnx)
        checks = _check(
            model,
            tmp,
            samples,
            lambda e, a: compare_outcomes(e, a, tolerance),
            f"the INT8 model's outcomes differ from PyTorch's; {INT8_FILE_NAME} not written "
            f"({fp32_path} was)",
        )
        spec = dataclasses.replace(spec, checks=checks)
        _set_onnx_spec(tmp, spec, onnx)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    logger.info(f"quantized {fp32_path} to {final} ({len(checks)} inputs checked by outcome)")
    return ExportResult(final, spec)
