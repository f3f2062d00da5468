"""What an exported model carries besides its graph: the ``ExportSpec``.

The spec travels inside the model file (ONNX ``metadata_props`` / TorchScript extra file) as JSON,
so a runtime needs nothing but that one file: the meta-architecture (which post-processing to
apply, with which settings), the test-time preprocessing (colour order, resize), the output names
and the class-metadata name. Reading it is strict: a wrong type, a missing or unknown key is
refused with the file and the key named; nothing in it is executed.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ExportFormat",
    "ExportSpec",
    "SPEC_KEY",
    "SPEC_VERSION",
    "settings_from_dict",
    "settings_to_dict",
]

# Metadata key (ONNX) / extra-file name (TorchScript) holding the JSON spec.
SPEC_KEY = "panoptic_ext.export_spec"
# Bumped when a field changes meaning; a runtime refuses specs of another version.
SPEC_VERSION = 1


class ExportFormat(str, enum.Enum):
    """Serialisation of the exported network."""

    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"

    @property
    def file_name(self) -> str:
        return "model.onnx" if self is ExportFormat.ONNX else "model.ts"


@dataclass(frozen=True)
class ExportSpec:
    """Everything the runtime predictor needs to turn network outputs into detectron2 results.

    Attributes:
        meta_architecture: ``MODEL.META_ARCHITECTURE`` of the exported model; selects the
            family's post-processing (see :mod:`panoptic_ext.export.families`).
        input_format: colour order of the network input, "BGR" or "RGB" (``INPUT.FORMAT``).
        min_size_test / max_size_test: detectron2's test-time ``ResizeShortestEdge``.
        output_names: names of the graph outputs, in order.
        settings: the family's post-processing settings (a dataclass of that family, as a dict).
        dataset: name of the dataset whose metadata names the classes (may be "").
        format: ``ExportFormat`` value of the file the spec is stored in.
        versions: library versions the model was exported with (informative).
        checks: figures of the exported-vs-eager check run before the file was written.
        quantization: empty for a float model; for an INT8 one, how it was derived from the
            fp32 export ("precision", "method", "calibration_images", "calibration_dataset",
            "float_nodes").
    """

    meta_architecture: str
    input_format: str
    min_size_test: int
    max_size_test: int
    output_names: tuple[str, ...]
    settings: dict[str, Any]
    dataset: str = ""
    format: str = ExportFormat.ONNX.value
    versions: dict[str, str] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    quantization: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["output_names"] = list(self.output_names)
        return json.dumps({"spec_version": SPEC_VERSION, **data}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> ExportSpec:
        """Parse and check a spec; ``source`` (the model file) is named in every error."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: export spec is not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise ValueError(f"{source}: export spec must be a JSON object")
        version = data.pop("spec_version", None)
        if version != SPEC_VERSION:
            raise ValueError(
                f"{source}: export spec version {version!r}, this panoptic_ext reads "
                f"{SPEC_VERSION}; re-export the model"
            )
        values = _checked_fields(cls, data, source, "export spec")
        if values["input_format"] not in ("BGR", "RGB"):
            raise ValueError(
                f"{source}: export spec input_format must be 'BGR' or 'RGB', "
                f"got {values['input_format']!r}"
            )
        return cls(**values)


# A field's annotation as written -> (JSON types it accepts, element type of a tuple field).
_JSON_TYPES: dict[str, tuple[tuple[type, ...], type | None]] = {
    "str": ((str,), None),
    "int": ((int,), None),
    "float": ((int, float), None),
    "bool": ((bool,), None),
    "float | None": ((int, float, type(None)), None),
    "int | None": ((int, type(None)), None),
    "dict[str, Any]": ((dict,), None),
    "dict[str, str]": ((dict,), None),
    "list[dict[str, Any]]": ((list,), None),
    "tuple[str, ...]": ((list,), str),
    "tuple[int, ...]": ((list,), int),
}


def _is_a(value: Any, types: tuple[type, ...]) -> bool:
    # bool is an int in Python: refuse true/false where a number is expected.
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _type_name(annotation: Any) -> str:
    """A field's annotation as written (string annotations, classes and generic aliases)."""
    if isinstance(annotation, str):
        return annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _checked_fields(cls: type, data: dict[str, Any], source: str, what: str) -> dict[str, Any]:
    """``data`` restricted to the dataclass fields of ``cls``, with JSON types checked."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown {what} key(s) {unknown}")
    missing = [
        name
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"{source}: {what} lacks key(s) {missing}")
    values = dict(data)
    for name, value in data.items():
        kind = _type_name(fields[name].type)
        allowed, element = _JSON_TYPES[kind]
        ok = _is_a(value, allowed) and (element is None or all(_is_a(v, (element,)) for v in value))
        if not ok:
            raise ValueError(f"{source}: {what} key {name!r} must be {kind}, got {value!r}")
        if element is not None:
            values[name] = tuple(value)
    return values


def settings_from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    """Build a family's settings dataclass ``cls`` from its JSON dict, checking every key."""
    return cls(**_checked_fields(cls, data, source, f"{cls.__name__} setting"))


def settings_to_dict(settings: Any) -> dict[str, Any]:
    """A family's settings dataclass as the spec stores it (JSON values: tuples become lists),
    so a spec in memory equals the one read back from the file."""
    return json.loads(json.dumps(dataclasses.asdict(settings)))
