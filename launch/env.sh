# Sourced by the quick-start scripts: creates or updates the project's virtual environment (.venv)
# and installs the package with the extras named in $MONL_EXTRAS. Needs only Python >= 3.11.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
VENV="${MONL_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[monl] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
# Reinstall only when setup.py changed since the last install into this environment.
STAMP="$VENV/.monl-install-${MONL_EXTRAS:-none}"
if [ ! -f "$STAMP" ] || [ "$ROOT/setup.py" -nt "$STAMP" ]; then
  echo "[monl] installing monl${MONL_EXTRAS:+[$MONL_EXTRAS]} into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$ROOT${MONL_EXTRAS:+[$MONL_EXTRAS]}"
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
cd "$ROOT"
