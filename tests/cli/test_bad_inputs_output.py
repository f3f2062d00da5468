"""The bad-input matrix, output side: no command overwrites or loses output, and the demo turns
each bad image, path or write into a named skip or error (through the user-facing commands).

Disk-full is real, not mocked: ``/dev/full`` answers every write with ENOSPC, and a child
training under ``ulimit -f`` gets EFBIG from the kernel for a checkpoint larger than the limit.
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
import torch
from bad_input_matrix import CFG, TRAIN, digest, train_tiny
from detectron2.data import MetadataCatalog
from helpers import TINY_OPTS, one_thread
from PIL import Image

import panoptic_ext
from panoptic_ext.cli import convert_dataset, convert_panoptic_fcn_official, demo, export_model
from panoptic_ext.utils.paths import OutputIsInputError
from panoptic_ext.utils.write_errors import OutputWriteError
from panoptic_ext.vis.predictions import OVERLAY_MAX_SIDE

TINY_OPTS_STR = [str(v) for v in TINY_OPTS]
# Children import the panoptic_ext under test (and the tests' helpers).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(panoptic_ext.__file__)))
ENV = dict(os.environ, PYTHONPATH=PACKAGE_ROOT, OMP_NUM_THREADS="1")


# ------------------------------------------------------------------- training output folder
def test_eval_only_in_a_training_folder_keeps_the_training_config(run_copy):
    before = digest(run_copy)
    final = os.path.join(run_copy, "model_final.pth")
    assert train_tiny(run_copy, "MODEL.WEIGHTS", final, options=("--eval-only",)) == 0
    after = digest(run_copy)
    assert after["config.yaml"] == before["config.yaml"]
    assert all(after[n] == d for n, d in before.items() if n.endswith(".pth"))
    evaluated = open(os.path.join(run_copy, "config_eval.yaml")).read()
    assert f"WEIGHTS: {final}" in evaluated  # the evaluation's own config
    assert "WEIGHTS: ''" in open(os.path.join(run_copy, "config.yaml")).read()


def test_resume_at_max_iter_writes_the_model_final_a_kill_cut_short(run_copy):
    """The state ``kill -9`` during the model_final save leaves: the tag still names
    model_0000001.pth, model_final.pth is absent, its temporary file half written."""
    os.remove(os.path.join(run_copy, "model_final.pth"))
    open(os.path.join(run_copy, "last_checkpoint"), "w").write("model_0000001.pth")
    stale = os.path.join(run_copy, ".model_final.pth.4242.0badf00d.tmp")
    open(stale, "wb").write(b"half a checkpoint")
    earlier = {n: d for n, d in digest(run_copy).items() if n.startswith("model_00")}

    assert train_tiny(run_copy, options=("--resume",)) == 0
    final = torch.load(os.path.join(run_copy, "model_final.pth"), weights_only=True)
    last = torch.load(os.path.join(run_copy, "model_0000001.pth"), weights_only=True)
    assert final["iteration"] == 1
    assert all(torch.equal(final["model"][k], v) for k, v in last["model"].items())
    assert not os.path.exists(stale)
    after = digest(run_copy)
    assert all(after[n] == d for n, d in earlier.items())


def test_metrics_json_cut_by_a_kill_continues_on_a_new_line(run_copy):
    metrics = os.path.join(run_copy, "metrics.json")
    lines = open(metrics).read().splitlines()
    cut = lines[-1][: len(lines[-1]) // 2]
    open(metrics, "w").write("\n".join(lines[:-1] + [cut]))  # no newline after the cut record

    assert train_tiny(run_copy, "SOLVER.MAX_ITER", "3", options=("--resume",)) == 0
    after = open(metrics).read().splitlines()
    assert after[: len(lines)] == lines[:-1] + [cut]  # earlier records as they were
    records = [json.loads(line) for line in after[len(lines) :]]
    assert records and records[-1]["iteration"] == 2
    assert "ends in a cut line" in open(os.path.join(run_copy, "log.txt")).read()


def _set_file_size_limit(limit: int):
    def _apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead

    return _apply


def test_checkpoint_that_cannot_be_written_names_the_file_and_the_cause(run_copy):
    """A kernel write error (EFBIG under ``ulimit -f``, as ENOSPC on a full disk) stops the
    training with the checkpoint's name and the cause; earlier checkpoints stay intact."""
    size = os.path.getsize(os.path.join(run_copy, "model_0000000.pth"))
    before = digest(run_copy)
    child = subprocess.run(
        [sys.executable, "-m", "panoptic_ext.cli.train", "--config-file", CFG, "--resume",
         *TRAIN, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", run_copy],
        env=ENV, capture_output=True, text=True, timeout=600,
        preexec_fn=_set_file_size_limit(size // 2),
    )  # fmt: skip
    assert child.returncode != 0
    target = os.path.join(run_copy, "model_0000002.pth")
    assert f"cannot write {target}: file too large [EFBIG]" in child.stderr, child.stderr[-3000:]
    assert child.stderr.splitlines()[-1].startswith(
        f"panoptic_ext.utils.write_errors.OutputWriteError: cannot write {target}: file too large"
    )
    after = digest(run_copy)
    assert all(after[n] == d for n, d in before.items() if n.endswith(".pth"))
    assert not [n for n in os.listdir(run_copy) if n.endswith(".tmp")]


# ------------------------------------------------------------------- tools: output = input
@pytest.fixture
def panoptic_copy(tmp_path):
    """A private copy of the tiny synthetic val set's panoptic JSON and PNG folder."""
    from helpers import register_tiny

    register_tiny()
    meta = MetadataCatalog.get("synthetic_panoptic_val")
    root = tmp_path / "data"
    shutil.copytree(meta.panoptic_root, root / "panoptic")
    shutil.copy(meta.panoptic_json, root / "panoptic.json")
    return root


@pytest.mark.parametrize("same", ["folder", "json", "folder_via_symlink"])
def test_convert_dataset_refuses_an_output_that_is_its_input(panoptic_copy, same):
    root = panoptic_copy
    os.symlink(root / "panoptic", root / "link")
    out_root = {"folder": root / "panoptic", "json": root / "sem",
                "folder_via_symlink": root / "link" / ".." / "link"}[same]  # fmt: skip
    out_json = root / ("panoptic.json" if same == "json" else "instances.json")
    before = digest(str(root))
    option = "--out-instances-json" if same == "json" else "--out-semantic-root"
    with pytest.raises(
        OutputIsInputError, match=rf"{option} .* is the same path as the input --panoptic-"
    ):
        convert_dataset.main(["to-separated", "--panoptic-json", str(root / "panoptic.json"),
                              "--panoptic-root", str(root / "panoptic"),
                              "--out-instances-json", str(out_json),
                              "--out-semantic-root", str(out_root)])  # fmt: skip
    assert digest(str(root)) == before


def test_to_panoptic_refuses_writing_over_its_semantic_pngs(tmp_path):
    sem = tmp_path / "sem"
    sem.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(sem / "a.png")
    (tmp_path / "stuff.json").write_text("[]")
    (tmp_path / "instances.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(OutputIsInputError, match=r"--out-png-root .*sem/ .* --semantic-root"):
        convert_dataset.main(["to-panoptic", "--instances-json", str(tmp_path / "instances.json"),
                              "--semantic-root", str(sem), "--stuff-categories",
                              str(tmp_path / "stuff.json"), "--out-json", str(tmp_path / "p.json"),
                              "--out-png-root", f"{sem}/"])  # fmt: skip
    assert os.listdir(sem) == ["a.png"]


def test_checkpoint_tools_refuse_an_output_that_is_their_input(run, tmp_path):
    weights = str(tmp_path / "official.pth")
    shutil.copy(os.path.join(run, "model_final.pth"), weights)
    before = digest(str(tmp_path))
    with pytest.raises(
        OutputIsInputError,
        match=r"output \(2nd argument\) .*official.pth "
        r"is the same path as the input checkpoint \(1st argument\)",
    ):
        convert_panoptic_fcn_official.main([weights, weights])
    with pytest.raises(OutputIsInputError, match=r"--output's model.ts .* MODEL.WEIGHTS"):
        export_model.main(["--config-file", CFG, "--format", "torchscript", "--output",
                           str(tmp_path), "MODEL.WEIGHTS", str(tmp_path / "model.ts")])  # fmt: skip
    assert digest(str(tmp_path)) == before


# ------------------------------------------------------------------------------------- demo
def _demo_argv(run, inputs, *extra, output=None, panoptic_out=None):
    argv = ["--config-file", CFG, "--input", *inputs]
    argv += ["--output", str(output)] if output else []
    argv += ["--panoptic-out", str(panoptic_out)] if panoptic_out else []
    weights = os.path.join(run, "model_final.pth") if run else "/nonexistent/weights.pth"
    return [*argv, *extra, *TINY_OPTS_STR, "MODEL.WEIGHTS", weights]


def _demo(run, inputs, out, *extra) -> int:
    with one_thread():
        return demo.main(_demo_argv(run, inputs, *extra, output=out / "vis",
                                    panoptic_out=out / "pan"))  # fmt: skip


def _predictions(out) -> list[str]:
    names = [
        p["file_name"] for p in json.load(open(out / "pan" / "predictions.json"))["annotations"]
    ]
    assert all((out / "pan" / n).is_file() for n in names)  # only PNGs that exist
    return names


def test_demo_image_too_thin_to_resize_is_skipped_and_the_next_runs(run, images, tmp_path, caplog):
    (images / "b.jpg").unlink()
    Image.fromarray(np.full((1, 5000, 3), 128, np.uint8)).save(images / "b.png")
    out = tmp_path / "out"
    assert _demo(run, [str(images)], out) == 1
    assert sorted(os.listdir(out / "vis")) == ["a.png", "c.png"]
    assert _predictions(out) == ["a.png", "c.png"]
    assert f"skipping {images / 'b.png'}: " in caplog.text
    assert "height and width must be > 0" in caplog.text


def test_demo_skips_a_fifo_without_opening_it(run, images, tmp_path, caplog):
    fifo = images / "b.jpg"
    fifo.unlink()
    os.mkfifo(fifo)
    # If the demo opened the FIFO it would block: a writer frees it after 60 s (test fails).
    unblock = threading.Timer(60, lambda: os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)))
    unblock.start()
    start = time.time()
    try:
        assert _demo(run, [str(images), str(fifo)], tmp_path / "out") == 1
    finally:
        unblock.cancel()
    assert time.time() - start < 60
    assert sorted(os.listdir(tmp_path / "out" / "vis")) == ["a.png", "c.png"]
    assert f"skipping {fifo}: is a named pipe (FIFO), not a regular file" in caplog.text


@pytest.mark.parametrize("output", ["out/", "out/clip", "out/clip.gif"])
def test_demo_video_output_without_a_video_name_is_refused_before_the_model(tmp_path, output):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (64, 48))
    writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    target = str(tmp_path / output)
    with pytest.raises(ValueError, match=r"--output .* for --video-input must be a video file"):
        demo.main(["--config-file", CFG, "--video-input", str(video), "--output", target,
                   *TINY_OPTS_STR, "MODEL.WEIGHTS", "/nonexistent/weights.pth"])  # fmt: skip
    assert not os.path.exists(tmp_path / "out" / "clip")


def test_demo_names_too_long_for_the_file_system_are_shortened_and_unique(run, images, tmp_path):
    stem = "é" * 125  # 250 bytes: "x__<stem>_jpg.png" would be 261
    inputs = []
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        shutil.copy(images / "a.jpg", tmp_path / folder / f"{stem}.jpg")
        inputs.append(str(tmp_path / folder / f"{stem}.jpg"))
    out = tmp_path / "out"
    assert _demo(run, inputs, out) == 0
    written = sorted(os.listdir(out / "vis"))
    assert len(written) == 2 and all(len(n.encode()) <= 255 for n in written)
    assert sorted(os.listdir(out / "pan")) == sorted([*written, "predictions.json"])
    assert sorted(_predictions(out)) == written


def test_demo_on_a_full_disk_fails_naming_the_file(run, images, tmp_path):
    full = tmp_path / "overlay.png"
    os.symlink("/dev/full", full)  # every write: ENOSPC
    with pytest.raises(OutputWriteError, match=rf"cannot write {full}: no space left on device"):
        with one_thread():
            demo.main(_demo_argv(run, [str(images / "a.jpg")], output=full))
    with pytest.raises(ValueError, match=r"--output /dev/full is not a folder: for several"):
        demo.main(_demo_argv(None, [str(images)], output="/dev/full"))


def test_demo_panoptic_out_that_cannot_be_written_stops_before_the_model(images, tmp_path):
    """Weights that do not exist: the error comes before the model is built."""
    (tmp_path / "file").write_text("a file, not a folder")
    folder = tmp_path / "file" / "pan"
    with pytest.raises(OutputWriteError, match=rf"cannot write --panoptic-out {folder}: not a "):
        demo.main(_demo_argv(None, [str(images)], panoptic_out=folder))


def test_demo_refuses_overlays_over_its_input_pngs(images, tmp_path):
    Image.open(images / "a.jpg").save(images / "d.png")
    before = digest(str(images))
    with pytest.raises(
        OutputIsInputError, match=r"--output .*d.png is the same path as the input --input"
    ):
        demo.main(_demo_argv(None, [str(images)], output=images))
    assert digest(str(images)) == before


def test_demo_overlay_of_a_huge_image_is_capped_the_prediction_is_not(run, images, tmp_path):
    big = tmp_path / "big.jpg"
    Image.open(images / "a.jpg").resize((3000, 2400)).save(big)
    out = tmp_path / "out"
    assert _demo(run, [str(big)], out) == 0
    overlay = cv2.imread(str(out / "vis" / "big.png"))
    assert overlay.shape[:2] == (round(2400 * OVERLAY_MAX_SIDE / 3000), OVERLAY_MAX_SIDE)
    assert cv2.imread(str(out / "pan" / "big.png")).shape[:2] == (2400, 3000)


def test_demo_truncated_video_warns_with_frames_read_and_expected(run, tmp_path, caplog):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(30):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    with one_thread():
        assert demo.main(["--config-file", CFG, "--video-input", str(video), "--output",
                          str(tmp_path / "out.mp4"), *TINY_OPTS_STR, "MODEL.WEIGHTS",
                          os.path.join(run, "model_final.pth")]) == 0  # fmt: skip
    assert f"{video}: read 1" in caplog.text and " of 30 frames; the file may be" in caplog.text
    assert os.path.getsize(tmp_path / "out.mp4") > 0


def test_demo_sigterm_writes_predictions_json_of_the_images_done(run, images, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for k in range(150):
        shutil.copy(images / f"{'abc'[k % 3]}.jpg", many / f"{k:03d}.jpg")
    out = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, "-m", "panoptic_ext.cli.demo",
         *_demo_argv(run, [str(many)], output=out / "vis", panoptic_out=out / "pan")],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while len(os.listdir(out / "pan")) < 10 if (out / "pan").is_dir() else True:
            assert child.poll() is None and time.time() < deadline, "the demo did not start"
            time.sleep(0.2)
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    done = _predictions(out)
    assert 10 <= len(done) < 150
    assert sorted(done) == sorted(n for n in os.listdir(out / "pan") if n != "predictions.json")
    assert "interrupted after" in stderr
