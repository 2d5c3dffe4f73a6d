#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, slow tests included, the way CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Run as in an activated venv: processes that tests start by name (ray start, Ray Job entrypoints such as
# `python -m grainclip.cli ...`) must find the project's interpreter, not the system one.
VENV="$(pwd)/${GRAINCLIP_VENV:-.venv}"
export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"
exec python -m pytest -ra --durations=25 "$@"
