"""dev/gpu_check.py: the prepared GPU check, run end to end at tiny sizes on CPU.

The same steps as on a GPU (environment, device tests, Panoptic FCN throughput, Panoptic FPN
ours vs detectron2, PANet vs Mask R-CNN, the four quick schedules), the JSON and markdown
summaries, and the failure paths: a failed check, a step killed at its time limit, a step left
out when the budget is spent.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, one_thread

import dev.gpu_check

STEPS = [
    "env",
    "tests",
    "throughput",
    "panoptic_fpn_vs_detectron2",
    "panet_vs_mask_rcnn",
    "schedule_semantic_fpn",
    "schedule_panoptic_fpn",
    "schedule_panoptic_fcn",
    "schedule_panet",
]


@pytest.fixture(scope="module")
def gpu_check():
    return dev.gpu_check


def _summary(out) -> dict:
    with open(os.path.join(out, "gpu_check.json")) as f:
        return json.load(f)


def test_tiny_check_runs_every_step_on_cpu(gpu_check, tmp_path):
    argv = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--isolation", "none"]
    with one_thread():
        code = gpu_check.main([*argv, "--workers", "0"])
    doc = _summary(tmp_path)
    steps = {s["name"]: s for s in doc["steps"]}
    assert list(steps) == STEPS == [s.name for s in gpu_check.STEPS]
    failed = {n: (s["error"], [c for c in s["checks"] if not c["ok"]]) for n, s in steps.items()}
    assert code == 0 and doc["status"] == "pass", {n: f for n, f in failed.items() if any(f)}
    assert all(s["status"] == "pass" and s["checks"] for s in doc["steps"])
    assert doc["environment"]["torch"] == torch.__version__

    assert steps["tests"]["figures"]["ran"] >= 1
    throughput = steps["throughput"]["figures"]
    for variant in ("fp32_batch1", "fp32_batch4", "amp_batch1", "amp_batch4"):
        assert throughput[variant]["img_per_s"] > 0
        assert throughput[variant]["instances_per_image"] > 0
    assert steps["throughput"]["goals"][0]["met"] is None  # the goal is for an H100/H200
    pfpn = steps["panoptic_fpn_vs_detectron2"]["figures"]
    assert pfpn["detectron2"]["x_train"] == 1.0 and pfpn["ours"]["train_step_s"] > 0
    panet = steps["panet_vs_mask_rcnn"]["figures"]
    assert panet["panet_full"]["params_m"] > panet["pafpn_neck"]["params_m"]
    assert panet["pafpn_neck"]["params_m"] > panet["mask_rcnn"]["params_m"]
    for name in ("panoptic_fpn", "panoptic_fcn", "panet"):
        fig = steps[f"schedule_{name}"]["figures"]
        assert 0 <= fig["panoptic_seg.PQ"] <= 100 and fig["iterations"] == 2
    assert 0 <= steps["schedule_semantic_fpn"]["figures"]["sem_seg.mIoU"] <= 100

    md = (tmp_path / "gpu_check.md").read_text()
    assert md.startswith("# panoptic_ext GPU check: pass")
    assert "| throughput | pass |" in md and "| amp | 4 |" in md
    assert sorted(os.listdir(tmp_path)) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure on a CPU-only machine")
def test_failed_check_and_killed_step_fail_the_run(gpu_check, tmp_path):
    """Process isolation: the env step's child reports CUDA missing (a failed check, round trip
    of the result file); the next step is killed at its limit; the one after is left out."""
    argv = ["--tiny", "--device", "cuda", "--out", str(tmp_path), "--steps"]
    argv += ["env,throughput,schedule_panet", "--budget-s", "60"]
    code = gpu_check.main([*argv, "--step-limit-s", "0.5"])  # env's child is killed too
    doc = _summary(tmp_path)
    statuses = {s["name"]: s["status"] for s in doc["steps"]}
    assert code == 1 and doc["status"] == "fail"
    assert statuses == {"env": "timeout", "throughput": "timeout", "schedule_panet": "timeout"}
    assert "killed after its time limit" in doc["steps"][1]["error"]

    code = gpu_check.main([*argv[:-3], "env,throughput", "--budget-s", "120"])
    env = _summary(tmp_path)["steps"][0]
    assert code == 1 and env["status"] == "fail" and env["figures"]["torch"] == torch.__version__
    assert [c["what"] for c in env["checks"] if not c["ok"]] == ["CUDA is available"]


def test_spent_budget_leaves_steps_out(gpu_check, tmp_path):
    argv = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--steps", "env,throughput"]
    code = gpu_check.main([*argv, "--budget-s", "0.01", "--isolation", "none"])
    doc = _summary(tmp_path)
    assert code == 1 and doc["status"] == "incomplete"
    assert [s["status"] for s in doc["steps"]] == ["skipped", "skipped"]
    with pytest.raises(SystemExit):
        gpu_check.main(["--steps", "env,bogus"])


def test_tests_step_reports_a_pytest_run_stopped_at_the_limit(gpu_check, tmp_path):
    from dev import gpu_check_steps as steps

    settings = steps.CheckSettings("cpu", True, str(tmp_path), 0, time_limit_s=21.0)  # 1 s left
    result = steps.tests_step(settings)
    assert result.status == "fail" and result.figures["exit_code"] is None
    assert not result.checks[0].ok and result.checks[0].what.startswith("pytest finished in time")
    verbose = "t.py::a[cuda] PASSED [ 50%]\nt.py::b[cuda] FAILED [100%]\nt.py::c[cuda] SKIPPED (x)"
    counts, failed = steps.parse_verbose(verbose)
    assert counts == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1}
    assert failed == ["t.py::b[cuda]"]


def test_the_cuda_variants_are_collected_for_the_gpu_run():
    """What the GPU check's test step selects (-m "devices and cuda"): every family in every
    CUDA precision, the AMP trainer, batch-N inference, deterministic mode, the RoIAlign path."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    files = [
        "test_devices.py",
        "engine/test_amp.py",
        "modeling/panoptic_fcn/test_panoptic_fcn_model.py",
    ]
    cmd += ["-m", "devices and cuda", *[os.path.join(REPO, "tests", f) for f in files]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert all(line.split("[")[1].count("cuda") for line in ids), ids
    by_test = {}
    for line in ids:
        by_test.setdefault(line.split("::")[1].split("[")[0], []).append(line)
    assert {k: len(v) for k, v in by_test.items()} == {
        "test_batched_inference_equals_single_images": 4,  # 3 families here + Panoptic FCN
        "test_deterministic_mode_repeats_a_run": 1,
        "test_sparse_roi_align_backward_used_on_cpu_only": 1,
        "test_train_step_and_inference": 12,  # 4 families x fp32, fp16, bf16
        "test_amp_trainer_steps_are_finite": 4,
    }
