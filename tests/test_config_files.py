"""The shipped yaml files: each names its family / dataset bases in ``_BASE_`` and repeats none
of the keys those bases already set to the same value (one place per setting)."""

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "panoptic_ext" / "configs"
FILES = sorted(CONFIGS.rglob("*.yaml"))


def _load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _merge(a: dict, b: dict) -> dict:
    """``b`` merged over ``a`` (as fvcore merges a config over its bases), as a new dict."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolved(path: Path) -> dict:
    """The file with its ``_BASE_`` chain, as raw yaml values (bases merged in order)."""
    own = _load(path)
    bases = own.pop("_BASE_", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _merge(merged, _resolved(path.parent / base))
    return _merge(merged, own)


def _repeats(own: dict, inherited: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in own.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(inherited.get(key), dict):
            found += _repeats(value, inherited[key], f"{name}.")
        elif key in inherited and inherited[key] == value:
            found.append(name)
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_sets_no_key_its_bases_already_set(path):
    own = _load(path)
    bases = own.pop("_BASE_", [])
    inherited: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        inherited = _merge(inherited, _resolved(path.parent / base))
    assert not _repeats(own, inherited), f"{path.name} repeats its bases' values"
