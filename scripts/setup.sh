#!/usr/bin/env bash
# Install pdfusion and its dev tools into the current Python. torch first, pinned to the CPU wheel
# (a bare `torch` would pull a multi-GB CUDA build); the project then finds torch already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
$PY -m pip install --quiet --disable-pip-version-check -e '.[dev]'
