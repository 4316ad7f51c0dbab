#!/usr/bin/env bash
# The test command: bootstrap the venv, lint, then run the whole suite (unit + integration).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$repo/scripts/bootstrap.sh")"
cd "$repo"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
export PATH="$venv/bin:$PATH"
# The web page test drives Debian's chromium through chromedriver; a fresh CI machine lacks them.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "[test] installing chromium and chromium-driver (apt)" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      --no-install-recommends chromium chromium-driver fonts-liberation; } >/dev/null 2>&1 \
    || echo "[test] could not install chromium; the web page test will fail under CI" >&2
fi
ruff check .
python -m pytest "$@"
