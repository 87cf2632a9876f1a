#!/usr/bin/env bash
# The main job on the built-in data: sets up .venv, builds the synthetic audiovisual dataset on first
# use, trains the default config, then samples every named task from the trained model.
# Usage: bash launch/quickstart.sh [WORKDIR]   (default runs/default; rerunning resumes/reuses)
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
WORKDIR="${1:-runs/default}"
python -m monl.main train --config configs/default.py --workdir "$WORKDIR"
python -m monl.main sample --config configs/default.py --workdir "$WORKDIR" --task all --num 16 \
    --output "$WORKDIR/samples"
echo "[monl] checkpoints:  $WORKDIR/checkpoints"
echo "[monl] TensorBoard:  tensorboard --logdir $WORKDIR/tb"
echo "[monl] samples:      $WORKDIR/samples/<task>/ (npz + manifest.json; GIF/WAV previews; contact_sheet.png)"
