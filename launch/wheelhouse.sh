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
# downloaded for manylinux x86_64. torch, torchvision and triton are left out, with everything
# only they require (torch's CUDA libraries, setuptools on Python 3.12), whichever of
# posescale's requirements asks for them (timm does): the node's own are kept, and the script
# lists what it left out. DALI's own CUDA libraries stay.
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
if compgen -G "$out/*.whl" >/dev/null; then
  echo "wheelhouse: emptying $out of an earlier wheelhouse's wheels"
  rm -f "$out"/*.whl
fi
target=(--python-version "$py" --implementation cp --abi "cp${py/./}"
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform linux_x86_64 --only-binary=:all:)

# The pins of requirements.lock, less what the node brings with its torch, and less DALI (whose
# flavour CUDA chooses: the lock has the CUDA 13 one).
grep -v -i -E '^(#|torch==|torchvision==|triton==|nvidia-|cuda-|deepspeed==|pip==|setuptools==|wheel==)' \
  requirements.lock > "$tmp/constraints.txt"
grep -i '^nvidia-dali-cuda' requirements.lock | sed "s/^[^=]*/$dali/" >> "$tmp/constraints.txt"

echo "wheelhouse: posescale and DeepSpeed wheels (built here)"
"$venv_python" -m pip wheel -q --no-deps --no-build-isolation -w "$out" .
ds_version=$(grep -i '^deepspeed==' requirements.lock | cut -d= -f3)
DS_BUILD_OPS=0 "$venv_python" -m pip wheel -q --no-deps --no-build-isolation \
  --no-binary deepspeed -w "$out" "deepspeed==$ds_version"

with=$(echo "dali-cuda$cuda $extras" | xargs | tr ' ' ',')
echo "wheelhouse: resolving posescale[$with] for Python $py, manylinux x86_64"
# What the node's install needs, resolved as pip would there (metadata only: nothing is
# downloaded but what is kept below); torch is resolved too, then left out with all that only
# it brings (launch/wheelhouse_plan.py).
"$venv_python" -m pip install -q --dry-run --ignore-installed --report "$tmp/report.json" \
  --target "$tmp/target" "${target[@]}" --find-links "$out" -c "$tmp/constraints.txt" \
  "posescale[$with]" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
"$venv_python" launch/wheelhouse_plan.py "$tmp/report.json" --python "$py" --keep "$tmp/keep.txt" \
  > "$tmp/left-out.txt"
grep -v -i -E '^(posescale|deepspeed)==' "$tmp/keep.txt" > "$tmp/download.txt"
echo "wheelhouse: downloading $(wc -l < "$tmp/download.txt") wheels"
"$venv_python" -m pip download -q --no-deps -d "$out" "${target[@]}" -r "$tmp/download.txt" \
  2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
echo "wheelhouse: left out, the node's torch brings them ($(wc -l < "$tmp/left-out.txt")):"
sed 's/^/  /' "$tmp/left-out.txt"
leaked=$(find "$out" -name '*.whl' -printf '%f\n' | grep -i -E '^(torch|torchvision|triton)-|_cu12-' || true)
if [ -n "$leaked" ]; then
  echo "wheelhouse: FAILED: wheels the node brings itself are in $out: $leaked" >&2
  exit 1
fi
count=$(find "$out" -name '*.whl' | wc -l)
echo "wheelhouse: $count wheels, $(du -sh "$out" | cut -f1) in $out"
echo "install on the node: pip install --no-index --find-links $out 'posescale[$with]'"
