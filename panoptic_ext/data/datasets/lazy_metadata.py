"""Dataset metadata whose JSON-derived fields are computed on first access, not at registration.

Registering a builtin dataset must not read its annotation file: a COCO-train-sized panoptic JSON
costs seconds and hundreds of MB in every process that merely imports the package. A
:class:`LazyMetadata` is a detectron2 ``Metadata`` that holds the cheap fields (paths, evaluator
type) at once and calls a ``derive()`` function the first time one of the derived keys is read
(``thing_classes``, id maps, ...), through attribute access, ``get`` or ``as_dict``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata

__all__ = ["LazyMetadata", "set_lazy_metadata"]

_LOCK = threading.Lock()


class LazyMetadata(Metadata):
    """``Metadata`` with keys filled by ``derive()`` on first use.

    Args:
        name: the dataset name.
        derive: returns ``{key: value}`` for (a subset of) ``keys``; a key it leaves out stays
            absent (``get(key)`` then returns the default). If it raises, nothing is cached and
            the next access calls it again.
        keys: the keys ``derive`` may fill.
        fields: metadata known without reading anything.
    """

    def __init__(
        self, name: str, derive: Callable[[], dict[str, Any]], keys: Iterable[str], **fields: Any
    ):
        keys = frozenset(keys)
        if keys & set(fields):
            raise ValueError(f"{name}: {sorted(keys & set(fields))} are both given and derived")
        super().__init__(name=name)
        # Stored in __dict__ directly: Metadata.__setattr__ would treat them as metadata.
        vars(self)["_derive"] = derive
        vars(self)["_lazy_keys"] = keys
        self.set(**fields)

    @property
    def is_loaded(self) -> bool:
        """Whether ``derive`` has run."""
        return "_derive" not in vars(self)

    def _materialize(self) -> None:
        with _LOCK:
            derive = vars(self).get("_derive")
            if derive is None:
                return
            values = derive()
            unexpected = set(values) - vars(self)["_lazy_keys"]
            if unexpected:
                raise KeyError(f"{self.name}: derived metadata has unexpected keys {unexpected}")
            del vars(self)["_derive"], vars(self)["_lazy_keys"]
            self.set(**values)

    def __getattr__(self, key: str) -> Any:
        # Only called when normal lookup fails, i.e. for absent keys.
        if key in vars(self).get("_lazy_keys", ()):
            self._materialize()
            return getattr(self, key)
        return super().__getattr__(key)

    def as_dict(self) -> dict[str, Any]:
        self._materialize()
        return super().as_dict()


def set_lazy_metadata(
    name: str, derive: Callable[[], dict[str, Any]], keys: Iterable[str], **fields: Any
) -> LazyMetadata:
    """Put a :class:`LazyMetadata` for ``name`` into ``MetadataCatalog`` (replacing any entry)."""
    meta = LazyMetadata(name, derive, keys, **fields)
    MetadataCatalog[name] = meta
    return meta
