#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, slow tests included, the way CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${GRAINCLIP_VENV:-.venv}/bin/python" -m pytest -ra --durations=25 "$@"
