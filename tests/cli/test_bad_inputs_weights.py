"""The bad-input matrix, continued: configs whose YAML or dataset entries cannot be meant as
written, and weights that cannot be right, through the user-facing commands
(``panoptic-ext-train``, ``panoptic-ext-demo``, ``panoptic-ext-export``).

Units live next to their modules' tests (tests/utils/test_yaml_config.py,
tests/data/test_json_file.py, tests/checkpoint/test_weight_checks.py, ...).
"""

import json
import os
import pickle
import re
import shutil

import pytest
import torch
from bad_input_matrix import CFG, digest, train_tiny
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers import TINY_OPTS, build_tiny_model, config_path, load_cfg, one_thread, register_tiny

from panoptic_ext.checkpoint.safe_load import PlainPickleCheckpointError, UnsafeCheckpointError
from panoptic_ext.checkpoint.weight_checks import (
    NonFiniteWeightsError,
    ResumeMismatchError,
    WeightsMismatchError,
)
from panoptic_ext.cli import demo, export_model
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
    with pytest.raises(ConfigStructureError, match=rf"{path}, line 7: the YAML alias '\*l3'"):
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


# ------------------------------------------------------------------------------------- weights
def _weights(run, tmp_path, change=None, name="weights.pth") -> str:
    """The finished run's model_final.pth as a plain {"model": state} file, changed by
    ``change(state)`` (which may return a new dict)."""
    state = torch.load(os.path.join(run, "model_final.pth"), weights_only=True)["model"]
    if change is not None:
        state = change(state) or state
    path = str(tmp_path / name)
    torch.save({"model": state}, path)
    return path


def _nan(state):
    state["roi_heads.box_predictor.cls_score.weight"][1, 2] = float("nan")
    state["sem_seg_head.predictor.bias"][0] = float("inf")


def _backbone_only(state):
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


def _eval(out, *extra, config: str = CFG) -> int:
    test = ("DATASETS.TEST", "('synthetic_panoptic_val',)", "TEST.EVALUATORS", "('panoptic',)")
    return train_tiny(str(out), *test, *extra, options=("--eval-only", "--config-file", config))


def _demo(tmp_path, weights, *extra) -> int:
    register_tiny()
    image = DatasetCatalog.get("synthetic_panoptic_val")[0]["file_name"]
    with one_thread():
        return demo.main(["--config-file", CFG, "--input", image, "--output",
                          str(tmp_path / "vis"), *extra, *map(str, TINY_OPTS),
                          "MODEL.WEIGHTS", weights])  # fmt: skip


def _export(tmp_path, weights, *extra) -> int:
    with one_thread():
        return export_model.main(["--config-file", CFG, "--output", str(tmp_path / "export"),
                                  "--num-samples", "1", *map(str, TINY_OPTS), *extra,
                                  "MODEL.WEIGHTS", weights])  # fmt: skip


NAN_MESSAGE = (
    r"Refusing weights .*weights.pth: 2 tensor\(s\) hold NaN/Inf values: "
    r"roi_heads.box_predictor.cls_score.weight \(1 NaN, 0 Inf of \d+ values\), "
    r"sem_seg_head.predictor.bias \(0 NaN, 1 Inf of \d+ values\)"
)


@pytest.mark.parametrize("command", ["eval", "demo", "export", "train"])
def test_nan_in_a_weight_tensor_is_refused_naming_it(run, tmp_path, command):
    """Was: evaluation exits 0 with PQ 43.1 or 0.0, the demo draws 0 segments."""
    weights = _weights(run, tmp_path, _nan)
    with pytest.raises(NonFiniteWeightsError, match=NAN_MESSAGE):
        if command == "eval":
            _eval(tmp_path / "eval", "MODEL.WEIGHTS", weights)
        elif command == "demo":
            _demo(tmp_path, weights)
        elif command == "export":
            _export(tmp_path, weights)
        else:
            train_tiny(str(tmp_path / "train"), "MODEL.WEIGHTS", weights)
    assert not (tmp_path / "vis").exists() and not (tmp_path / "export").exists()


def test_eval_only_without_weights_is_refused(tmp_path):
    register_tiny()
    with pytest.raises(WeightsMismatchError, match=r"MODEL.WEIGHTS is empty: evaluation, the "
                       r"demo and export would run a randomly initialised model"):  # fmt: skip
        _eval(tmp_path / "eval")
    with pytest.raises(WeightsMismatchError, match=r"MODEL.WEIGHTS is empty"):
        _export(tmp_path, "")


def test_weights_of_another_model_are_refused_for_evaluation(run, tmp_path):
    """Panoptic FPN weights under a Panoptic FCN config: was exit 0, PQ 0.0 after key lists."""
    weights = _weights(run, tmp_path)
    fcn = config_path("quick_schedules/panoptic_fcn_synthetic.yaml")
    with pytest.raises(WeightsMismatchError) as err:
        _eval(tmp_path / "eval", "MODEL.WEIGHTS", weights, config=fcn)
    msg = str(err.value)
    assert msg.startswith(f"Refusing weights {weights}: they leave the head(s) encoder, "
                          "kernel_head, position_head, stuff_generator, thing_generator of the "
                          "model entirely at random initialisation")  # fmt: skip
    assert re.search(r"model tensors not in the file: \S+, .*\(68 in all\)", msg)
    assert re.search(r"tensors of the file the model does not use: \S+, .*\(\d+ in all\)", msg)
    assert "file: backbone, proposal_generator, roi_heads, sem_seg_head" in msg


def test_backbone_only_weights_train_but_do_not_evaluate_demo_or_export(run, tmp_path):
    """An ImageNet-style backbone checkpoint is how fine-tuning starts; evaluating it is not."""
    weights = _weights(run, tmp_path, _backbone_only)
    assert train_tiny(str(tmp_path / "train"), "MODEL.WEIGHTS", weights) == 0
    heads = r"they leave the head\(s\) proposal_generator, roi_heads, sem_seg_head of the model"
    with pytest.raises(WeightsMismatchError, match=rf"Refusing weights {weights}: {heads}"):
        _eval(tmp_path / "eval", "MODEL.WEIGHTS", weights)
    with pytest.raises(WeightsMismatchError, match=heads):
        _demo(tmp_path, weights)
    with pytest.raises(WeightsMismatchError, match=heads):
        _export(tmp_path, weights)
    assert not (tmp_path / "vis").exists() and not (tmp_path / "export").exists()


def test_zoo_weights_with_another_class_count_still_train(run, tmp_path, caplog):
    """detectron2 skips the mismatched predictor with a warning: fine-tuning as usual."""

    def other_classes(state):
        for key in ("roi_heads.box_predictor.cls_score.weight",
                    "roi_heads.box_predictor.cls_score.bias"):  # fmt: skip
            state[key] = torch.cat([state[key], state[key][:1]])

    weights = _weights(run, tmp_path, other_classes)
    assert train_tiny(str(tmp_path / "train"), "MODEL.WEIGHTS", weights) == 0
    assert "roi_heads.box_predictor.cls_score.weight" in caplog.text  # detectron2's warning


def _official_panet(state) -> dict:
    """Parameter names of the official PANet code (Detectron.pytorch), as it saves them."""
    names = ["Conv_Body.conv_body.res2.0.conv1.weight",
             "Conv_Body.panet_buttomup_conv1_modules.0.0.weight",
             "RPN.RPN_conv.weight", "Box_Head.conv1_head.0.0.weight",
             "Box_Outs.cls_score.weight", "Mask_Head.conv_fcn.0.weight",
             "Mask_Outs.classify.weight"]  # fmt: skip
    return {name: value for name, value in zip(names, state.values())}


def _official_panoptic_fcn(run, tmp_path) -> str:
    from panoptic_ext.modeling.panoptic_fcn.official_keys import ours_to_official

    cfg = load_cfg("quick_schedules/panoptic_fcn_synthetic.yaml", *TINY_OPTS)
    state = build_tiny_model(cfg).state_dict()
    official = {ours_to_official(k) or k: v for k, v in state.items()}
    path = str(tmp_path / "panoptic_fcn_official.pth")
    torch.save({"model": official}, path)
    return path


@pytest.mark.parametrize("layout", ["panet_bare", "panet_detectron_pytorch", "panoptic_fcn"])
def test_official_layouts_load_nothing_and_name_their_converter(run, tmp_path, layout):
    if layout == "panoptic_fcn":
        weights = _official_panoptic_fcn(run, tmp_path)
        config, command = "panoptic_fcn_synthetic.yaml", "panoptic-ext-convert-panoptic-fcn"
    else:
        state = _official_panet(torch.load(os.path.join(run, "model_final.pth"))["model"])
        weights = str(tmp_path / "panet_official.pth")
        torch.save(state if layout == "panet_bare" else
                   {"model": state, "step": 89999, "optimizer": {}}, weights)  # fmt: skip
        config, command = "panet_synthetic.yaml", "panoptic-ext-convert-panet-official"
    for options in [(), ("--eval-only",)]:  # refused for training too: it fills nothing
        with pytest.raises(WeightsMismatchError) as err:
            train_tiny(str(tmp_path / f"out{len(options)}"), "MODEL.WEIGHTS", weights,
                       options=("--config-file", config_path(f"quick_schedules/{config}"),
                                *options))  # fmt: skip
        msg = str(err.value)
        if layout == "panoptic_fcn":  # the backbone's names are the same: only heads are lost
            assert re.search(rf"Refusing weights {weights}: they hold \d+ tensors in another "
                             r"code base's layout, which the model ignores", msg)  # fmt: skip
        else:
            assert f"Refusing weights {weights}: they fill none of the model's" in msg
        assert f"convert the file first with `{command}`" in msg


def test_plain_pickle_weights_say_what_they_are(run, tmp_path):
    """Was: "not a valid checkpoint (UnpicklingError)" with no hint."""
    weights = str(tmp_path / "plain.pth")
    state = torch.load(os.path.join(run, "model_final.pth"), weights_only=True)["model"]
    with open(weights, "wb") as f:
        pickle.dump(state, f)
    message = rf"'{weights}': it is a plain Python pickle of tensors \(written with pickle.dump"
    with pytest.raises(PlainPickleCheckpointError, match=message):
        _eval(tmp_path / "eval", "MODEL.WEIGHTS", weights)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_raw_pickle_payload_as_last_checkpoint_stops_resume(run_copy, tmp_path):
    """Was: called damaged and skipped (resume went on from the previous checkpoint)."""
    marker = tmp_path / "PWNED"
    with open(os.path.join(run_copy, "model_final.pth"), "wb") as f:
        pickle.dump({"model": _Payload(marker)}, f)
    before = digest(run_copy)
    with pytest.raises(UnsafeCheckpointError, match=r"model_final.pth': it is a plain pickle "
                       r"\(not a torch.save checkpoint\) and it references the global "
                       r"'\w+\.system'"):  # fmt: skip
        train_tiny(run_copy, "SOLVER.MAX_ITER", "3", options=("--resume",))
    assert digest(run_copy) == before and not marker.exists()


@pytest.mark.parametrize("momentum", ["0.9", "0.0"])
def test_resume_after_changing_the_model_names_the_keys_and_writes_nothing(tmp_path, momentum):
    """Was: an optimizer traceback, or with momentum 0 a silent resume with layers
    re-initialised."""
    register_tiny()
    first, out = str(tmp_path / "first"), str(tmp_path / "run")
    assert train_tiny(first, "SOLVER.MOMENTUM", momentum) == 0
    # A copy: this process's loggers still write to first/log.txt.
    shutil.copytree(first, out, ignore=shutil.ignore_patterns(".panoptic_ext.lock"))
    before = digest(out)
    with pytest.raises(ResumeMismatchError) as err:
        train_tiny(out, "SOLVER.MOMENTUM", momentum, "SOLVER.MAX_ITER", "4",
                   "MODEL.ROI_BOX_HEAD.NUM_FC", "3", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
                   options=("--resume",))  # fmt: skip
    msg = str(err.value)
    assert msg.startswith(f"Cannot --resume from {out}/model_final.pth: it was saved by a "
                          "different model than the config builds now")  # fmt: skip
    assert "model tensors are not in the file: roi_heads.box_head.fc3.bias" in msg
    assert re.search(r"tensors changed shape: sem_seg_head\.\S+ \(\d+, \d+, 3, 3\) in the", msg)
    assert "MODEL.ROI_BOX_HEAD.NUM_FC: 2 -> 3" in msg
    assert "MODEL.SEM_SEG_HEAD.CONVS_DIM: 64 -> 32" in msg
    assert digest(out) == before  # config.yaml, log.txt, checkpoints
    # Unchanged, it resumes.
    assert train_tiny(out, "SOLVER.MOMENTUM", momentum, "SOLVER.MAX_ITER", "3",
                      options=("--resume",)) == 0  # fmt: skip
