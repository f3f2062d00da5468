"""Builtin COCO / Cityscapes panoptic names: registered without reading anything, loaded from
files under DETECTRON2_DATASETS on first use, with an error naming the files when absent."""

import importlib
import os
import shutil

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from panoptic_ext.data.datasets.builtin import (
    BUILTIN_PANOPTIC_SPLITS,
    register_builtin_panoptic_datasets,
)
from panoptic_ext.data.datasets.synthetic import SyntheticSpec, generate_split


@pytest.fixture
def unregister():
    """Leave the catalogs as import made them: the test's names point into a temporary folder."""
    yield
    for name in BUILTIN_PANOPTIC_SPLITS:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
    register_builtin_panoptic_datasets()


def test_builtin_names_register_when_files_exist(tmp_path, capsys, unregister):
    src = str(tmp_path / "src")
    generate_split(src, "val", SyntheticSpec(image_size=32, num_images=3, seed=1))
    root = tmp_path / "datasets"
    # Nothing on disk yet: every name is registered; using one names the files it expected.
    assert register_builtin_panoptic_datasets(str(root)) == list(BUILTIN_PANOPTIC_SPLITS)
    expected_json = str(root / "coco/annotations/panoptic_val2017.json")
    for use in (
        lambda: DatasetCatalog.get("coco_2017_val_panoptic_ext"),
        lambda: MetadataCatalog.get("coco_2017_val_panoptic_ext").thing_classes,
    ):
        with pytest.raises(FileNotFoundError, match="coco_2017_val_panoptic_ext") as err:
            use()
        assert expected_json in str(err.value) and "datasets/README.md" in str(err.value)
        assert str(root / "coco/val2017") in str(err.value)

    # COCO layout, with the optional things-as-one PNGs.
    shutil.copytree(f"{src}/val", root / "coco/val2017")
    shutil.copytree(f"{src}/panoptic_val", root / "coco/panoptic_val2017")
    shutil.copytree(f"{src}/panoptic_semseg_val", root / "coco/panoptic_stuff_val2017")
    os.makedirs(root / "coco/annotations")
    shutil.copy(f"{src}/panoptic_val.json", root / "coco/annotations/panoptic_val2017.json")
    # Cityscapes layout: images in per-city folders (the city is the file name's prefix).
    gt = root / "cityscapes/gtFine"
    shutil.copytree(f"{src}/val", root / "cityscapes/leftImg8bit/val/val")
    shutil.copytree(f"{src}/panoptic_val", gt / "cityscapes_panoptic_val")
    shutil.copy(f"{src}/panoptic_val.json", gt / "cityscapes_panoptic_val.json")

    register_builtin_panoptic_datasets(str(root))
    names = ["coco_2017_val_panoptic_ext", "cityscapes_fine_panoptic_val_ext"]
    for name in names:
        assert name not in ("coco_2017_val_panoptic", "cityscapes_fine_panoptic_val")
        records = DatasetCatalog.get(name)
        assert len(records) == 3
        for r in records:
            assert os.path.isfile(r["file_name"]) and os.path.isfile(r["pan_seg_file_name"])
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["disk", "box", "triangle"]
        assert meta.stuff_classes == ["things", "sky", "wall", "ground"]
        assert meta.evaluator_type == "coco_panoptic_seg"
    coco = DatasetCatalog.get("coco_2017_val_panoptic_ext")
    assert all(os.path.isfile(r["sem_seg_file_name"]) for r in coco)
    assert MetadataCatalog.get("cityscapes_fine_panoptic_val_ext").get("sem_seg_root") is None

    # The validator finds Cityscapes images in their city folders through the dataset dicts.
    tool = importlib.import_module("panoptic_ext.cli.validate_dataset")
    assert tool.main(["--dataset", "cityscapes_fine_panoptic_val_ext"]) == 0, (
        capsys.readouterr().out
    )
    os.remove(root / "cityscapes/leftImg8bit/val/val/val_000001.jpg")
    assert tool.main(["--dataset", "cityscapes_fine_panoptic_val_ext"]) == 1
    assert "[missing_image]" in capsys.readouterr().out
