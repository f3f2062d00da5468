"""The reference docs stay true to the code: every console script and every config key our adders
add is documented, every local link and config path resolves, and every command written in the
docs is one that exists, with options its ``--help`` lists (the cheap part of "every command runs
as written"; the expensive part, training and benchmarks, is what the other tests run)."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from detectron2.config import get_cfg

from panoptic_ext.config import add_panoptic_ext_config

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    "README.md",
    "INSTALL.md",
    "GETTING_STARTED.md",
    "MODEL_ZOO.md",
    "DEPLOY.md",
    "RELIABILITY.md",
    "datasets/README.md",
    "dev/README.md",
]
HAS_DEV = (REPO / "dev" / "__init__.py").is_file()


def _docs() -> list[Path]:
    return [REPO / d for d in DOCS if (REPO / d).is_file()]


@cache
def _console_scripts() -> dict[str, str]:
    """``name -> "module:function"`` from pyproject.toml's ``[project.scripts]`` (no tomllib on
    Python 3.10: the table is plain ``name = "module:function"`` lines)."""
    text = (REPO / "pyproject.toml").read_text()
    table = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.]+:\w+)"', table, flags=re.M))


def _flat_keys(node, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in node.items():
        if hasattr(v, "items"):
            keys |= _flat_keys(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


def _added_config_keys() -> set[str]:
    return _flat_keys(add_panoptic_ext_config(get_cfg())) - _flat_keys(get_cfg())


def _backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", text))


def test_install_lists_every_console_script():
    text = (REPO / "INSTALL.md").read_text()
    missing = [name for name in _console_scripts() if f"`{name}`" not in text]
    assert not missing, f"INSTALL.md does not list the console scripts {missing}"


def test_getting_started_lists_every_config_key_our_adders_add():
    """Each added key is in the namespace table, by full name or under a listed ``NODE.*``."""
    text = (REPO / "GETTING_STARTED.md").read_text()
    table = text[text.index("## Configuration") :]
    names = {t for t in _backticked(table) if re.fullmatch(r"[A-Z0-9_.*]+", t)}
    prefixes = tuple(n[:-1] for n in names if n.endswith(".*"))
    missing = sorted(
        k for k in _added_config_keys() if k not in names and not k.startswith(prefixes)
    )
    assert not missing, f"GETTING_STARTED.md's configuration table lacks {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return heading.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)}


def test_local_links_and_anchors_resolve():
    broken = []
    for doc in _docs():
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if "://" in target:
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not HAS_DEV and path.is_relative_to(REPO / "dev"):
                continue  # the lab's folder; checked where it exists
            if not path.exists():
                broken.append(f"{doc.name}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken


def _expand(token: str) -> list[str]:
    """Shell brace expansion (``a_{1x,3x}.yaml`` -> both names)."""
    match = re.search(r"\{([^{}]*)\}", token)
    if not match:
        return [token]
    head, tail = token[: match.start()], token[match.end() :]
    return [x for part in match.group(1).split(",") for x in _expand(head + part + tail)]


def test_config_paths_in_the_docs_exist():
    configs = REPO / "configs"
    subfolders = {p.name for p in configs.iterdir() if p.is_dir()}
    missing = []
    for doc in _docs():
        text = doc.read_text()
        for path in set(re.findall(r"configs/[\w./-]+\.yaml", text)):
            if "..." not in path and not (REPO / path).is_file():
                missing.append(f"{doc.name}: {path}")
        for token in _backticked(text):
            token = token.split("::")[0].split()[0] if token.split() else token
            if token.endswith(".yaml") and token.split("/")[0] in subfolders:
                missing += [
                    f"{doc.name}: {t}" for t in _expand(token) if not (configs / t).is_file()
                ]
    assert not missing, missing


# --- the commands written in the docs ------------------------------------------------------------

_ENV = re.compile(r"^(?:[A-Z_]+=\S*\s+)+")


def _fenced_blocks(text: str) -> Iterator[tuple[str, str]]:
    """``(language, body)`` of every fenced block, fences paired line by line."""
    language, body = None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, body = line[3:].strip(), []
            else:
                yield language, "\n".join(body)
                language = None
        elif language is not None:
            body.append(line)


def _commands(text: str) -> Iterator[str]:
    """Shell commands in shell blocks (continuations joined, comments cut) and inline spans."""
    for language, block in _fenced_blocks(text):
        if language not in ("", "bash", "sh"):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                yield _ENV.sub("", line)
    for span in _backticked(text):
        yield _ENV.sub("", span.strip())


def _tool_of(command: str) -> tuple[str, list[str]] | None:
    """``(tool, arguments)`` for our commands; tool is a console script or ``dev.<name>``."""
    words = command.split()
    if not words:
        return None
    thin = {"train_net.py": "panoptic-ext-train", "demo/demo.py": "panoptic-ext-demo"}
    for name, target in _console_scripts().items():
        module = target.split(":")[0]
        thin[f"tools/{module.rsplit('.', 1)[1]}.py"] = name
    thin["tools/d2_checkpoint_report.py"] = "panoptic-ext-checkpoint-report"
    thin["tools/convert_panoptic_fcn_official.py"] = "panoptic-ext-convert-panoptic-fcn"
    if words[0] in _console_scripts():
        return words[0], words[1:]
    if words[0] != "python" or len(words) < 2:
        return None
    if words[1] == "-m" and len(words) > 2:
        module = words[2]
        if module.startswith("dev.") and re.fullmatch(r"dev\.\w+", module):
            return module, words[3:]
        for name, target in _console_scripts().items():
            if target.split(":")[0] == module:
                return name, words[3:]
        return None
    if words[1] in thin:
        return thin[words[1]], words[2:]
    if words[1].startswith(("tools/", "dev/")):
        return f"missing:{words[1]}", words[2:]
    return None


def _run_help(tool: str, args: list[str]) -> str:
    """The ``--help`` text of a console script, called in process."""
    out = io.StringIO()
    code = None
    with contextlib.redirect_stdout(out):
        try:
            module, function = _console_scripts()[tool].split(":")
            code = getattr(importlib.import_module(module), function)([*args, "--help"])
        except SystemExit as e:  # argparse exits after printing the help
            code = e.code
    assert code in (0, None), f"{tool} {' '.join(args)} --help: exit status {code}"
    return out.getvalue()


@cache
def _dev_sources() -> str:
    """The lab's sources: a lab tool's options are string literals there (running each tool's
    ``--help`` is the lab's own test; reading them keeps this one fast)."""
    return "\n".join(p.read_text() for p in sorted((REPO / "dev").rglob("*.py")))


@cache
def _help(tool: str, subcommand: str = "") -> str:
    return _run_help(tool, [subcommand] if subcommand else [])


def _documented_commands() -> dict[str, list[tuple[str, list[str]]]]:
    found: dict[str, list[tuple[str, list[str]]]] = {}
    for doc in _docs():
        for command in _commands(doc.read_text()):
            parsed = _tool_of(command)
            if parsed:
                found.setdefault(parsed[0], []).append((doc.name, parsed[1]))
    return found


def test_docs_name_only_existing_tools():
    tools = _documented_commands()
    missing = sorted(t for t in tools if t.startswith("missing:"))
    assert not missing, f"the docs run scripts that do not exist: {missing}"
    if HAS_DEV:
        absent = [t for t in tools if t.startswith("dev.") and not _dev_path(t).is_file()]
        assert not absent, f"the docs run lab tools that do not exist: {absent}"


def _dev_path(tool: str) -> Path:
    return REPO / (tool.replace(".", "/") + ".py")


@pytest.mark.parametrize("tool", sorted(_console_scripts()))
def test_every_console_script_answers_help(tool):
    text = _help(tool)
    assert "usage" in text.lower() or tool in text


def _options(args: list[str]) -> list[str]:
    return re.findall(r"(?<![\w-])--[a-z][\w-]*", " ".join(args))


def test_documented_options_exist():
    """Every ``--option`` written after one of our commands is in that command's ``--help``."""
    unknown = []
    for tool, uses in _documented_commands().items():
        if tool.startswith("missing:") or tool == "panoptic-ext-detectron2-tool":
            continue  # the latter passes its options to detectron2's script
        if tool.startswith("dev.") and not (HAS_DEV and _dev_path(tool).is_file()):
            continue
        for doc, args in uses:
            if tool.startswith("dev."):  # options are string literals of the lab's sources
                known = {o for o in _options(args) if f'"{o}"' in _dev_sources()}
            else:
                text = _help(tool)
                first = args[0] if args and not args[0].startswith("-") else ""
                if first and "{" in text and re.search(rf"\b{re.escape(first)}\b", text):
                    text = _help(tool, first)  # a subcommand: its own options
                known = {o for o in _options(args) if o in text}
            unknown += [f"{doc}: {tool} {o}" for o in _options(args) if o not in known]
    assert not unknown, unknown
