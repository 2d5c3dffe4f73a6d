#!/usr/bin/env bash
# Format and lint the whole tree with the one configuration in pyproject.toml ([tool.ruff]).
#   bash scripts/format.sh           rewrite files: ruff format, then the lint fixes ruff can make safely
#   bash scripts/format.sh --check   change nothing; exit non-zero if a file would change or a lint rule fails
set -euo pipefail
cd "$(dirname "$0")/.."
RUFF=("${GRAINCLIP_VENV:-.venv}/bin/python" -m ruff)
if [[ "${1:-}" == "--check" ]]; then
  status=0
  "${RUFF[@]}" format --check . || status=1
  "${RUFF[@]}" check . || status=1
  exit "$status"
else
  "${RUFF[@]}" format .
  "${RUFF[@]}" check --fix .
fi
