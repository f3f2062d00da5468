#!/usr/bin/env bash
# Set-up of a Python environment for panoptic_ext: run it inside the virtualenv (or conda env)
# you want to use. Idempotent: a second run only checks what is there.
#   1. build tools detectron2 needs (setuptools<81: detectron2 still imports pkg_resources)
#   2. panoptic_ext (editable) with every dependency and extra declared in pyproject.toml
#      (torch, torchvision, numpy 2, opencv, fvcore, pycocotools, ... + eval, export, dev)
#   3. detectron2 from source when `import detectron2` fails: the official git URL, or
#      DETECTRON2_SRC=/path/to/detectron2 (a clone or a source tarball) on machines without git
#   4. panopticapi (PyPI build panopticapi-lite, without its metadata-only numpy<2 pin; its code
#      needs only numpy and pillow, and runs on numpy 2: the test suite compares against it)
# PYTHON picks the interpreter (default: python3 on PATH). EXTRAS overrides "eval,export,dev".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SECONDS=0
EXTRAS=${EXTRAS:-eval,export,dev}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

"$PY" - <<'PYCHECK'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"[setup] Python >= 3.10 is needed, this is {sys.version.split()[0]}")
if sys.prefix == sys.base_prefix and "CONDA_PREFIX" not in __import__("os").environ:
    print("[setup] note: not inside a virtualenv; installing into", sys.prefix)
PYCHECK

echo "[setup] build tools"
pip_install "setuptools>=77.0.3,<81" wheel ninja
echo "[setup] panoptic_ext[$EXTRAS] (editable) and its dependencies"
pip_install --no-build-isolation -e ".[$EXTRAS]"
if ! (cd / && "$PY" -c "import detectron2") >/dev/null 2>&1; then
  src=${DETECTRON2_SRC:-git+https://github.com/facebookresearch/detectron2.git}
  echo "[setup] detectron2 from $src (builds against the installed torch: about 2 minutes)"
  pip_install --no-build-isolation "$src"
fi
# Last, so that pip's resolver never sees its metadata-only numpy<2 pin during the other installs.
if ! "$PY" -c "import panopticapi" >/dev/null 2>&1; then
  echo "[setup] panopticapi (panopticapi-lite, --no-deps)"
  pip_install --no-deps "panopticapi-lite>=0.2"
fi
# Probe from outside the checkout, without PYTHONPATH: is everything really installed?
(cd / && env -u PYTHONPATH "$PY" - <<'PYCHECK'
import cv2, detectron2, numpy, panopticapi, torch, torchvision
import detectron2.model_zoo  # imports pkg_resources (gone from setuptools >= 81)
import panoptic_ext
print(f"[setup] ready: panoptic_ext {panoptic_ext.__version__}, detectron2 {detectron2.__version__},"
      f" torch {torch.__version__}, torchvision {torchvision.__version__}, numpy {numpy.__version__},"
      f" opencv {cv2.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}")
PYCHECK
)
echo "[setup] done in ${SECONDS} s"
