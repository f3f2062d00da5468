"""The wheel holds what an installed user needs: configs as package data, the CLI modules and
their console scripts; nothing of tests/, tools/ or the lab (dev/)."""

import os
import subprocess
import sys
import zipfile

from helpers import REPO

from panoptic_ext import model_zoo


def test_wheel_has_configs_and_entry_points(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), REPO],
        check=True,
        cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    shipped = {n.removeprefix("panoptic_ext/configs/") for n in names if "/configs/" in n}
    assert shipped == set(model_zoo.list_configs())
    assert "panoptic_ext/cli/train.py" in names and "panoptic_ext/model_zoo.py" in names
    assert not [n for n in names if n.startswith(("tests/", "tools/", "dev/", "demo/"))]
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(tmp_path / wheel).read(entry_points).decode()
    scripts = ("train", "demo", "validate-dataset", "export")
    for script in (f"panoptic-ext-{name}" for name in scripts):
        assert f"{script} = panoptic_ext.cli." in text
