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

# --- Optional CPU speed-ups (see README, "Performance"). Off with MONL_FAST_CPU=0. ---------------
# XLA:CPU allocates a fresh multi-hundred-MB temp arena on every step; with glibc malloc the kernel
# page-faults and zero-fills it each time. jemalloc that retains freed memory removes most of that
# system time. Used only when Debian/Ubuntu's libjemalloc2 is installed (`apt-get install libjemalloc2`);
# nothing depends on it.
if [ "${MONL_FAST_CPU:-1}" != "0" ] && [ -z "${LD_PRELOAD:-}" ] \
    && [ -f /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ]; then
  export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
  export MALLOC_CONF="${MALLOC_CONF:-oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1,retain:true}"
fi
# Persistent XLA compilation cache: a rerun of the same program (resume, sampling, tests) loads the
# compiled executable instead of recompiling (the default config's train step: ~20 s -> ~0.6 s).
if [ "${MONL_FAST_CPU:-1}" != "0" ]; then
  export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/monl/jax_cache}"
fi
