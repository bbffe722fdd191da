#!/usr/bin/env bash
# Set up and run the whole test suite (the README's test command; .ci/run calls exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
$PY -m ruff check platform tests jobs benchmarks experiments serve
exec $PY -m pytest -q "$@"
