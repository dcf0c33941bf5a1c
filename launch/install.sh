#!/usr/bin/env bash
# Create .venv and install posescale with every dependency pinned (requirements.lock).
# Re-running on an installed tree only compares a stamp and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
python=${PYTHON:-python3.11}
venv=.venv
stamp=$venv/.posescale-installed

# Caches go under the project, not the home directory.
export PIP_CACHE_DIR="$root/.cache/pip"

want=$(cat requirements.lock setup.cfg pyproject.toml launch/install.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  echo "install: .venv is up to date"
  exit 0
fi

if ! command -v "$python" >/dev/null; then
  echo "install: $python not found; posescale needs Python 3.11 (set PYTHON=...)" >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
start=$(date +%s)
"$venv/bin/python" -m pip install -q --upgrade -c requirements.lock pip setuptools wheel
# torch/torchvision come from this machine's local wheel store where pip is configured for it.
"$venv/bin/python" -m pip install -q -c requirements.lock --no-build-isolation -e ".[dev,dali-cuda13]"
"$venv/bin/python" -m pip check
echo "$want" > "$stamp"
echo "install: done in $(( $(date +%s) - start )) s"
