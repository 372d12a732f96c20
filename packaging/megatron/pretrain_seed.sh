#!/usr/bin/env bash
# Megatron-LM, GPT-2 mode, bandmate's seed architecture (6 layers, 8 heads, 512 wide, 2048
# positions) on data written by `python -m bandmate.training.megatron DATA -o MEGATRON_DATA`.
#
# Run inside an NGC PyTorch container with Megatron-LM checked out at $MEGATRON_LM:
#   MEGATRON_LM=/opt/Megatron-LM DATA=/data/mg OUT=/runs/mg-seed GPUS=16 \
#     bash packaging/megatron/pretrain_seed.sh
# Several nodes: set NNODES, NODE_RANK and MASTER_ADDR on each (or use the SLURM example in
# packaging/training/slurm_train.sbatch with this script as the payload).
#
# Precision: --bf16 on A100/H100; on V100 (a DGX-2 has no bf16) set PRECISION=--fp16.
# The tokens are bandmate's mmmtrack ids: NullTokenizer with the vocabulary size from
# MEGATRON_DATA/megatron.json. Position embeddings are learned (GPT-2), LayerNorm, GELU,
# tied input/output embeddings: the same network as `bandmate train --preset seed`.
set -euo pipefail

: "${MEGATRON_LM:?set MEGATRON_LM to a Megatron-LM checkout}"
: "${DATA:?set DATA to the output folder of python -m bandmate.training.megatron}"
: "${OUT:?set OUT to a run folder}"
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
PRECISION=${PRECISION:---bf16}
MICRO_BATCH=${MICRO_BATCH:-16}
GLOBAL_BATCH=${GLOBAL_BATCH:-$((MICRO_BATCH * GPUS * NNODES))}
TRAIN_ITERS=${TRAIN_ITERS:-20000}
VOCAB=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$DATA/megatron.json")

mkdir -p "$OUT"
exec torchrun --nproc-per-node "$GPUS" --nnodes "$NNODES" --node-rank "$NODE_RANK" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
  "$MEGATRON_LM/pretrain_gpt.py" \
  --num-layers 6 --hidden-size 512 --num-attention-heads 8 \
  --seq-length 2048 --max-position-embeddings 2048 \
  --position-embedding-type learned_absolute --normalization LayerNorm \
  --attention-dropout 0.0 --hidden-dropout 0.0 \
  --tokenizer-type NullTokenizer --vocab-size "$VOCAB" \
  --train-data-path "$DATA/train_text_document" --valid-data-path "$DATA/val_text_document" \
  --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" \
  --train-iters "$TRAIN_ITERS" --lr 6e-4 --min-lr 6e-5 --lr-decay-style cosine \
  --lr-warmup-iters 200 --weight-decay 0.1 --adam-beta2 0.95 --clip-grad 1.0 \
  $PRECISION --use-flash-attn \
  --log-interval 10 --log-throughput --eval-interval 500 --eval-iters 20 \
  --save "$OUT" --load "$OUT" --save-interval 1000 \
  --tensorboard-dir "$OUT/tb"
