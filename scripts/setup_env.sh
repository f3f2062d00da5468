#!/usr/bin/env bash
# Idempotent set-up: installs what is missing, nothing else.
#   - pinned Python dependencies (requirements.txt)
#   - panopticapi (PyPI: panopticapi-lite, installed without its numpy pin)
#   - detectron2 from source, the official way, when `import detectron2` fails
#     (set DETECTRON2_SRC=/path/to/detectron2 to build a local clone instead of the git URL)
#   - panoptic_ext itself, editable (skip with SKIP_PROJECT_INSTALL=1)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

have() { "$PY" -c "import $1" >/dev/null 2>&1; }

missing=$("$PY" - <<'PY'
import importlib.util
mods = {"torch": "torch==2.14.1", "torchvision": "torchvision==0.29.1", "cv2": "opencv-python-headless==4.12.0.88",
        "pycocotools": "pycocotools", "fvcore": "fvcore", "iopath": "iopath", "deflate": "deflate", "pytest": "pytest", "ruff": "ruff"}
print(" ".join(v for k, v in mods.items() if importlib.util.find_spec(k) is None))
PY
)
if [ -n "$missing" ]; then
  echo "[setup] installing: $missing"
  "$PY" -m pip install -q $missing "numpy<2" "setuptools<81"
fi
if ! have panopticapi; then
  echo "[setup] installing panopticapi-lite"
  "$PY" -m pip install -q --no-deps panopticapi-lite
fi
if ! have detectron2; then
  src=${DETECTRON2_SRC:-git+https://github.com/facebookresearch/detectron2.git}
  echo "[setup] installing detectron2 from $src (about 2-5 minutes)"
  "$PY" -m pip install -q "setuptools<81" ninja
  "$PY" -m pip install --no-build-isolation "$src"
fi
# Probe from outside the checkout and without the Makefile's PYTHONPATH: is it really installed?
if [ "${SKIP_PROJECT_INSTALL:-0}" != "1" ] && ! (cd / && env -u PYTHONPATH "$PY" -c "import panoptic_ext" >/dev/null 2>&1); then
  echo "[setup] installing panoptic_ext (editable)"
  "$PY" -m pip install -q --no-deps --no-build-isolation -e .
fi
echo "[setup] environment ready"
