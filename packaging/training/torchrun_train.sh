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
set -euo pipefail
DATA=${1:?usage: torchrun_train.sh DATA RUN [bandmate train args]}
RUN=${2:?usage: torchrun_train.sh DATA RUN [bandmate train args]}
shift 2
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RESUME=()
[ -f "$RUN/checkpoints/latest" ] && RESUME=(--resume)   # restarts continue the run

exec torchrun --nproc-per-node "$GPUS" --nnodes "$NNODES" --node-rank "$NODE_RANK" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
  -m bandmate train "$DATA" -o "$RUN" --preset "${PRESET:-seed}" --compile --no-progress \
  "${RESUME[@]}" "$@"
