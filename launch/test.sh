#!/usr/bin/env bash
# The test command: sets up .venv with the `test` extra and runs the whole suite on the CPU.
# Extra arguments go to pytest (e.g. `bash launch/test.sh tests/test_layout.py -x`).
MONL_EXTRAS=test source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export JAX_PLATFORMS=cpu
exec python -m pytest -q -n 2 --dist loadfile "$@" tests
