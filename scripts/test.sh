#!/usr/bin/env bash
# The test command: bootstrap the venv, lint, then run the whole suite (unit + integration).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$repo/scripts/bootstrap.sh")"
cd "$repo"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
export PATH="$venv/bin:$PATH"
ruff check .
python -m pytest "$@"
