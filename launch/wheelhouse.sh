#!/usr/bin/env bash
# Wheels for installing posescale offline on another machine (an air-gapped compute node) that
# already has its torch and torchvision:
#
#   make wheelhouse PY=3.12 CUDA=13 OUT=wheelhouse-py312-cu13
#   # on the node, in its environment:
#   pip install --no-index --find-links wheelhouse-py312-cu13 'posescale[dali-cuda13,export,test]'
#
# PY: the node's Python (3.10-3.12); CUDA: 12 or 13, the DALI flavour; OUT: the folder;
# EXTRAS: posescale's extras whose wheels come along besides DALI's, by default `export test`
# (ONNX export, and pytest for the GPU check's `pytest -m gpu`); EXTRAS= leaves them out.
# Holds posescale's own wheel, a DeepSpeed wheel built from its source distribution with no ops
# compiled (DS_BUILD_OPS=0: DeepSpeed's JIT builds what a run needs, and this project's runs use
# none of its CUDA ops), and every other dependency at the version requirements.lock pins,
# downloaded for manylinux x86_64. torch, torchvision, triton and torch's CUDA libraries are
# left out: the node's own are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-3.12}
cuda=${CUDA:-13}
out=${OUT:-wheelhouse-py${py/./}-cu$cuda}
extras=${EXTRAS-export test}
case "$py" in 3.10 | 3.11 | 3.12) ;; *) echo "wheelhouse: PY=$py: posescale supports Python 3.10-3.12" >&2; exit 2 ;; esac
case "$cuda" in 12) dali=nvidia-dali-cuda120 ;; 13) dali=nvidia-dali-cuda130 ;;
  *) echo "wheelhouse: CUDA=$cuda: DALI comes for CUDA 12 or 13" >&2; exit 2 ;; esac
venv_python=.venv/bin/python
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The pins of requirements.lock, less what the node brings with its torch, and less DALI (whose
# flavour CUDA chooses: the lock has the CUDA 13 one).
grep -v -i -E '^(#|torch==|torchvision==|triton==|nvidia-|cuda-|deepspeed==|pip==|setuptools==|wheel==)' \
  requirements.lock > "$tmp/constraints.txt"
dali_version=$(grep -i '^nvidia-dali-cuda' requirements.lock | cut -d= -f3)

echo "wheelhouse: posescale and DeepSpeed wheels (built here)"
"$venv_python" -m pip wheel -q --no-deps --no-build-isolation -w "$out" .
ds_version=$(grep -i '^deepspeed==' requirements.lock | cut -d= -f3)
DS_BUILD_OPS=0 "$venv_python" -m pip wheel -q --no-deps --no-build-isolation \
  --no-binary deepspeed -w "$out" "deepspeed==$ds_version"

echo "wheelhouse: the other dependencies for Python $py, manylinux x86_64, DALI for CUDA $cuda"
# What posescale and DeepSpeed need besides torch/torchvision (their requirements, read from the
# installed metadata), resolved with their own dependencies for the target Python.
"$venv_python" - "$dali==$dali_version" "$extras" > "$tmp/wants.txt" <<'PY'
import importlib.metadata as m
import re
import sys

skip = {"torch", "torchvision", "deepspeed", "triton"}
wants, extras = [sys.argv[1]], set(sys.argv[2].split())
for dist in ("posescale", "deepspeed"):
    for req in m.requires(dist) or []:
        extra = re.search(r"extra\s*==\s*[\"']([\w.-]+)[\"']", req)
        if extra and not (dist == "posescale" and extra.group(1) in extras):
            continue
        name = re.split(r"[ ;<>=!~\[]", req, maxsplit=1)[0]
        if name.lower() not in skip:
            wants.append(name)
print("\n".join(dict.fromkeys(wants)))
PY
"$venv_python" -m pip download -q -d "$out" --only-binary=:all: \
  --python-version "$py" --implementation cp --abi "cp${py/./}" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform linux_x86_64 \
  -c "$tmp/constraints.txt" -r "$tmp/wants.txt"
count=$(find "$out" -name '*.whl' | wc -l)
echo "wheelhouse: $count wheels, $(du -sh "$out" | cut -f1) in $out"
with=$(echo "dali-cuda$cuda $extras" | xargs | tr ' ' ',')
echo "install on the node: pip install --no-index --find-links $out 'posescale[$with]'"
