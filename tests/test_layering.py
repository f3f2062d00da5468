"""The package's import structure: imports only run down the layers, no module takes part in an
import cycle (package ``__init__`` files included), and every module imports alone."""

import ast
import os
import subprocess
import sys

import pytest
from helpers import REPO

PACKAGE = "panoptic_ext"
ROOT = os.path.join(REPO, PACKAGE)

# Layer of every top-level part of the package: a module may import its own part and parts of a
# lower layer only (so two parts of one layer, e.g. modeling and data, never import each other).
LAYERS = {
    "structures": 0,  # label structures: boxes of masks, panoptic ids, sem-seg formats
    "layers": 0,  # generic tensor ops
    "utils": 1,  # config-adder plumbing, seeding, the meta-architecture table
    "data": 2,
    "modeling": 2,
    "checkpoint": 2,
    "solver": 2,
    "evaluation": 3,  # reads ground truth with data's PNG reader
    "vis": 3,  # draws datasets, training targets (data, modeling), metrics and predictions
    "config": 4,  # add_panoptic_ext_config (every part's adder) and build_cfg
    "model_zoo": 5,
    "engine": 6,
    "export": 7,
    "cli": 8,
    "__init__": 9,  # `import panoptic_ext` registers everything
}


def _modules() -> dict[str, str]:
    """Dotted name -> file of every module of the package."""
    found = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d != "__pycache__" and d != "configs"]
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, f), REPO)[: -len(".py")].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            found[".".join(rel)] = os.path.join(folder, f)
    return found


MODULES = _modules()


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, path: str) -> list[tuple[int, str]]:
    """(line, module) of every package-internal import in ``path``, wherever it stands."""
    is_package = path.endswith("__init__.py")
    base = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from pkg import sub` names the module pkg.sub when there is one, else pkg.
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            names = subs or [target]
        else:
            continue
        found += [(node.lineno, n) for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")]
    return found


def test_every_part_has_a_layer():
    assert {_part(m) for m in MODULES} <= set(LAYERS), "add the new part to LAYERS"


def test_no_import_runs_up_the_layers():
    upward = []
    for module, path in sorted(MODULES.items()):
        own = _part(module)
        for line, target in _imports(module, path):
            other = _part(target)
            if other != own and LAYERS[other] >= LAYERS[own]:
                upward.append(f"{os.path.relpath(path, REPO)}:{line} ({own}) imports {target}")
    assert not upward, "imports that do not run down the layers:\n" + "\n".join(upward)


def _import_graph() -> dict[str, set[str]]:
    """module -> the modules its imports run, including packages whose ``__init__`` they run."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        edges = set()
        for _, target in _imports(module, path):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                name = ".".join(parts[:i])
                if name in MODULES and name not in ancestors and name != module:
                    edges.add(name)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return result


def test_no_import_cycle():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_find_what_they_look_for():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    # Relative imports resolve, `from pkg import module` names the module, and importing a
    # module of another part runs that part's package __init__ first.
    launch = [
        t for _, t in _imports("panoptic_ext.engine.launch", MODULES["panoptic_ext.engine.launch"])
    ]
    assert "panoptic_ext.config" in launch and "panoptic_ext.data.datasets" in launch
    graph = _import_graph()
    assert {"panoptic_ext.data", "panoptic_ext.data.config"} <= graph["panoptic_ext.config"]
    assert "panoptic_ext" not in graph["panoptic_ext.config"]  # an ancestor: already running


_IMPORT_EACH = r"""
import ast, importlib, os, sys, traceback
names = sys.argv[1:]
# Third-party modules the package imports are loaded once here; each child then imports one
# module of the package first, in an interpreter that has never imported the package.
for n in sorted({l.split()[1] for l in sys.stdin.read().split("\n") if l}):
    try:
        importlib.import_module(n)
    except Exception:
        pass
failed = 0
for name in names:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        print(f"FAILED: import {name}", flush=True)
        failed += 1
print(f"{len(names) - failed} of {len(names)} modules import alone")
sys.exit(1 if failed else 0)
"""


def _third_party() -> list[str]:
    names = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module)
    return sorted(n for n in names if n.split(".")[0] != PACKAGE)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to start a fresh import")
def test_every_module_imports_alone_in_a_fresh_interpreter():
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, *sorted(MODULES)],
        input="\n".join(f"import {n}" for n in _third_party()),
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    assert f"{len(MODULES)} of {len(MODULES)} modules import alone" in proc.stdout
