#!/usr/bin/env bash
# One command, one node or many: `bandmate train` under torchrun (DDP, NCCL).
#
#   One DGX (8 or 16 GPUs):
#     bash packaging/training/torchrun_train.sh DATA RUN [extra bandmate train args]
#   Several nodes: run the same line on every node with
#     NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=<node 0 host> bash packaging/training/torchrun_train.sh ...
#   (or let SLURM do it: packaging/training/slurm_train.sbatch).
# The same code path runs on 1 GPU (GPUS=1) and on 16 x N GPUs; the global batch is
# batch-size x grad-accum x GPUs x nodes blocks of 2048 tokens.
#
# Restarts continue the run: `--auto-resume` lets rank 0 decide (new run or resume, and from
# which checkpoint) for every rank, so nodes never start at different steps; RUN must be on a
# filesystem all nodes share (bandmate train stops with an error otherwise).
# Exit status: 0 when the run finished, 75 when it stopped unfinished (signal, time limit) and
# saved a checkpoint to continue from, another code when it failed.
set -euo pipefail
DATA=${1:?usage: torchrun_train.sh DATA RUN [bandmate train args]}
RUN=${2:?usage: torchrun_train.sh DATA RUN [bandmate train args]}
shift 2
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
TORCHRUN=${TORCHRUN:-torchrun}
STARTED=$(date +%s)

# SIGTERM/SIGINT (SLURM, Ctrl-C) go to torchrun, which passes them to the workers: they save.
$TORCHRUN --nproc-per-node "$GPUS" --nnodes "$NNODES" --node-rank "$NODE_RANK" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
  -m bandmate train "$DATA" -o "$RUN" --preset "${PRESET:-seed}" --compile --no-progress \
  --auto-resume "$@" &
PID=$!
trap 'kill -TERM "$PID" 2>/dev/null || true' TERM USR1
trap 'kill -INT "$PID" 2>/dev/null || true' INT
rc=0
while :; do
  wait "$PID" && rc=0 || rc=$?
  kill -0 "$PID" 2>/dev/null || break  # wait returned for a trapped signal: keep waiting
done
# torchrun reports a worker's 75 as a failure: the run's own summary says what happened.
summary=$(python3 - "$RUN/summary.json" "$STARTED" <<'PY' 2>/dev/null || true
import json, os, sys
path, started = sys.argv[1], float(sys.argv[2])
if os.path.exists(path) and os.path.getmtime(path) >= started:
    print("finished" if json.load(open(path))["finished"] else "unfinished")
PY
)
case "$summary" in
  finished) exit 0 ;;
  unfinished) exit 75 ;;
  *) exit "$rc" ;;
esac
