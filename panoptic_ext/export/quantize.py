"""INT8 static quantization of an exported ONNX model (``panoptic-ext-export --quantize int8``).

ONNX Runtime's ``quantize_static``: QDQ format (QuantizeLinear / DequantizeLinear pairs around
each quantized op, which ONNX Runtime fuses into integer kernels), uint8 activations with a
zero point and int8 weights ("U8S8"), one weight scale per output channel of each conv /
linear layer (which keeps layers with uneven filter magnitudes, e.g. after FrozenBN folding,
accurate). Activation ranges are calibrated by running the fp32 model on images mapped by the
config's *test* mapper, i.e. exactly the inputs the exported graph receives at inference.

The fp32 graph is first pre-processed as ONNX Runtime recommends (``quant_pre_process``: its
graph optimizations fold detectron2's FrozenBN Mul / Add into the convolution weights, so each
conv gets one per-channel scale for its folded weights; ONNX shape inference; the symbolic one
is skipped, it does not follow the R-CNN graph's data-dependent shapes).

Only ``Conv``, ``ConvTranspose``, ``Gemm`` and ``MatMul`` are quantized (the ops holding nearly
all of the MACs); everything else (resize, RoIAlign, NMS, softmax / sigmoid, DeformConv) stays
float. Each family names, in ``Family.int8_float_nodes``, the output layers that stay float too.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from .runtime import INPUT_NAME

__all__ = ["CalibrationMethod", "QuantizeOptions", "float_nodes", "quantize_int8"]

logger = logging.getLogger(__name__)

# The op types quantized: the convolutions and fully-connected layers.
QUANTIZED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class CalibrationMethod(str, enum.Enum):
    """How activation ranges are chosen from the calibration activations.

    ``minmax`` (default): the observed min / max (ONNX Runtime adds ReduceMin / ReduceMax
    nodes, so calibration keeps two numbers per tensor and image); ``entropy`` (KL
    divergence) and ``percentile`` (99.999 %) clip outliers, but hold the activations of the
    quantized layers of every calibration image in memory until the histograms are built. On
    the tiny test Semantic FPN (8 calibration images) the three gave sem_seg argmax agreements
    with eager within 0.1 % of each other, so the cheap one is the default.
    """

    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


@dataclass(frozen=True)
class QuantizeOptions:
    """What ``export_model`` needs to derive the INT8 model from the fp32 one.

    Attributes:
        images: calibration inputs, (3, H, W) uint8 tensors as the test mapper gives them.
        method: calibration method.
        dataset: name of the dataset the images come from (recorded in the spec).
    """

    images: Sequence[torch.Tensor]
    method: CalibrationMethod = CalibrationMethod.MINMAX
    dataset: str = ""


def float_nodes(model_path: str, patterns: Iterable[str]) -> list[str]:
    """Names of the quantizable nodes of ``model_path`` matched by any regex of ``patterns``."""
    import onnx

    regexes = [re.compile(p) for p in patterns]
    graph = onnx.load(model_path, load_external_data=False).graph
    return [
        n.name
        for n in graph.node
        if n.op_type in QUANTIZED_OP_TYPES and any(r.search(n.name) for r in regexes)
    ]


def quantize_int8(
    fp32_path: str, int8_path: str, options: QuantizeOptions, float_patterns: Iterable[str]
) -> list[str]:
    """Write the INT8 (QDQ) model of ``fp32_path`` to ``int8_path``.

    Args:
        float_patterns: regexes of the node names left in float (see :func:`float_nodes`).

    Returns:
        the names of the conv / linear nodes left in float.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not options.images:
        raise ValueError("INT8 quantization needs at least one calibration image")
    method = {
        CalibrationMethod.MINMAX: OrtMethod.MinMax,
        CalibrationMethod.ENTROPY: OrtMethod.Entropy,
        CalibrationMethod.PERCENTILE: OrtMethod.Percentile,
    }[CalibrationMethod(options.method)]

    class Reader(CalibrationDataReader):
        """The calibration images, one input dict each, in order."""

        def __init__(self) -> None:
            self.images = iter(options.images)

        def get_next(self) -> dict | None:
            image = next(self.images, None)
            return None if image is None else {INPUT_NAME: image.cpu().numpy()}

    with tempfile.TemporaryDirectory() as work:
        prepared = os.path.join(work, "prepared.onnx")
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        keep_float = float_nodes(prepared, float_patterns)  # names after the optimizations
        # ONNX Runtime writes its augmented calibration model to a temporary folder of its own.
        quantize_static(
            prepared,
            int8_path,
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            per_channel=True,
            # U8S8, not ONNX Runtime's default S8S8: on this x86 CPU (AVX512-VNNI) ORT 1.32
            # fuses every U8S8 DQ-Conv-Q into QLinearConv, but left 35 of Semantic FPN's 69
            # S8S8 convs as float Conv between DequantizeLinear / QuantizeLinear, which made
            # the INT8 model slower than fp32 (R-50, 256x384, 2 threads: S8S8 1.26 s, U8S8
            # 0.60 s, fp32 1.16 s, same load).
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float,
            calibrate_method=method,
        )
    logger.info(
        f"quantized {fp32_path} to INT8 ({len(options.images)} calibration images, "
        f"{options.method.value}; {len(keep_float)} nodes kept float)"
    )
    return keep_float
