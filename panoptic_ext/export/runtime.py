"""Run an exported model: image in, detectron2 results out (``ExportedPredictor``).

The network runs in ONNX Runtime (``.onnx``: CUDA provider when present, else CPU) or as a
TorchScript module (``.ts``); its outputs go through the family's post-processing, the same
functions the eager model uses. The spec stored in the file gives the preprocessing (colour
order, detectron2's test-time ``ResizeShortestEdge``) and the post-processing settings.

A TorchScript file is a program (loading it runs its code); an ONNX file is data. Only load
TorchScript files you trust as you would trust Python code.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from detectron2.data import transforms as T

from ..data.image_io import read_image
from .base import NetworkOutputs
from .families import family_of
from .spec import SPEC_KEY, ExportFormat, ExportSpec, settings_from_dict

__all__ = [
    "ExportedDemoPredictor",
    "ExportedModel",
    "ExportedPredictor",
    "OnnxRuntimeBackend",
    "TorchScriptBackend",
    "default_providers",
]

INPUT_NAME = "image"


def default_providers() -> list[str]:
    """ONNX Runtime providers to use: CUDA when this onnxruntime build has it, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRuntimeBackend:
    """An ONNX Runtime session over one exported file; ``__call__(image)`` -> named outputs."""

    def __init__(self, path: str, providers: list[str] | None = None, threads: int = 0):
        """
        Args:
            path: the ``.onnx`` file.
            providers: ONNX Runtime execution providers (default: :func:`default_providers`).
            threads: intra-op threads (0 = ONNX Runtime's default, one per physical core).
        """
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(
                "running an ONNX model needs onnxruntime: pip install 'panoptic_ext[export]'"
            ) from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            path, options, providers=providers or default_providers()
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        if SPEC_KEY not in meta:
            raise ValueError(f"{path}: not a panoptic_ext export (no '{SPEC_KEY}' metadata)")
        self.spec = ExportSpec.from_json(meta[SPEC_KEY], path)

    def __call__(self, image: torch.Tensor) -> NetworkOutputs:
        """(3, H, W) uint8 -> {output name: CPU tensor}."""
        names = list(self.spec.output_names)
        values = self.session.run(names, {INPUT_NAME: image.cpu().numpy()})
        return {n: torch.from_numpy(v) for n, v in zip(names, values)}


class TorchScriptBackend:
    """A traced TorchScript module over one exported file; ``__call__(image)`` -> outputs."""

    def __init__(self, path: str, device: str = "cpu"):
        extra = {SPEC_KEY: b""}
        self.device = torch.device(device)
        self.module = torch.jit.load(path, map_location=self.device, _extra_files=extra)
        if not extra[SPEC_KEY]:
            raise ValueError(f"{path}: not a panoptic_ext export (no '{SPEC_KEY}' extra file)")
        text = extra[SPEC_KEY]
        self.spec = ExportSpec.from_json(text.decode() if isinstance(text, bytes) else text, path)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> NetworkOutputs:
        values = self.module(image.to(self.device))
        return dict(zip(self.spec.output_names, values))


def open_backend(
    path: str, providers: list[str] | None = None, device: str = "cpu", threads: int = 0
):
    """The backend for ``path`` by its suffix: ``.onnx`` -> ONNX Runtime, ``.ts`` -> TorchScript."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported model {path} does not exist")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".onnx":
        return OnnxRuntimeBackend(path, providers, threads)
    if suffix in (".ts", ".pt"):
        return TorchScriptBackend(path, device)
    raise ValueError(f"{path}: expected a .onnx (ONNX) or .ts (TorchScript) exported model")


class ExportedPredictor:
    """detectron2-style predictor over an exported model (cf. ``DefaultPredictor``).

    ``predictor(bgr)`` takes an (H, W, 3) uint8 BGR image (as ``cv2.imread`` gives), converts it
    to the model's colour order, resizes it as detectron2's test loader does and returns the
    model's result dict at the original size: "panoptic_seg" (int32 (H, W) ids,
    segments_info), "instances" (``Instances``: pred_boxes, scores, pred_classes, pred_masks
    bool (K, H, W)) and/or "sem_seg" ((C, H, W) float), depending on the model.
    """

    def __init__(
        self,
        path: str,
        providers: list[str] | None = None,
        device: str = "cpu",
        threads: int = 0,
    ):
        """
        Args:
            path: a ``panoptic-ext-export`` output (``.onnx`` or ``.ts``).
            providers: ONNX Runtime execution providers (default: CUDA if present, CPU).
            device: device of a TorchScript model.
            threads: ONNX Runtime intra-op threads (0: its default, one per physical core).
        """
        self.path = path
        self.backend = open_backend(path, providers, device, threads)
        self.spec: ExportSpec = self.backend.spec
        self.family = family_of(self.spec.meta_architecture, f"{path}: meta_architecture")
        self.settings = settings_from_dict(self.family.settings_type, self.spec.settings, path)
        self.resize = T.ResizeShortestEdge(
            self.spec.min_size_test, self.spec.max_size_test, "choice"
        )

    @property
    def format(self) -> ExportFormat:
        return ExportFormat(self.spec.format)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 in the model's colour order -> resized (3, h, w) uint8 tensor."""
        resized = self.resize.get_transform(image).apply_image(image)
        return torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))

    def __call__(self, bgr: np.ndarray) -> dict[str, Any]:
        if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 BGR image, got {bgr.dtype} {bgr.shape}")
        image = bgr[:, :, ::-1] if self.spec.input_format == "RGB" else bgr
        return self.run_tensor(self.preprocess(image), *bgr.shape[:2])

    def run_tensor(self, image: torch.Tensor, height: int, width: int) -> dict[str, Any]:
        """Results for a preprocessed (3, h, w) uint8 image, at output size (height, width).

        The same input as the eager model's ``{"image", "height", "width"}`` dict.
        """
        return self.postprocess(self.backend(image), tuple(image.shape[-2:]), height, width)

    def postprocess(
        self, outputs: NetworkOutputs, image_size: tuple[int, int], height: int, width: int
    ) -> dict[str, Any]:
        """Results from the network's ``outputs`` for an input of ``image_size`` (h, w), at
        output size (height, width): the family's post-processing."""
        return self.family.postprocess(
            outputs, self.settings, tuple(image_size), (int(height), int(width))
        )


class ExportedModel:
    """An exported file as the model detectron2's ``inference_on_dataset`` calls.

    ``model(batched_inputs)`` takes a list of the test loader's dicts, exactly what the eager
    model takes, and returns one detectron2 results dict per input (the precedent is
    detectron2's ``tools/deploy/export_model.py --run-eval``). Each input runs through
    :meth:`ExportedPredictor.run_tensor`, so the preprocessing is the test mapper's, not the
    predictor's own resize.
    """

    def __init__(self, path: str, **options: Any):
        """``path`` and keyword ``options`` (providers, device, threads) as
        :class:`ExportedPredictor`'s."""
        self.predictor = ExportedPredictor(path, **options)
        self.path = path
        self.spec = self.predictor.spec

    def __call__(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """
        Args:
            batched_inputs: dicts with "image": (3, h, w) uint8 tensor in the model's colour
                order at its test size (as ``PanopticDatasetMapper(cfg, is_train=False)``
                gives it) and optionally "height", "width": the output size (default h, w).
                Other keys (file_name, image_id, ...) are ignored.

        Returns:
            one dict per input, at (height, width): "panoptic_seg" (int32 (height, width) ids,
            segments_info), "instances" (``Instances``), "sem_seg" ((C, height, width) float),
            as the model gives them.
        """
        outputs = []
        for inputs in batched_inputs:
            image = inputs["image"]
            h, w = image.shape[-2:]
            height, width = inputs.get("height", h), inputs.get("width", w)
            outputs.append(self.predictor.run_tensor(image, height, width))
        return outputs


class ExportedDemoPredictor:
    """:class:`~panoptic_ext.engine.predictor.DemoPredictor`'s interface over an exported model
    (the demo's ``--onnx``): ``__call__(path)`` and ``on_frame(bgr)`` return (RGB image, outputs).

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
        """Same as ``__call__`` for a decoded (H, W, 3) uint8 BGR frame."""
        return np.ascontiguousarray(bgr[:, :, ::-1]), self.predictor(bgr)
