#!/usr/bin/env bash
# Set up, then run the main demo on embedded defaults (README's first command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
exec "${PYTHON:-python3}" jobs/demo.py "$@"
