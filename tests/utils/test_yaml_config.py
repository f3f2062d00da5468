"""Configs never execute code: every yaml reader goes through the safe loader (a guard like the
one for checkpoints), a tagged ``_BASE_`` chain is refused by every entry point, and broken
files are named."""

import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import QUICK, REPO, config_path, refusal_pattern, tagged_chain

from panoptic_ext.config import build_cfg
from panoptic_ext.model_zoo import list_configs
from panoptic_ext.utils.yaml_config import (
    ConfigStructureError,
    UnsafeConfigError,
    read_config_chain,
)

ENV = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")


def test_tagged_base_is_refused_in_process_and_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    top, middle = tagged_chain(str(tmp_path), marker)
    with pytest.raises(UnsafeConfigError, match=refusal_pattern(middle)) as err:
        build_cfg(top, [])
    assert (err.value.filename, err.value.tag, err.value.line) == (
        middle,
        "!!python/object/apply:os.system",
        2,
    )
    assert not marker.exists()


def test_detectron2s_own_eval_tag_is_refused():
    """detectron2's Base-RetinaNet.yaml computes anchor sizes with !!python/object/apply:eval."""
    from detectron2 import model_zoo

    retinanet = model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    with pytest.raises(UnsafeConfigError, match=r"Base-RetinaNet\.yaml, line 8.*apply:eval"):
        build_cfg(retinanet, [])


def test_every_shipped_config_is_plain_yaml():
    for name in list_configs():
        chain = read_config_chain(config_path(name))
        assert chain[-1] == config_path(name) and len(chain) == len(set(chain)), name


@pytest.mark.parametrize(
    "content, message",
    [
        ("", r"empty\.yaml is empty"),
        ("- a\n- b\n", r"empty\.yaml holds a list, not a mapping"),
        ("SOLVER: [1, 2\n", r"(?s)empty\.yaml is not valid YAML.*line 1, column 9"),
        ("_BASE_: 3\n", r"empty\.yaml: _BASE_ must be a path or a list of paths, got 3"),
        ("_BASE_: nope.yaml\n", r"nope\.yaml does not exist \(the _BASE_ of .*empty\.yaml\)"),
        ("_BASE_: empty.yaml\n", r"the _BASE_ chain loops \(.*empty\.yaml -> .*empty\.yaml\)"),
        ("A: !custom 1\n", r"empty\.yaml, line 1: it holds the YAML tag '!custom'"),
    ],
)
def test_broken_config_files_are_named(tmp_path, content, message):
    path = tmp_path / "empty.yaml"
    path.write_bytes(content.encode())
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        build_cfg(str(path), [])


def test_overrides_that_are_not_pairs_get_a_hint():
    with pytest.raises(ValueError, match=r"'--resume' comes after the KEY VALUE overrides"):
        build_cfg(QUICK, ["SOLVER.MAX_ITER", "1", "--resume"])
    with pytest.raises(ValueError, match=r"'SOLVER.MAX_ITER' has no value"):
        build_cfg(QUICK, ["SOLVER.BASE_LR", "0.1", "SOLVER.MAX_ITER"])
    assert build_cfg(QUICK, ["SOLVER.BASE_LR", "-0.1"]).SOLVER.BASE_LR == -0.1  # "-x" is a value


def _python_sources() -> list[str]:
    """Every .py file of the repository's code and tests, except the safe yaml module itself."""
    safe = os.path.join(REPO, "panoptic_ext", "utils", "yaml_config.py")
    found = [os.path.join(REPO, n) for n in os.listdir(REPO) if n.endswith(".py")]
    for folder in ("panoptic_ext", "tools", "demo", "tests", "scripts"):
        for dirpath, _, files in os.walk(os.path.join(REPO, folder)):
            found += [os.path.join(dirpath, n) for n in files if n.endswith(".py")]
    return [p for p in found if p != safe]


def test_no_code_path_reads_yaml_unsafely():
    """yaml is read only through panoptic_ext.utils.yaml_config (a guard for new scripts)."""
    unsafe = re.compile(
        r"(?<![`'\"])(\.merge_from_file\(|load_yaml_with_base\(|allow_unsafe\s*=\s*True"
        r"|\byaml\.(load|load_all|unsafe_load|unsafe_load_all|full_load|full_load_all)\(|"
        r"\bLoader\s*=)"
    )
    me = os.path.abspath(__file__)
    offenders = [
        f"{os.path.relpath(path, REPO)}:{i}: {line.strip()}"
        for path in _python_sources()
        if os.path.abspath(path) != me
        for i, line in enumerate(open(path, encoding="utf-8"), 1)
        if unsafe.search(line)
    ]
    assert not offenders, "use panoptic_ext.utils.yaml_config.merge_config_file:\n" + "\n".join(
        offenders
    )


def _entry_points(tmp: str, top: str) -> dict[str, list[str]]:
    """Every script that reads a config, with arguments that get it as far as reading ``top``."""
    tiny = os.path.join(tmp, "tiny.pth")
    torch.save({"model": {}}, tiny)
    image = os.path.join(tmp, "image.png")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    json_file = os.path.join(tmp, "empty.json")
    with open(json_file, "w") as f:
        f.write('{"images": [], "annotations": [], "categories": []}')
    return {
        "train_net.py": ["train_net.py", "--config-file", top, "OUTPUT_DIR", tmp + "/out"],
        "demo/demo.py": ["demo/demo.py", "--config-file", top, "--input", image],
        "tools/validate_dataset.py": ["tools/validate_dataset.py", "--json", json_file,
                                      "--panoptic-root", tmp, "--config-file", top],
        "tools/d2_checkpoint_report.py": ["tools/d2_checkpoint_report.py", "--config-file", top],
        "tools/convert_panoptic_fcn_official.py": [
            "tools/convert_panoptic_fcn_official.py", "--config-file", top, tiny, tmp + "/o.pth"],
        "dev/benchmark.py": ["-m", "dev.benchmark", "--config-file", top, "--device", "cpu"],
    }  # fmt: skip


def test_every_entry_point_refuses_a_tagged_base_chain(tmp_path):
    """Each script exits non-zero naming the tagged file and the tag; the payload never runs."""
    marker = tmp_path / "PWNED"
    top, middle = tagged_chain(str(tmp_path), marker)
    procs = {
        name: subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, args in _entry_points(str(tmp_path), top).items()
    }
    for name, proc in procs.items():
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode != 0, f"{name} exited 0:\n{out[-2000:]}"
        assert refusal_pattern(middle).search(out), f"{name}:\n{out[-2000:]}"
    assert not marker.exists()


# -------------------------------------------------------------- aliases and repeated keys
def _write(folder, name: str, text: str) -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_alias_bomb_is_refused_at_once_naming_file_and_line(tmp_path):
    """Nine levels of nine aliases: ~800 bytes that OmegaConf would expand to 9**9 strings."""
    levels = ['TRAIN: &l0 ["a", "a", "a", "a", "a", "a", "a", "a", "a"]']
    levels += [f"L{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    text = f"_BASE_: {QUICK}\nDATASETS:\n" + "".join(f"  {line}\n" for line in levels)
    bomb = _write(tmp_path, "bomb.yaml", text)
    # *l7 (line 11) copies out 1 + 9 * (1 + ...) nodes: the largest of the file's aliases.
    message = f"{bomb}, line 11: the YAML alias '*l7' is refused: it copies out 48427561 nodes"
    with pytest.raises(ConfigStructureError, match=re.escape(message)) as err:
        build_cfg(bomb, [])
    assert (err.value.filename, err.value.line) == (bomb, 11)


def test_merge_key_alias_bomb_in_a_base_is_named_with_the_base(tmp_path):
    keys = [f"K{j}" for j in range(9)]
    levels = ["M0: &m0 {" + ", ".join(f"{k}: 1" for k in keys) + "}"]
    levels += [f"M{i}: &m{i} {{" + ", ".join(f"{k}: *m{i - 1}" for k in keys) + "}"
               for i in range(1, 6)]  # fmt: skip
    text = f"_BASE_: {QUICK}\nX:\n" + "".join(f"  {line}\n" for line in levels)
    base = _write(tmp_path, "base.yaml", text + "SOLVER:\n  <<: *m5\n")
    top = _write(tmp_path, "top.yaml", "_BASE_: base.yaml\n")
    message = f"{base}, line 10: the YAML alias '*m5' is refused"
    with pytest.raises(ConfigStructureError, match=re.escape(message)):
        read_config_chain(top)


def test_recursive_alias_is_refused(tmp_path):
    path = _write(tmp_path, "loop.yaml", f"_BASE_: {QUICK}\nX: &x [1, *x]\n")
    with pytest.raises(ConfigStructureError, match="line 2: a YAML alias refers to a value that"):
        read_config_chain(path)


def test_config_dumped_by_detectron2_reads_back_the_same(tmp_path):
    """detectron2's ``default_setup`` dumps the run's config with PyYAML, which writes aliases
    for the default tuples that two keys share (``BBOX_REG_WEIGHTS``): such a file, e.g. a
    training's ``OUTPUT_DIR/config.yaml``, is a config users pass back with --config-file."""
    cfg = build_cfg(QUICK, ["SOLVER.MAX_ITER", 7])
    dumped = _write(tmp_path, "config.yaml", cfg.dump())
    with open(dumped) as f:
        assert "*id001" in f.read()  # the aliases this test is about
    # the same values (the re-dumped file no longer shares, so it has no aliases left)
    assert yaml.safe_load(build_cfg(dumped, []).dump()) == yaml.safe_load(cfg.dump())


@pytest.mark.parametrize(
    "text, line, key, first",
    [
        ("SOLVER:\n  MAX_ITER: 5\nSEED: 1\nSOLVER:\n  BASE_LR: 0.1\n", 4, "SOLVER", 1),
        ("SOLVER:\n  MAX_ITER: 5\n  BASE_LR: 0.1\n  MAX_ITER: 7\n", 4, "MAX_ITER", 2),
    ],
    ids=["top_level", "nested"],
)
def test_key_written_twice_is_refused_naming_both_lines(tmp_path, text, line, key, first):
    path = _write(tmp_path, "dup.yaml", f"_BASE_: {QUICK}\n" + text)
    message = f"{path}, line {line + 1}: the key '{key}' is written twice in one mapping " \
              f"(first on line {first + 1})"  # fmt: skip
    with pytest.raises(ConfigStructureError, match=re.escape(message)):
        build_cfg(path, [])


def test_same_key_in_different_mappings_and_anchors_without_alias_are_fine(tmp_path):
    path = _write(tmp_path, "ok.yaml", f"_BASE_: {QUICK}\nSOLVER:\n  MAX_ITER: 3\n"
                  "TEST:\n  EVAL_PERIOD: 3\nSEED: &s 5\n")  # fmt: skip
    cfg = build_cfg(path, [])
    assert (cfg.SOLVER.MAX_ITER, cfg.TEST.EVAL_PERIOD, cfg.SEED) == (3, 3, 5)
