"""browse_dataset draws the ground truth and each family's targets from the training mapper."""

import copy

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers import TINY_OPTS, config_path, load_cfg, register_tiny
from PIL import Image

from panoptic_ext.cli import browse_dataset as cli
from panoptic_ext.data import PanopticDatasetMapper
from panoptic_ext.vis.browse import DatasetBrowser

NAME = "synthetic_panoptic_train"
PANELS = {
    "panoptic_fpn_synthetic.yaml": ["panoptic", "semantic", "instances"],
    "panet_synthetic.yaml": ["panoptic", "semantic", "instances"],
    "semantic_fpn_synthetic.yaml": ["panoptic", "semantic"],
    "panoptic_fcn_synthetic.yaml": ["panoptic", "instances", "centers", "stuff"],
}


@pytest.fixture(scope="module")
def record():
    register_tiny()
    return next(
        r for r in DatasetCatalog.get(NAME) if sum(s["isthing"] for s in r["segments_info"]) >= 2
    )


@pytest.mark.parametrize("config", sorted(PANELS))
def test_panels_per_family(config, record):
    cfg = load_cfg(f"quick_schedules/{config}", *TINY_OPTS, "INPUT.RANDOM_FLIP", "none")
    panels = DatasetBrowser(cfg, NAME).panels(record)
    assert [p.title.split(" ")[0] for p in panels] == PANELS[config]
    for p in panels:
        assert p.image.shape == (64, 64, 3) and p.image.dtype == np.uint8
    things = sum(s["isthing"] and not s["iscrowd"] for s in record["segments_info"])
    for p in panels:
        if p.title.startswith("instances"):
            assert p.title == f"instances ({things})"
    if "stuff" in PANELS[config]:
        # Where the soft stuff target is 1 (inside a stuff region), the pixel is the class colour.
        meta = MetadataCatalog.get(NAME)
        sem = PanopticDatasetMapper(cfg, is_train=True)(copy.deepcopy(record))["sem_seg"].numpy()
        stuff = panels[-1].image.astype(int)
        for label in range(1, 4):
            inner = sem == label
            for _ in range(3):  # 3 px away from any other label: the stride-2 cells are pure
                inner[1:] &= inner[:-1]
                inner[:-1] &= inner[1:]  # noqa: E702
                inner[:, 1:] &= inner[:, :-1]
                inner[:, :-1] &= inner[:, 1:]  # noqa: E702
            if inner.any():
                assert (np.abs(stuff[inner] - meta.stuff_colors[label]) <= 1).all(), label


def test_contact_sheet_and_folder(tmp_path, capsys):
    argv = ["--config-file", config_path("quick_schedules/panoptic_fcn_synthetic.yaml"),
            "--num-images", "3", "--height", "96"]  # fmt: skip
    opts = list(map(str, TINY_OPTS))
    assert cli.main([*argv, "--contact-sheet", str(tmp_path / "sheet.png"), *opts]) == 0
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    # 3 rows of (22 px title + 96 px panel), 6 px apart; 4 panels of 96 px, 4 px apart.
    assert sheet.shape == (3 * 118 + 2 * 6, 4 * 96 + 3 * 4, 3)
    assert cli.main([*argv, "--output", str(tmp_path / "rows"), *opts]) == 0
    written = capsys.readouterr().out.split()
    assert len(written) == 4 and all(p.endswith(".png") for p in written)  # sheet + 3 rows
    rows = [np.asarray(Image.open(p)) for p in written[1:]]
    assert all(r.shape == (118, 4 * 96 + 3 * 4, 3) for r in rows)
    assert np.array_equal(np.concatenate([rows[0], np.full((6, rows[0].shape[1], 3), 255)])[:118],
                          sheet[:118])  # fmt: skip
    assert cli.main([*argv, "--output", str(tmp_path), "--dataset", "nope", *opts]) == 2
    assert "not registered" in capsys.readouterr().err
