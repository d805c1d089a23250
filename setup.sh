#!/usr/bin/env bash
# Create .venv and install the project with the one lock (constraints.txt) every install path uses.
# pip, not uv/poetry: pip finds the torch/torchvision wheels this machine keeps on disk.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
