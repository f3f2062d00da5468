#!/usr/bin/env bash
# Prepare, on a machine with the package registry, what the lent GPU machine needs and cannot
# fetch (it has python3 + torch + torchvision and common packages, but no registry and no
# detectron2), into the git-ignored folder .gpu_carry/ of this checkout:
#   .gpu_carry/wheels/       wheels of the dependencies its image lacks (versions tested here)
#   .gpu_carry/detectron2/   detectron2's source from ../shared/vendor, importable from
#                            PYTHONPATH without its compiled ops (we use none of them), with the
#                            model-zoo configs and projects/ where an installed copy has them
# then prints the device call: carry [".gpu_carry"], command `bash dev/gpu_check.sh --out $OUT`.
#
#   bash dev/prepare_gpu_carry.sh                 # wheels for the GPU image's Python (3.12)
#   GPU_PYTHON_VERSION=3.11 bash dev/prepare_gpu_carry.sh   # e.g. to rehearse with this Python
#
# Environment: PYTHON (a pip that reaches the registry, default python3), GPU_PYTHON_VERSION,
# DETECTRON2_SRC (a source tarball or folder; default ../shared/vendor/detectron2-src-*.tar.gz).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PYVER=${GPU_PYTHON_VERSION:-3.12}
CARRY=.gpu_carry
# What the GPU image lacks (it has numpy, opencv, pillow, matplotlib, PyYAML, tabulate,
# portalocker, cloudpickle, tqdm, tensorboard, pytest), at the versions the test suite ran with.
BINARY="pycocotools==2.0.11 deflate==0.9.0 faster-coco-eval==1.8.0"
PURE="yacs==0.1.8 termcolor==3.3.0 omegaconf==2.3.1 iopath==0.1.9 panopticapi-lite==0.2.0"
SDIST_ONLY="fvcore==0.1.5.post20221221 antlr4-python3-runtime==4.9.3"  # no wheels published

rm -rf "$CARRY"
mkdir -p "$CARRY/wheels"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
# shellcheck disable=SC2086
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp "${platforms[@]}" -d "$CARRY/wheels" $BINARY $PURE
# shellcheck disable=SC2086
"$PYTHON" -m pip wheel -q --no-deps -w "$CARRY/wheels" $SDIST_ONLY

if [ -z "${DETECTRON2_SRC:-}" ]; then
  DETECTRON2_SRC=$(ls ../shared/vendor/detectron2-src-*.tar.gz 2>/dev/null | head -n 1 || true)
fi
[ -n "$DETECTRON2_SRC" ] || { echo "no detectron2 source: set DETECTRON2_SRC" >&2; exit 1; }
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
if [ -d "$DETECTRON2_SRC" ]; then cp -r "$DETECTRON2_SRC"/. "$src"; else tar xzf "$DETECTRON2_SRC" -C "$src"; fi
root=$(dirname "$(find "$src" -maxdepth 3 -name setup.py -path '*detectron2*' | head -n 1)")
d2="$CARRY/detectron2"
mkdir -p "$d2/projects"
cp -r "$root/detectron2" "$d2/"
# detectron2's setup.py installs its configs as package data of detectron2.model_zoo.
cp -r "$root/configs" "$d2/detectron2/model_zoo/configs"
for project in DeepLab PointRend Panoptic-DeepLab; do  # detectron2.projects.* finds these
  cp -r "$root/projects/$project" "$d2/projects/"
done
find "$d2" -name __pycache__ -prune -exec rm -rf {} +

echo "== carried wheels (Python $PYVER):"
ls "$CARRY/wheels"
carry_kib=$(du -sk "$CARRY" | cut -f1)
tree_kib=$(git ls-files -z | xargs -0 du -sk --apparent-size 2>/dev/null | awk '{s += $1} END {print s}')
echo "== sizes: $CARRY ${carry_kib} KiB + tracked files ${tree_kib} KiB (the device limit: 65536 KiB)"
if [ $((carry_kib + tree_kib)) -gt 65536 ]; then
  echo "too large for the device machine" >&2
  exit 1
fi
cat <<EOF
== device call (from this checkout; the device tool sends the checkout the session started in):
   carry:     [".gpu_carry"]
   command:   bash dev/gpu_check.sh --out \$OUT
   timeout_s: 600   (the check keeps to --budget-s 480; a rerun of failed steps: --steps a,b)
EOF
