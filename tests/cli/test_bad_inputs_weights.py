"""The bad-input matrix, continued: configs whose YAML or dataset entries cannot be meant as
written, and weights that cannot be right, through the user-facing commands
(``panoptic-ext-train``, ``panoptic-ext-demo``, ``panoptic-ext-export``).

Units live next to their modules' tests (tests/utils/test_yaml_config.py,
tests/data/test_json_file.py, tests/checkpoint/test_weight_checks.py, ...).
"""

import json

import pytest
from bad_input_matrix import CFG, train_tiny
from detectron2.data import MetadataCatalog
from helpers import register_tiny

from panoptic_ext.data.json_file import JsonFileError
from panoptic_ext.utils.yaml_config import ConfigStructureError


# ------------------------------------------------------------------------------------- configs
def _yaml(tmp_path, text: str) -> str:
    path = str(tmp_path / "my.yaml")
    with open(path, "w") as f:
        f.write(f"_BASE_: {CFG}\n" + text)
    return path


def test_alias_bomb_is_refused_before_anything_runs(tmp_path):
    """Five levels of nine aliases (~500 bytes): detectron2 expands it to 59049 strings through
    OmegaConf (nine levels hang the run)."""
    levels = ['TRAIN: &l0 ["a", "a", "a", "a", "a", "a", "a", "a", "a"]']
    levels += [f"L{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 5)]
    path = _yaml(tmp_path, "DATASETS:\n" + "".join(f"  {line}\n" for line in levels))
    out = tmp_path / "out"
    with pytest.raises(ConfigStructureError, match=rf"{path}, line 4: the YAML alias '\*l0'"):
        train_tiny(str(out), options=("--config-file", path))
    assert not out.exists()


def test_key_written_twice_is_refused_naming_the_line(tmp_path):
    path = _yaml(tmp_path, "SOLVER:\n  MAX_ITER: 1\nSEED: 3\nSOLVER:\n  BASE_LR: 0.5\n")
    out = tmp_path / "out"
    with pytest.raises(ConfigStructureError, match=rf"{path}, line 5: the key 'SOLVER' is "
                       r"written twice in one mapping \(first on line 2\)"):  # fmt: skip
        train_tiny(str(out), options=("--config-file", path))
    assert not out.exists()


def _synthetic_files(tmp_path, mutate=None) -> tuple[str, str, str]:
    """(image_root, panoptic_root, json) of the tiny synthetic train set; the JSON a copy
    changed by ``mutate`` when given."""
    register_tiny()
    meta = MetadataCatalog.get("synthetic_panoptic_train")
    if mutate is None:
        return meta.image_root, meta.panoptic_root, meta.panoptic_json
    data = json.load(open(meta.panoptic_json))
    mutate(data)
    path = str(tmp_path / "changed.json")
    json.dump(data, open(path, "w"))
    return meta.image_root, meta.panoptic_root, path


def test_dataset_name_registered_twice_with_other_files_is_refused(tmp_path):
    image_root, png_root, path = _synthetic_files(tmp_path)
    other = str(tmp_path / "other.json")
    open(other, "w").write(open(path).read())  # a real file: without the check it would be used
    entries = f"[('mine', '{image_root}', '{png_root}', '{path}'), " \
              f"('mine', '{image_root}', '{png_root}', '{other}')]"  # fmt: skip
    out = tmp_path / "out"
    message = rf"REGISTER_PANOPTIC registers the dataset 'mine' twice with different files: " \
              rf".*{path}.* and .*{other}"  # fmt: skip
    with pytest.raises(ValueError, match=message):
        train_tiny(str(out), "DATASETS.REGISTER_PANOPTIC", entries, "DATASETS.TRAIN", "('mine',)")
    assert not out.exists()


@pytest.mark.parametrize(
    "content, why",
    [(b"", r"the file is empty \(0 bytes\)"), (b'{"images": [', r"not valid JSON at line 1")],
    ids=["empty", "truncated"],
)
def test_empty_or_broken_dataset_json_is_named(tmp_path, content, why):
    image_root, png_root, _ = _synthetic_files(tmp_path)
    path = str(tmp_path / "broken.json")
    open(path, "wb").write(content)
    entry = f"[('broken', '{image_root}', '{png_root}', '{path}')]"
    with pytest.raises(JsonFileError, match=rf"cannot read panoptic json {path}: {why}"):
        train_tiny(str(tmp_path / "out"), "DATASETS.REGISTER_PANOPTIC", entry,
                   "DATASETS.TRAIN", "('broken',)")  # fmt: skip


def _stuff_only(data):
    for category in data["categories"]:
        category["isthing"] = 0


def test_stuff_only_dataset_with_no_thing_class_names_the_key(tmp_path):
    image_root, png_root, path = _synthetic_files(tmp_path, _stuff_only)
    stuff = len(json.load(open(path))["categories"])
    entry = f"[('stuff_only', '{image_root}', '{png_root}', '{path}')]"
    with pytest.raises(
        ValueError,
        match=r"MODEL.ROI_HEADS.NUM_CLASSES = 0: PanopticFPN detects "
        r"thing instances and needs at least one thing class.*SemanticSegmentor",
    ):
        train_tiny(str(tmp_path / "out"), "DATASETS.REGISTER_PANOPTIC", entry,
                   "DATASETS.TRAIN", "('stuff_only',)", "MODEL.ROI_HEADS.NUM_CLASSES", "0",
                   "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(stuff + 1))  # fmt: skip
