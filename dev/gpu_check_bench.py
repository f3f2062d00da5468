"""Throughput and cost steps of ``dev/gpu_check.py``, on ``dev/benchmark.py``'s machinery.

Models are random-init with every FrozenBatchNorm calibrated on the input batch
(``benchmark.calibrate_frozen_bn``), so features keep unit scale (no fp16 overflow) and the
whole pipeline runs: instance and segment counts are reported so that a degenerate run shows.
R-CNN models use score threshold 0 (``benchmark.bench_cfg``): the mask head runs on
``DETECTIONS_PER_IMAGE`` boxes as a trained model's does. Panoptic FCN's panoptic merge takes
every instance (``COMBINE.INST_THRESH 0``; random-init scores are below the default 0.2), i.e. the
merge's largest load, which makes the img/s figures conservative.
"""

from __future__ import annotations

import os
import statistics

import detectron2
import torch
from detectron2.modeling import build_model

from dev import benchmark
from dev.common import config_path
from dev.gpu_check_steps import CheckSettings, Goal, StepResult, finite, markdown_table

PANOPTIC_FCN = config_path("COCO-PanopticSegmentation/panoptic_fcn_R_50_1x.yaml")
PANOPTIC_FPN = config_path("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml")
PAFPN_MASK_RCNN = config_path("COCO-InstanceSegmentation/mask_rcnn_R_50_PAFPN_1x.yaml")
PANET = config_path("COCO-InstanceSegmentation/panet_R_50_1x.yaml")
# detectron2's own model-zoo configs: the real competitors.
D2_PANOPTIC_FPN = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
D2_MASK_RCNN = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"


def d2_config_file(name: str) -> str:
    """A config of detectron2's model zoo (``detectron2.model_zoo.get_config_file`` without its
    pkg_resources import, which newer setuptools no longer ship)."""
    path = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"detectron2's model-zoo config {path} is missing")
    return path


FULL_SIZE, TINY_SIZE = (800, 1333), (64, 96)
# Tiny mode: R50 -> R18 and fewer proposals/RoIs, so each model builds and steps in ~1 s on CPU.
TINY_OPTS = [
    *("MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64),
    *("MODEL.RPN.POST_NMS_TOPK_TRAIN", 64, "MODEL.RPN.POST_NMS_TOPK_TEST", 32),
    *("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "TEST.DETECTIONS_PER_IMAGE", 10),
    *("MODEL.ROI_BOX_HEAD.FC_DIM", 64, "MODEL.PANOPTIC_FCN.POSITION_HEAD.CONVS_DIM", 64),
    *("MODEL.PANOPTIC_FCN.KERNEL_HEAD.CONVS_DIM", 64),
]
# Goals of the issue (speed targets: reported, not pass/fail).
AMP_THROUGHPUT_GOAL = 30.0  # img/s, Panoptic FCN R50 1x at 800x1333 with AMP on an H100/H200
OFFICIAL_V100_IMG_S = 12.4  # the official Panoptic FCN code's figure on a V100


def _size(settings: CheckSettings) -> tuple[int, int]:
    return TINY_SIZE if settings.tiny else FULL_SIZE


def _opts(settings: CheckSettings) -> list:
    return ["MODEL.WEIGHTS", "", *(TINY_OPTS if settings.tiny else [])]


def _amp_dtype(settings: CheckSettings) -> torch.dtype:
    # fp16 is what detectron2's AMPTrainer uses on CUDA; CPU autocast supports bf16.
    return torch.float16 if settings.device == "cuda" else torch.bfloat16


# ---------------------------------------------------------------------------------------------
# throughput: Panoptic FCN R50 1x inference, fp32 and AMP, batch 1 and 4


def throughput_step(settings: CheckSettings) -> StepResult:
    result = StepResult("throughput", "Panoptic FCN R50 1x inference img/s, fp32 and AMP")
    height, width = _size(settings)
    warmup, iters = (0, 1) if settings.tiny else (5, 30)
    variants = _throughput_variants(settings, height, width)
    counts, errors = {}, {}
    for key, b in variants.items():  # one inference each (also a warm-up); a variant that
        try:  # fails (e.g. an fp16 dtype error) is reported, the others are still measured
            counts[key] = _output_counts(b)
        except Exception as e:  # noqa: BLE001
            errors[key] = f"{type(e).__name__}: {e}"
    timed = [b for key, b in variants.items() if key in counts]
    for _ in range(warmup):
        for b in timed:
            benchmark.infer_step(b, b.train_inputs)
    for _ in range(iters):  # interleaved: a drifting clock slows every variant alike
        for b in timed:
            with benchmark.peak_memory(settings.device, lambda v, b=b: setattr(b, "train_mem", v)):
                b.infer_times.append(benchmark.infer_step(b, b.train_inputs))
    rows = [_report_variant(result, key, b, counts, errors) for key, b in variants.items()]
    header = ["precision", "batch", "img/s", "peak mem (MiB)", "instances/img", "segments/img"]
    result.tables.append(markdown_table(header, [r for r in rows if r]))
    img_s = {
        k: result.figures.get(f"{k}_batch1", {}).get("img_per_s", float("nan"))
        for k in ("fp32", "amp")
    }
    result.goals.append(_amp_goal(settings, img_s["amp"]))
    result.summary = (
        f"{height}x{width}: fp32 {img_s['fp32']:.1f} img/s, AMP {img_s['amp']:.1f} img/s (batch 1)"
    )
    result.figures.update(input_size=f"{height}x{width}", warmup=warmup, iterations=iters)
    return result


def _throughput_variants(settings: CheckSettings, height: int, width: int) -> dict:
    """(precision, batch) -> Bench, all on one calibrated model and the same 4 images."""
    merge = ["MODEL.PANOPTIC_FCN.INFERENCE.COMBINE.INST_THRESH", 0.0]
    if settings.tiny:  # the default 4096 px stuff limit is most of a 64x96 image
        merge += ["MODEL.PANOPTIC_FCN.INFERENCE.COMBINE.STUFF_AREA_LIMIT", 16]
    cfg = benchmark.bench_cfg(PANOPTIC_FCN, _opts(settings) + merge, settings.device, False)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = benchmark.make_inputs(cfg, height, width, 4, seed=0)
    benchmark.calibrate_frozen_bn(model, inputs)
    return {
        (precision, batch): benchmark.Bench(
            f"{precision} batch {batch}", cfg, model, None, inputs[:batch], amp=amp
        )
        for precision, amp in (("fp32", None), ("amp", _amp_dtype(settings)))
        for batch in (1, 4)
    }


def _report_variant(result: StepResult, key: tuple, b: benchmark.Bench, counts, errors) -> list:
    """Figures and checks of one throughput variant; its table row ([] if it failed)."""
    if key in errors:
        result.check(f"{b.name}: inference runs", False, errors[key])
        return []
    precision, batch = key
    img_s = batch / statistics.median(b.infer_times)
    count = counts[key]
    result.figures[f"{precision}_batch{batch}"] = dict(
        img_per_s=round(img_s, 2), peak_mem_mib=round(b.train_mem), **count
    )
    result.check(f"{b.name}: finite positive img/s", finite(img_s) and img_s > 0, f"{img_s:.3g}")
    result.check(
        f"{b.name}: outputs are not degenerate",
        count["instances_per_image"] > 0 and count["segments_per_image"] > 0,
        str(count),
    )
    return [precision, batch, f"{img_s:.2f}", f"{b.train_mem:.0f}", *count.values()]


@torch.no_grad()
def _output_counts(bench: benchmark.Bench) -> dict:
    """Mean instances and panoptic segments per image of one inference; outputs must be finite."""
    with benchmark.autocast(bench.cfg.MODEL.DEVICE, bench.amp):
        outputs = bench.model(bench.train_inputs)
    for out in outputs:
        if not torch.isfinite(out["sem_seg"].float()).all():
            raise FloatingPointError(f"{bench.name}: non-finite sem_seg scores")
    n = len(outputs)
    return {
        "instances_per_image": sum(len(o["instances"]) for o in outputs) / n,
        "segments_per_image": sum(len(o["panoptic_seg"][1]) for o in outputs) / n,
    }


def _amp_goal(settings: CheckSettings, amp_img_s: float) -> Goal:
    name = torch.cuda.get_device_name(0) if settings.device == "cuda" else "CPU"
    applies = any(chip in name for chip in ("H100", "H200")) and not settings.tiny
    return Goal(
        "Panoptic FCN R50 1x AMP batch 1 at 800x1333 on an H100/H200",
        f">= {AMP_THROUGHPUT_GOAL:.0f} img/s (official code: {OFFICIAL_V100_IMG_S} on a V100)",
        f"{amp_img_s:.1f} img/s on {name}",
        amp_img_s >= AMP_THROUGHPUT_GOAL if applies else None,
    )


# ---------------------------------------------------------------------------------------------
# Train-step / inference / memory comparisons through benchmark.main


def _compare(settings: CheckSettings, specs: list[str]) -> list[benchmark.Bench]:
    height, width = _size(settings)
    warmup, iters = (0, 1) if settings.tiny else (2, 10)
    argv = [a for spec in specs for a in ("--config-file", spec)]
    argv += ["--input-size", f"{height}x{width}", "--batch-size", "2", "--no-flops"]
    argv += ["--iters", str(iters), "--warmup", str(warmup), "--device", settings.device]
    argv += ["--calibrate-bn", *[str(o) for o in _opts(settings)]]
    return benchmark.main(argv)


def _cost_figures(result: StepResult, benches: list[benchmark.Bench], names: list[str]) -> None:
    """Medians and ratios vs the first bench into ``result`` (figures, table, checks)."""
    ref = benches[0]
    rows = []
    for name, b in zip(names, benches):
        train, infer = statistics.median(b.train_times), statistics.median(b.infer_times)
        ratios = (
            train / statistics.median(ref.train_times),
            infer / statistics.median(ref.infer_times),
            b.train_mem / ref.train_mem if ref.train_mem else float("nan"),
        )
        result.figures[name] = {
            "params_m": round(b.params / 1e6, 2),
            "train_step_s": round(train, 4),
            "inference_s": round(infer, 4),
            "train_peak_mem_mib": round(b.train_mem),
            "x_train": round(ratios[0], 3),
            "x_inference": round(ratios[1], 3),
            "x_mem": round(ratios[2], 3),
        }
        rows.append([name, *result.figures[name].values()])
        ok = finite(train, infer) and train > 0 and infer > 0
        result.check(f"{name}: finite positive times", ok, f"{train:.3g} s, {infer:.3g} s")
    header = ["model", "params (M)", "train step (s)", "inference (s)", "train peak (MiB)"]
    result.tables.append(markdown_table(header + ["x train", "x inference", "x mem"], rows))


def _ratio_goal(result: StepResult, name: str, key: str, limit: float, what: str) -> Goal:
    value = result.figures[name][key]
    return Goal(what, f"<= {limit:.2f}x", f"{value:.3f}x", value <= limit)


def panoptic_fpn_step(settings: CheckSettings) -> StepResult:
    result = StepResult("panoptic_fpn_vs_detectron2", "Panoptic FPN R50: ours vs detectron2's")
    d2 = d2_config_file(D2_PANOPTIC_FPN)
    benches = _compare(settings, [d2, PANOPTIC_FPN])
    _cost_figures(result, benches, ["detectron2", "ours"])
    for key, what in (("x_train", "train step"), ("x_inference", "inference")):
        result.goals.append(_ratio_goal(result, "ours", key, 1.02, f"ours / detectron2 {what}"))
    ours = result.figures["ours"]
    result.summary = (
        f"ours / detectron2: train x{ours['x_train']}, inference x{ours['x_inference']}"
    )
    return result


def panet_step(settings: CheckSettings) -> StepResult:
    result = StepResult("panet_vs_mask_rcnn", "PANet neck / full vs Mask R-CNN R50-FPN")
    d2 = d2_config_file(D2_MASK_RCNN)
    benches = _compare(settings, [d2, PAFPN_MASK_RCNN, PANET])
    _cost_figures(result, benches, ["mask_rcnn", "pafpn_neck", "panet_full"])
    # The goals PANet was built to (CPU: x1.15 / x1.47 measured, FLOPs x1.14 / x1.94).
    result.goals.append(_ratio_goal(result, "pafpn_neck", "x_train", 1.10, "neck train step"))
    result.goals.append(_ratio_goal(result, "panet_full", "x_train", 1.25, "full PANet train step"))
    neck, full = result.figures["pafpn_neck"], result.figures["panet_full"]
    result.summary = (
        f"train x{neck['x_train']} (neck) / x{full['x_train']} (full), "
        f"memory x{neck['x_mem']} / x{full['x_mem']}"
    )
    return result
