"""The bad-input matrix, end to end through the user-facing entry points:
``panoptic-ext-train`` (= ``train_net.py``), ``panoptic-ext-demo``,
``panoptic-ext-validate-dataset``.

Every case asserts that the message names the file, key or value at fault and that nothing is
lost: earlier checkpoints and run files stay byte-identical, outputs of the good inputs are
written. Units of each check live next to their modules' tests (tests/utils/test_yaml_config.py,
tests/checkpoint/test_damaged_checkpoints.py, tests/data/test_json_checks.py,
tests/data/test_image_io.py, tests/engine/test_output_dir.py).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from bad_input_matrix import CFG, TRAIN, digest, train_tiny
from detectron2.data import MetadataCatalog
from helpers import REPO, TINY_OPTS, config_path, load_cfg, one_thread
from PIL import Image

from panoptic_ext.checkpoint.safe_load import UnreadableCheckpointError
from panoptic_ext.cli import demo, train, validate_dataset
from panoptic_ext.data.datasets import register_panoptic_dataset
from panoptic_ext.data.image_io import UnsupportedImageError
from panoptic_ext.data.json_checks import DatasetJsonError
from panoptic_ext.engine import Trainer
from panoptic_ext.engine.output_dir import OutputDirError
from panoptic_ext.utils.yaml_config import UnsafeConfigError


# ------------------------------------------------------------------------------------- configs
def test_tagged_base_chain_runs_nothing_and_writes_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    (tmp_path / "base.yaml").write_text(
        f"_BASE_: {CFG}\nSEED: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    (tmp_path / "top.yaml").write_text("_BASE_: base.yaml\n")
    out = tmp_path / "out"
    with pytest.raises(UnsafeConfigError, match=r"base\.yaml, line 2.*'!!python/object/apply"):
        train.main(["--config-file", str(tmp_path / "top.yaml"), "OUTPUT_DIR", str(out)])
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize(
    "opts, message",
    [
        (["SOLVER.MAX_ITER", "1", "--eval-only"], r"'--eval-only' comes after the KEY VALUE"),
        (["SOLVER.MAX_ITER"], r"'SOLVER.MAX_ITER' has no value"),
        (["SOLVER.IMS_PER_BATCH", "0"], r"SOLVER.IMS_PER_BATCH = 0: a batch needs at least one"),
        (["SOLVER.CHECKPOINT_PERIOD", "0"], r"SOLVER.CHECKPOINT_PERIOD = 0: need a period > 0"),
        (["SOLVER.BASE_LR", "-0.01"], r"SOLVER.BASE_LR = -0.01: a negative rate"),
        (["INPUT.MIN_SIZE_TRAIN", "()"], r"INPUT.MIN_SIZE_TRAIN = \(\): need one or more sizes"),
        (["MODEL.SEM_SEG_HEAD.NUM_CLASES", "4"], r"command-line override.*NUM_CLASES"),
    ],
    ids=[
        "option_after_overrides",
        "key_without_value",
        "batch_0",
        "checkpoint_period_0",
        "negative_lr",
        "no_train_size",
        "unknown_key",
    ],  # fmt: skip
)
def test_config_values_that_cannot_work(run_copy, opts, message):
    before = digest(run_copy)
    with pytest.raises((ValueError, KeyError), match=message):
        train_tiny(run_copy, *opts, options=("--resume",))
    assert digest(run_copy) == before


def test_stuff_area_limit_larger_than_every_image_is_named(run, tmp_path, caplog):
    """Evaluation still runs; the warning names the key, the value and the largest image."""
    limit = "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT"
    with one_thread():
        train.main(["--config-file", CFG, "--eval-only", *TRAIN, "DATASETS.TEST",
                    "('synthetic_panoptic_val',)", "TEST.EVALUATORS", "('panoptic',)", limit,
                    "5000", "MODEL.WEIGHTS", os.path.join(run, "model_final.pth"),
                    "OUTPUT_DIR", str(tmp_path / "eval")])  # fmt: skip
    log = open(tmp_path / "eval" / "log.txt").read() + caplog.text  # wherever it is logged
    assert f"{limit} = 5000 is larger than every image of synthetic_panoptic_val (the largest " \
           "is 64x64 = 4096 pixels)" in log  # fmt: skip


# ------------------------------------------------------------------------------- dataset JSON
def _dataset_with(tmp_path, mutate) -> tuple[str, str, str]:
    meta = MetadataCatalog.get("synthetic_panoptic_train")
    data = json.load(open(meta.panoptic_json))
    mutate(data)
    path = str(tmp_path / "bad.json")
    json.dump(data, open(path, "w"))
    return meta.image_root, meta.panoptic_root, path


def _duplicate_id(data):
    data["images"][2]["id"] = data["images"][1]["id"]


def _swap(data):
    a, b = data["annotations"][1], data["annotations"][2]
    a["file_name"], b["file_name"] = b["file_name"], a["file_name"]


def _isthing_strings(data):
    for cat in data["categories"]:
        cat["isthing"] = str(cat["isthing"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_duplicate_id, r"\[duplicate_image_id\].*\(id 2\): image id repeated: 'train_000001.jpg"),
        (_swap, r"\[mismatched_png\].*uses train_000002.png, which is named after image 3"),
        (_isthing_strings, r"\[missing_isthing\].*category 'sky': 'isthing' is '0'"),
        (lambda d: d.update(annotations=[]), r"\[empty_dataset\]"),
    ],
    ids=["duplicate_image_id", "swapped_pngs", "isthing_string", "empty"],
)
def test_bad_dataset_json_stops_training_naming_file_entry_value(run, tmp_path, mutate, message):
    image_root, png_root, path = _dataset_with(tmp_path, mutate)
    entry = f"[('reliability_bad', '{image_root}', '{png_root}', '{path}')]"
    out = str(tmp_path / "out")
    with pytest.raises(DatasetJsonError, match=message) as err:
        train_tiny(
            out, "DATASETS.REGISTER_PANOPTIC", entry, "DATASETS.TRAIN", "('reliability_bad',)"
        )
    assert str(err.value).startswith(path)
    # The validator reports the same problem.
    assert validate_dataset.main(["--json", path, "--panoptic-root", png_root, "--no-images"]) == 1


# ------------------------------------------------------------------------------------- images
def test_sixteen_bit_training_image_is_named_with_its_format(records, tmp_path):
    meta = MetadataCatalog.get("synthetic_panoptic_train")
    dicts = [dict(r) for r in records]
    bad = str(tmp_path / "deep.png")
    gray = np.asarray(Image.open(records[3]["file_name"]).convert("L")).astype(np.uint16) * 257
    Image.fromarray(gray).save(bad)
    dicts[3]["file_name"] = bad
    register_panoptic_dataset("reliability_16bit", meta.image_root, meta.panoptic_root,
                              meta.panoptic_json, loader=lambda: dicts)  # fmt: skip
    cfg = load_cfg("quick_schedules/panoptic_fpn_synthetic.yaml", *TINY_OPTS,
                   "DATASETS.TRAIN", ("reliability_16bit",))  # fmt: skip
    loader = iter(Trainer.build_train_loader(cfg))
    with pytest.raises(UnsupportedImageError, match=rf"{bad}: its pixel format I;16 \(16-bit"):
        for _ in range(4):  # 8 images in batches of 2
            next(loader)


# -------------------------------------------------------------------------------- OUTPUT_DIR
def test_second_run_in_a_used_output_dir_is_refused_and_changes_nothing(run_copy):
    before = digest(run_copy)
    with pytest.raises(OutputDirError, match=rf"{run_copy} holds the checkpoints of an earlier "
                       r"run \(last_checkpoint, model_0000000.pth, .*Pass --resume"):  # fmt: skip
        train_tiny(run_copy)
    assert digest(run_copy) == before  # config.yaml and log.txt included
    stale = os.path.join(run_copy, ".model_final.pth.4242.0badf00d.tmp")
    open(stale, "wb").write(b"half a checkpoint")
    assert train_tiny(run_copy, options=("--overwrite-output",)) == 0
    assert not os.path.exists(stale)
    assert open(os.path.join(run_copy, "last_checkpoint")).read() == "model_final.pth"


def test_concurrent_run_is_refused_until_the_first_is_killed(run_copy, tmp_path):
    marker = str(tmp_path / "paused")
    child = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "engine", "resume_child.py"),
         "--config-file", CFG, "--resume", "--pause-after", "2", marker, *TRAIN,
         "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", run_copy],
        env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while not os.path.exists(marker):
            assert child.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.5)
        before = digest(run_copy)
        with pytest.raises(OutputDirError, match=rf"{run_copy} is in use by another run \(pid "
                           rf"{child.pid} on "):  # fmt: skip
            train_tiny(run_copy, options=("--resume",))
        assert digest(run_copy) == before
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The kill released the lock: the run resumes from the checkpoint the first one left.
    assert train_tiny(run_copy, "SOLVER.MAX_ITER", "4", options=("--resume",)) == 0
    assert "Starting training from iteration 3" in open(os.path.join(run_copy, "log.txt")).read()


# ------------------------------------------------------------------------------- checkpoints
def _damage(path: str, kind: str) -> None:
    data = open(path, "rb").read()
    if kind == "directory":
        os.remove(path)
        os.makedirs(path)
        return
    content = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "bitflip": data[: len(data) // 2]
        + bytes(b ^ 0xFF for b in data[len(data) // 2 :][:8])
        + data[len(data) // 2 + 8 :],
        "html": b"<!DOCTYPE html><html><body>Sign in to continue</body></html>",
        "lfs": b"version https://git-lfs.github.com/spec/v1\noid sha256:"
        + b"1" * 64
        + b"\nsize 9\n",
    }[kind]
    open(path, "wb").write(content)


WHY = {
    "truncated": "the archive is truncated or corrupted",
    "empty": "the file is empty",
    "bitflip": "the archive is corrupted: the checksum of its record",
    "directory": "it is a directory",
    "html": "it is an HTML/XML page",
    "lfs": "it is a Git LFS pointer",
}


@pytest.mark.parametrize("kind", sorted(WHY))
def test_damaged_weights_are_unreadable_not_unsafe(run, tmp_path, kind):
    weights = str(tmp_path / "model.pth")
    shutil.copy(os.path.join(run, "model_final.pth"), weights)
    _damage(weights, kind)
    with pytest.raises(
        UnreadableCheckpointError, match=rf"cannot read {weights}: {WHY[kind]}"
    ) as e:
        train_tiny(str(tmp_path / "eval"), "MODEL.WEIGHTS", weights, options=("--eval-only",))
    assert "TRUST_PICKLE" not in str(e.value)


@pytest.mark.parametrize("kind", ["html", "bitflip", "tag"])
def test_resume_falls_back_past_an_unreadable_last_checkpoint(run_copy, kind):
    earlier = {n: d for n, d in digest(run_copy).items() if n.startswith("model_00")}
    if kind == "tag":
        open(os.path.join(run_copy, "last_checkpoint"), "wb").write(b"\x80\x04\x95binary\xff")
        os.remove(os.path.join(run_copy, "model_final.pth"))  # newest left: model_0000001.pth
    else:
        _damage(os.path.join(run_copy, "model_final.pth"), kind)
        os.utime(os.path.join(run_copy, "model_0000000.pth"), (1, 1))  # model_0000001 is newer
    assert train_tiny(run_copy, "SOLVER.MAX_ITER", "3", options=("--resume",)) == 0
    log = open(os.path.join(run_copy, "log.txt")).read()
    assert "Starting training from iteration 2" in log  # model_0000001 = after iteration 1
    assert ("Cannot read the tag" if kind == "tag" else "falling back") in log
    after = digest(run_copy)
    assert all(after[n] == d for n, d in earlier.items())  # earlier checkpoints untouched


# ------------------------------------------------------------------------------------- demo
def _demo(run, inputs, out, *extra) -> int:
    with one_thread():
        return demo.main(["--config-file", CFG, "--input", *inputs, "--output", f"{out}/vis",
                          "--panoptic-out", f"{out}/pan", *extra, *TINY_OPTS_STR,
                          "MODEL.WEIGHTS", os.path.join(run, "model_final.pth")])  # fmt: skip


TINY_OPTS_STR = [str(v) for v in TINY_OPTS]


@pytest.mark.parametrize("bad", ["garbage", "truncated", "16bit", "cmyk"])
def test_demo_skips_a_bad_image_names_it_and_keeps_the_rest(run, images, tmp_path, caplog, bad):
    target = images / "b.jpg"
    data = target.read_bytes()
    if bad in ("garbage", "truncated"):
        target.write_bytes(b"not an image" if bad == "garbage" else data[: len(data) // 3])
    else:
        target.unlink()
        target = images / "b.png" if bad == "16bit" else images / "b.jpg"
        rgb = Image.open(images / "a.jpg")
        (Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257) if bad == "16bit"
         else rgb.convert("CMYK")).save(target)  # fmt: skip
    out = tmp_path / "out"
    assert _demo(run, [str(images)], out) == 1
    assert sorted(os.listdir(out / "vis")) == ["a.png", "c.png"]
    predictions = json.load(open(out / "pan" / "predictions.json"))["annotations"]
    assert [p["file_name"] for p in predictions] == ["a.png", "c.png"]
    assert f"skipping {target}: cannot read image {target}" in caplog.text
    assert f"1 of 3 inputs skipped:\n  {target}" in caplog.text


def test_demo_inputs_sharing_a_stem_or_given_twice(run, images, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(images / "c.jpg", other / "a.jpg")  # another a.jpg
    shutil.copy(images / "c.jpg", other / "a.png")  # and an a.png next to it
    out = tmp_path / "out"
    inputs = [str(images), str(images / "a.jpg"), f"{images}/", str(other)]
    assert _demo(run, inputs, out) == 0
    names = ["b", "c", "in__a_jpg", "other__a_jpg", "other__a_png"]
    assert sorted(os.listdir(out / "vis")) == sorted(n + ".png" for n in names)
    predictions = json.load(open(out / "pan" / "predictions.json"))["annotations"]
    assert sorted(p["image_id"] for p in predictions) == names  # each input once
    assert {p["input_file"] for p in predictions} == {
        str(images / "a.jpg"), str(images / "b.jpg"), str(images / "c.jpg"),
        str(other / "a.jpg"), str(other / "a.png")}  # fmt: skip


def test_demo_checks_inputs_before_building_the_model(run, images, tmp_path):
    """A missing input fails at once, even with weights that do not exist."""
    missing = str(tmp_path / "nope" / "*.jpg")
    with pytest.raises(FileNotFoundError, match=r"--input '.*nope/\*\.jpg' matches no image"):
        demo.main(["--config-file", CFG, "--input", str(images), missing,
                   *TINY_OPTS_STR, "MODEL.WEIGHTS", str(tmp_path / "absent.pth")])  # fmt: skip
    with pytest.raises(ValueError, match=r"SemanticSegmentor predicts no panoptic_seg"):
        demo.main(["--config-file", config_path("quick_schedules/semantic_fpn_synthetic.yaml"),
                   "--input", str(images), "--panoptic-out", str(tmp_path / "pan"),
                   *TINY_OPTS_STR, "MODEL.WEIGHTS", str(tmp_path / "absent.pth")])  # fmt: skip
