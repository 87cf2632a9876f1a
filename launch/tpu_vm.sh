#!/usr/bin/env bash
# TPU VM pod launcher: create (queued resource), install, run, logs, delete.
#
#   PROJECT=my-proj ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-256 TPU_NAME=monl-v5e \
#   WORKDIR=gs://my-bucket/runs/avdit1 bash launch/tpu_vm.sh <create|install|run|logs|delete> [--dry-run] [-- EXTRA FLAGS]
#
# Parameters (environment):
#   PROJECT, ZONE, ACCELERATOR_TYPE (e.g. v5litepod-256, v5p-128), TPU_NAME   the pod
#   WORKDIR            gs:// directory for checkpoints, logs and config.json (needs the `gcs` extra)
#   RUNTIME_VERSION    TPU VM image (default v2-alpha-tpuv5-lite; v2-alpha-tpuv5 for v5p, tpu-ubuntu2204-base for v4)
#   CONFIG             config file and variant (default configs/avdit_paper.py)
#   REPO               git URL to clone on every worker ('' = copy this checkout with gcloud scp)
#   REMOTE_DIR         checkout location on the workers (default ~/monl)
#   SPOT=1             request spot capacity (preemptible: train exits 42 after its SIGTERM save; rerun `run`)
# `run` starts `python -m monl.main train` on every worker (--worker=all) with --config.dist.auto=True,
# so JAX finds the other workers itself; extra flags after `--` are passed on (e.g. --config.data.dir=gs://...).
# `--dry-run` prints the gcloud commands instead of running them.
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
CMD="$1"; shift
DRY_RUN=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
  shift
done

need() { for v in "$@"; do [ -n "${!v:-}" ] || { echo "set $v (see: bash $0)" >&2; exit 2; }; done; }
need PROJECT ZONE TPU_NAME
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
CONFIG="${CONFIG:-configs/avdit_paper.py}"
REPO="${REPO:-}"
REMOTE_DIR="${REMOTE_DIR:-~/monl}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Prints the command (dry run) or runs it.
run() {
  if [ "$DRY_RUN" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
ssh_all() {  # a command on every worker of the pod
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=all \
    --command="$1"
}

case "$CMD" in
  create)
    need ACCELERATOR_TYPE
    spot=(); [ "${SPOT:-0}" = 1 ] && spot=(--spot)
    run gcloud compute tpus queued-resources create "$TPU_NAME-qr" --project="$PROJECT" --zone="$ZONE" \
      --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" \
      "${spot[@]}"
    echo "# wait until ACTIVE: gcloud compute tpus queued-resources describe $TPU_NAME-qr --project=$PROJECT --zone=$ZONE"
    ;;
  install)
    if [ -n "$REPO" ]; then
      ssh_all "rm -rf $REMOTE_DIR && git clone --depth 1 $REPO $REMOTE_DIR"
    else
      run gcloud compute tpus tpu-vm scp --recurse "$ROOT" "$TPU_NAME:$REMOTE_DIR" --project="$PROJECT" \
        --zone="$ZONE" --worker=all
    fi
    ssh_all "cd $REMOTE_DIR && python3 -m pip install -q -U pip && python3 -m pip install -q -e '.[tpu,gcs]'"
    ;;
  run)
    need WORKDIR
    case "$WORKDIR" in gs://*) ;; *) echo "WORKDIR=$WORKDIR: use a gs:// path every worker can reach" >&2; exit 2 ;; esac
    flags="--config=$CONFIG --workdir=$WORKDIR --config.dist.auto=True"
    for f in "${EXTRA[@]+"${EXTRA[@]}"}"; do flags="$flags $(printf '%q' "$f")"; done
    # nohup + a log file per worker: the run survives the ssh session; `logs` follows it.
    ssh_all "cd $REMOTE_DIR && nohup python3 -m monl.main train $flags > ~/monl_train.log 2>&1 & echo started on \$(hostname)"
    ;;
  logs)
    worker="${WORKER:-0}"
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker="$worker" \
      --command="tail -n 200 -f ~/monl_train.log"
    ;;
  delete)
    run gcloud compute tpus queued-resources delete "$TPU_NAME-qr" --project="$PROJECT" --zone="$ZONE" \
      --force --quiet
    ;;
  *) usage ;;
esac
