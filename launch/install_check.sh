#!/usr/bin/env bash
# Installs posescale the way a user beside their own torch does, and runs it from another folder:
#
#   make install-check PY=3.12 TORCH=2.11.0 WHEELHOUSE=wheelhouse-py312-cu13 CUDA=13  # offline
#   make install-check PY=3.10 TORCH=2.5.1                                             # pip install .
#
# A fresh venv for Python PY gets torch==TORCH (and its torchvision) from the index first: the
# environment's own torch. Then posescale goes in, from the wheelhouse with --no-index (with the
# DALI extra of CUDA, 12 or 13, and the export and test extras) or from this checkout (with
# the export extra), and the check fails if torch was replaced or `pip check` finds a conflict.
# From a folder outside the checkout, the console scripts then make a small synthetic set, shard
# it, train 3 steps with a shipped config named `demo`, evaluate, predict and export: what an
# installed copy needs (shipped configs, layouts, no writes into site-packages). From the
# wheelhouse, the GPU check then runs on the CPU (`benchmarks/gpu_check.py --cpu --quick`: the
# gpu tests through the wheelhouse's pytest, every row, a compiled one included).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
py=${PY:-3.12}
torch_version=${TORCH:-2.11.0}
wheelhouse=${WHEELHOUSE:-}
cuda=${CUDA:-13}
case "$cuda" in 12 | 13) ;; *) echo "install-check: CUDA=$cuda: DALI comes for CUDA 12 or 13" >&2; exit 2 ;; esac
python=${PYTHON:-}
for candidate in "$HOME"/.pyenv/versions/"$py".*/bin/python "$(command -v "python$py" || true)"; do
  if [ -z "$python" ] && [ -x "$candidate" ] && "$candidate" -c '' 2>/dev/null; then
    python=$candidate
  fi
done
[ -n "$python" ] || { echo "install-check: no Python $py here (set PYTHON=...)" >&2; exit 2; }
work=$root/.cache/install-check/py$py-torch$torch_version
export PIP_CACHE_DIR=$root/.cache/pip PIP_CONSTRAINT=
rm -rf "$work"
mkdir -p "$work/elsewhere"
"$python" -m venv "$work/venv"
venv_python=$work/venv/bin/python
"$venv_python" -m pip install -q --upgrade pip
echo "install-check: Python $py, the environment's own torch $torch_version"
"$venv_python" -m pip install -q "torch==$torch_version" torchvision
torch_before=$("$venv_python" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)')
if [ -n "$wheelhouse" ]; then
  echo "install-check: posescale from the wheelhouse $wheelhouse, offline, wheels only"
  carried=$(find "$wheelhouse" -name '*.whl' -printf '%f\n' | grep -i -E '^(torch|torchvision|triton|setuptools)-|_cu12-' || true)
  if [ -n "$carried" ]; then
    echo "install-check: FAILED: the wheelhouse carries what the node brings or a build tool: $carried" >&2
    exit 1
  fi
  "$venv_python" -m pip install -q --no-index --only-binary=:all: --find-links "$wheelhouse" \
    "posescale[dali-cuda$cuda,export,test]"
  "$venv_python" -c 'import nvidia.dali; print("install-check: DALI", nvidia.dali.__version__)'
else
  echo "install-check: pip install $root"
  "$venv_python" -m pip install -q "$root[export]"
fi
torch_after=$("$venv_python" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)')
if [ "$torch_before" != "$torch_after" ]; then
  echo "install-check: FAILED: installing posescale replaced torch $torch_before by $torch_after" >&2
  exit 1
fi
"$venv_python" -m pip check
echo "install-check: torch kept ($torch_after); running from $work/elsewhere"
bin=$work/venv/bin
cd "$work/elsewhere"
# An installed copy keeps its caches in the user's cache folder: here one of the check's own,
# and not the folders that make exports for the checkout.
export XDG_CACHE_HOME=$work/cache
unset TORCH_EXTENSIONS_DIR WANDB_DIR WANDB_CACHE_DIR WANDB_CONFIG_DIR WANDB_DATA_DIR \
  MPLCONFIGDIR TRITON_CACHE_DIR POSESCALE_CACHE
"$bin/posescale-synthetic" --out data --seed 0 --train-images 12 --val-images 6
for split in train val; do
  "$bin/posescale-shard-coco" --ann "data/annotations/person_keypoints_$split.json" \
    --images "data/images/$split" --out "shards/$split" --split "$split" --detail 128x96
done
overrides=(data.train_shards=shards/train data.val_shards=shards/val
  data.val_ann=data/annotations/person_keypoints_val.json data.backend=torch
  train.budget_minutes=0 train.max_steps=3 train.batch_size=4 eval.every_epochs=1 run.dir=run)
"$bin/posescale-train" --config demo "${overrides[@]}"
"$bin/posescale-eval" --config demo --checkpoint run --out run/metrics.json "${overrides[@]}"
"$bin/posescale-predict" --checkpoint run --input data/images/val --out pictures --limit 2 \
  --boxes data/annotations/person_detections_val.json --ann data/annotations/person_keypoints_val.json
"$bin/posescale-summary" run --eval run/metrics.json
"$bin/posescale-export" --checkpoint run --out export --image data/images/val
test -s export/model.onnx || { echo "install-check: FAILED: no export/model.onnx" >&2; exit 1; }
site=$("$venv_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if find "$site" -newer "$work/elsewhere/data" -type f -not -path '*__pycache__*' | grep -q .; then
  echo "install-check: FAILED: files were written into $site at run time:" >&2
  find "$site" -newer "$work/elsewhere/data" -type f -not -path '*__pycache__*' | head >&2
  exit 1
fi
if [ -n "$wheelhouse" ]; then
  echo "install-check: the GPU check on the CPU, with the wheelhouse's pytest"
  (cd "$root" && "$venv_python" benchmarks/gpu_check.py --cpu --quick --out "$work/gpu-check")
fi
echo "install-check: ok (Python $py, torch $torch_after${wheelhouse:+, offline from $wheelhouse})"
