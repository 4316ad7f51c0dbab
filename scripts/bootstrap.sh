#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install what the project needs.
# Re-running is cheap: dependencies are reinstalled only when pyproject.toml changes, and the
# editable install is re-pointed when the checkout moves (CI clones into a fresh folder).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${READ_VENV:-$HOME/.venvs/read}"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3

if [ ! -x "$venv/bin/python" ]; then
  echo "[bootstrap] creating venv at $venv" >&2
  "$python_bin" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
fi

stamp="$venv/.read-at-scale.stamp"
want="$(sha256sum "$repo/pyproject.toml" | cut -c1-16) $repo"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
  if [ "${want%% *}" != "${have%% *}" ]; then
    echo "[bootstrap] installing dependencies (first run takes several minutes)" >&2
    "$venv/bin/pip" install -q -e "$repo[dev]" >&2
  else
    "$venv/bin/pip" install -q --no-deps -e "$repo" >&2
  fi
  echo "$want" > "$stamp"
fi
echo "$venv"
