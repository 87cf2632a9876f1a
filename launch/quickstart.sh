#!/usr/bin/env bash
# The main job on the built-in data: sets up .venv, builds the synthetic audiovisual dataset on first
# use, trains the default config, and prints where everything went.
# Usage: bash launch/quickstart.sh [WORKDIR] [extra flags for `monl.main train`]
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
WORKDIR="${1:-runs/default}"
shift || true
python -m monl.main train --config configs/default.py --workdir "$WORKDIR" "$@"
echo "[monl] checkpoints: $WORKDIR/checkpoints  TensorBoard: tensorboard --logdir $WORKDIR/tb"
