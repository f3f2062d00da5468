#!/usr/bin/env bash
# Run from a folder outside the checkout, with the wheel installed: the package must work with
# nothing of the repository on sys.path (configs from package data, console entry points).
set -euo pipefail
REPO=$1
# A dataset folder of its own: the test suite leaves synthetic sets of other sizes in the shared
# one, and a glob over all of them would feed the demo several images of the same name.
export DETECTRON2_DATASETS=$PWD/datasets
python - "$REPO" <<'PY'
import os, sys
import panoptic_ext
repo = os.path.realpath(sys.argv[1])
where = os.path.realpath(panoptic_ext.__file__)
assert not where.startswith(repo + os.sep), f"panoptic_ext imported from the checkout: {where}"
print("[ci] panoptic_ext from", where)
PY
CFG=$(python -c 'from panoptic_ext import model_zoo; print(model_zoo.get_config_file("quick_schedules/panoptic_fpn_synthetic.yaml"))')
SMALL=(DATASETS.SYNTHETIC.NUM_VAL 8 DATALOADER.NUM_WORKERS 0)
panoptic-ext-train --config-file "$CFG" SOLVER.MAX_ITER 2 "${SMALL[@]}" OUTPUT_DIR out/train
grep -q "copypaste: PQ,SQ,RQ" out/train/log.txt
panoptic-ext-train --config-file "$CFG" --eval-only "${SMALL[@]}" \
    MODEL.WEIGHTS out/train/model_final.pth OUTPUT_DIR out/eval
panoptic-ext-validate-dataset --dataset synthetic_panoptic_val --config-file "$CFG" "${SMALL[@]}"
panoptic-ext-demo --config-file "$CFG" --input "$DETECTRON2_DATASETS/synthetic_panoptic/*/val/val/*.jpg" \
    --output out/demo \
    --panoptic-out out/panoptic "${SMALL[@]}" MODEL.WEIGHTS out/train/model_final.pth
test -s out/panoptic/predictions.json
panoptic-ext-export --config-file "$CFG" --output out/export "${SMALL[@]}" \
    MODEL.WEIGHTS out/train/model_final.pth
panoptic-ext-demo --onnx out/export/model.onnx --output out/demo_onnx \
    --input "$DETECTRON2_DATASETS/synthetic_panoptic/*/val/val/*.jpg"
VAL=("$DETECTRON2_DATASETS"/synthetic_panoptic/*/val/val/*.jpg)
test "$(ls out/demo_onnx/*.png | wc -l)" -eq "${#VAL[@]}"  # one picture per input
test -s out/demo_onnx/val_000000.png
echo "[ci] wheel: train, eval, validate, demo, export and demo --onnx ran outside the checkout"
