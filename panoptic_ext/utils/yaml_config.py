"""Read yaml config files (and their ``_BASE_`` chains) without ever executing code from them.

fvcore's ``CfgNode.load_yaml_with_base`` falls back to ``yaml.unsafe_load`` when a file holds a
Python tag, and detectron2's ``merge_from_file`` enables that fallback by default: a config such
as ``SEED: !!python/object/apply:os.system [...]`` then runs its payload (detectron2's own
``Base-RetinaNet.yaml`` computes anchor sizes with ``!!python/object/apply:eval``). A downloaded
config is as dangerous as a downloaded pickle, so every config panoptic_ext reads goes through
:func:`merge_config_file`:

1. the whole chain is first read with ``yaml.safe_load`` (plain YAML: mappings, lists, strings,
   numbers, booleans, null) and checked, so that each problem names the file it is in: a tag is
   refused with :class:`UnsafeConfigError` (file, line and tag), and an empty file, a file that is
   not a mapping, a malformed ``_BASE_``, a missing base file or a cycle get a ``ValueError`` /
   ``FileNotFoundError`` naming the file; so do two structural traps of YAML, refused with
   :class:`ConfigStructureError` naming the file and line: aliases (``*name``, also in a merge
   key ``<<: *name``) that expand the file by more than :data:`MAX_ALIAS_EXPANSION` nodes,
   because detectron2 hands the loaded dict to OmegaConf, which copies every alias out: a few
   hundred bytes of nested aliases ("billion laughs") expand to gigabytes and hang the run
   (the few small aliases PyYAML writes itself, e.g. in the ``config.yaml`` that detectron2's
   ``default_setup`` dumps, where two defaults share one tuple, are accepted); and a key
   written twice in one mapping, which YAML silently resolves to the last value (a second
   ``SOLVER:`` block drops the first one's keys);
2. then detectron2 merges it (its ``_BASE_`` semantics and version upgrades) with
   ``allow_unsafe=False``, so fvcore cannot reach ``yaml.unsafe_load`` even for a file that changed
   in between.
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml
from detectron2.utils.file_io import PathManager
from fvcore.common.config import BASE_KEY
from fvcore.common.config import CfgNode as FvcoreCfgNode

__all__ = [
    "ConfigStructureError",
    "UnsafeConfigError",
    "load_plain_yaml",
    "merge_config_file",
    "read_config_chain",
]

_TAG_PROBLEM = re.compile(r"constructor for the tag '([^']*)'")
_YAML_TAG_PREFIX = "tag:yaml.org,2002:"


class UnsafeConfigError(ValueError):
    """A config file holds a YAML tag: plain YAML only, since tags can construct any object."""

    def __init__(self, filename: str, tag: str, line: int | None = None):
        self.filename, self.tag, self.line = filename, tag, line
        where = f"{filename}, line {line}" if line is not None else filename
        super().__init__(
            f"Refusing config {where}: it holds the YAML tag '{tag}'. Config files are read "
            "as plain YAML (yaml.safe_load) because tags such as !!python/object/apply can run "
            "code; write the value out as a plain number, string or list instead."
        )

    def __reduce__(self):  # picklable across processes
        return type(self), (self.filename, self.tag, self.line)


class ConfigStructureError(ValueError):
    """A config file uses a YAML alias or writes one key twice in a mapping."""

    def __init__(self, filename: str, line: int, problem: str):
        self.filename, self.line, self.problem = filename, line, problem
        super().__init__(f"Refusing config {filename}, line {line}: {problem}")

    def __reduce__(self):  # picklable across processes
        return type(self), (self.filename, self.line, self.problem)


class _StructureProblem(Exception):
    """Raised inside the loader (which does not know the file name); carries line and text."""

    def __init__(self, line: int, problem: str):
        super().__init__(problem)
        self.line, self.problem = line, problem


# Nodes that copying out a file's aliases may add to it. A full detectron2 config has about
# 1,000 nodes, and PyYAML's own dumps alias a few small shared lists; nine aliases nested five
# deep already add 59,049 (and the run hangs at nine levels).
MAX_ALIAS_EXPANSION = 10_000


class _PlainLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses alias bombs and keys repeated within one mapping."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases: list[tuple[str, int, yaml.Node]] = []  # (anchor, line, aliased node)

    def compose_node(self, parent, index):
        if not self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        event = self.peek_event()
        node = super().compose_node(parent, index)
        self._aliases.append((event.anchor, event.start_mark.line + 1, node))
        return node

    def get_single_node(self):
        root = super().get_single_node()
        if root is not None and self._aliases:
            self._check_expansion(root)
        return root

    def _check_expansion(self, root: yaml.Node) -> None:
        """Refuse aliases that copy out into more than ``MAX_ALIAS_EXPANSION`` extra nodes."""
        sizes: dict[int, int] = {}  # id(node) -> node count with every alias copied out
        open_nodes: set[int] = set()

        def size(node: yaml.Node, line: int) -> int:
            key = id(node)
            if key in sizes:
                return sizes[key]
            if key in open_nodes:
                raise _StructureProblem(line, "a YAML alias refers to a value that contains it")
            open_nodes.add(key)
            children = node.value if isinstance(node, yaml.SequenceNode) else []
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            total = 1 + sum(size(c, c.start_mark.line + 1) for c in children)
            open_nodes.discard(key)
            sizes[key] = total
            return total

        expanded = size(root, 1)
        written = len(sizes)  # distinct nodes: each aliased value is written once
        if expanded - written > MAX_ALIAS_EXPANSION:
            anchor, line, node = max(self._aliases, key=lambda a: sizes[id(a[2])])
            raise _StructureProblem(
                line,
                f"the YAML alias '*{anchor}' is refused: it copies out {sizes[id(node)]} "
                f"nodes, and the file's aliases grow its {written} nodes to {expanded} when "
                "detectron2 merges the config (OmegaConf copies every alias out; nested aliases "
                "grow a small file into gigabytes); write the values out instead",
            )

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key, line = key_node.value, key_node.start_mark.line + 1
                if key in first_line:
                    raise _StructureProblem(
                        line,
                        f"the key '{key}' is written twice in one mapping (first on line "
                        f"{first_line[key]}); YAML would silently keep only the last one, so "
                        "merge the two into one",
                    )
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_YAML_TAG_PREFIX) :] if tag.startswith(_YAML_TAG_PREFIX) else tag


def load_plain_yaml(filename: str) -> dict[str, Any]:
    """One yaml file, plain YAML only (no tags, aliases or repeated keys: refused naming the
    file and line); the result must be a mapping."""
    try:
        with PathManager.open(filename, "r") as f:  # as detectron2 opens it
            loaded = yaml.load(f, Loader=_PlainLoader)  # noqa: S506 (a SafeLoader)
    except _StructureProblem as e:
        raise ConfigStructureError(filename, e.line, e.problem) from None
    except yaml.constructor.ConstructorError as e:
        found = _TAG_PROBLEM.search(e.problem or "")
        tag = _short_tag(found.group(1)) if found else "<unknown>"
        line = e.problem_mark.line + 1 if e.problem_mark is not None else None
        raise UnsafeConfigError(filename, tag, line) from None
    except yaml.YAMLError as e:
        raise ValueError(f"config {filename} is not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"config {filename} is not a text file: {e}") from None
    if loaded is None:
        raise ValueError(f"config {filename} is empty")
    if not isinstance(loaded, dict):
        raise ValueError(
            f"config {filename} holds a {type(loaded).__name__}, not a mapping of KEY: value"
        )
    return loaded


def _base_path(base: str, child: str) -> str:
    """Where fvcore looks for ``base`` named in ``child`` (relative to ``child``'s folder)."""
    if base.startswith("~"):
        base = os.path.expanduser(base)
    if not base.startswith(("/", "https://", "http://")):
        base = os.path.join(os.path.dirname(child), base)
    return base


def read_config_chain(filename: str, _seen: tuple[str, ...] = ()) -> list[str]:
    """Check ``filename`` and its ``_BASE_`` files with ``yaml.safe_load``; return the chain.

    Returns:
        every file of the chain, bases before the files that name them.
    Raises:
        UnsafeConfigError: a file holds a YAML tag (named with its line and the tag).
        ConfigStructureError: a file holds an alias or a key written twice in one mapping.
        FileNotFoundError: the file or a base is missing (named with the file naming it).
        ValueError: empty / non-mapping / invalid YAML, a ``_BASE_`` that is not a path or a list
            of paths, or a cycle of bases.
    """
    key = os.path.normpath(filename) if "://" not in filename else filename
    if key in _seen:
        cycle = " -> ".join((*_seen, key))
        raise ValueError(f"config {filename}: the _BASE_ chain loops ({cycle})")
    if "://" not in filename and not os.path.isfile(filename):  # URLs: let the opener say
        named_by = f" (the _BASE_ of {_seen[-1]})" if _seen else ""
        raise FileNotFoundError(f"config file {filename} does not exist{named_by}")
    loaded = load_plain_yaml(filename)
    bases = loaded.get(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(
            f"config {filename}: {BASE_KEY} must be a path or a list of paths, got {bases!r}"
        )
    chain: list[str] = []
    for base in bases:
        chain += read_config_chain(_base_path(base, filename), (*_seen, key))
    return [*chain, filename]


def merge_config_file(cfg: FvcoreCfgNode, filename: str) -> None:
    """Merge ``filename`` (with its ``_BASE_`` chain) into ``cfg``, never executing code.

    ``cfg`` may be any fvcore / detectron2 ``CfgNode`` (ours, detectron2's model-zoo configs, the
    official Panoptic FCN's). Errors as :func:`read_config_chain`; an unknown key raises
    detectron2's ``KeyError``.
    """
    read_config_chain(filename)
    cfg.merge_from_file(filename, allow_unsafe=False)
