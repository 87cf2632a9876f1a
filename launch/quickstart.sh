#!/usr/bin/env bash
# The main job on the built-in data: sets up .venv, builds the synthetic audiovisual dataset on first
# use, trains the default config, samples every named task from the trained model and scores the main
# tasks on 64 test clips.
# Usage: bash launch/quickstart.sh [WORKDIR]   (default runs/default; rerunning resumes/reuses)
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
WORKDIR="${1:-runs/default}"
python -m monl.main train --config configs/default.py --workdir "$WORKDIR"
python -m monl.main sample --config configs/default.py --workdir "$WORKDIR" --task all --num 16 \
    --output "$WORKDIR/samples"
# Ground-truth scores of 64 test clips for the main tasks (I3D/FVD off: ~1.5 s per clip on a CPU).
python -m monl.main evaluate --config configs/default.py --workdir "$WORKDIR" \
    --tasks joint,a2v,v2a,continue --num 64 --config.eval.i3d=False --output "$WORKDIR/eval"
echo "[monl] checkpoints:  $WORKDIR/checkpoints"
echo "[monl] TensorBoard:  tensorboard --logdir $WORKDIR/tb"
echo "[monl] samples:      $WORKDIR/samples/<task>/ (npz + manifest.json; GIF/WAV/MP4 previews; contact_sheet.png)"
echo "[monl] scores:       $WORKDIR/eval/results.md"
