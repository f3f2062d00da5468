#!/usr/bin/env bash
# On the lent GPU machine: install the wheels carried in .gpu_carry/wheels into a private folder
# (no registry there, nothing else installed), put them, the carried detectron2 source and this
# checkout on PYTHONPATH, and run `python -m dev.gpu_check` with the given arguments:
#   bash dev/gpu_check.sh --out "$OUT"            # everything, within --budget-s 480
#   bash dev/gpu_check.sh --out "$OUT" --steps tests,throughput
# Prepare .gpu_carry first with dev/prepare_gpu_carry.sh (on a machine with the registry).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${GPU_CARRY:-$(pwd)/.gpu_carry}
SITE=${GPU_SITE:-/tmp/panoptic_ext_gpu_site}
PYTHON=${PYTHON:-python3}
if ! ls "$CARRY"/wheels/*.whl >/dev/null 2>&1 || [ ! -d "$CARRY/detectron2/detectron2" ]; then
  echo "$CARRY/wheels or $CARRY/detectron2 missing: run dev/prepare_gpu_carry.sh, carry .gpu_carry" >&2
  exit 2
fi
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "$CARRY"/wheels/*.whl
export PYTHONPATH="$(pwd):$SITE:$CARRY/detectron2${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export DETECTRON2_DATASETS=${DETECTRON2_DATASETS:-/tmp/panoptic_ext_gpu_datasets}
exec "$PYTHON" -m dev.gpu_check "$@"
