#!/usr/bin/env bash
# Megatron-LM, GPT-2 mode, bandmate's seed architecture (6 layers, 8 heads, 512 wide, 2048
# positions) on data written by `python -m bandmate.training.megatron DATA -o MEGATRON_DATA`
# (the project's own writer of megatron-core's indexed dataset format).
#
# Run inside a container with Megatron-LM checked out at $MEGATRON_LM:
#   MEGATRON_LM=/opt/Megatron-LM DATA=/data/mg OUT=/runs/mg-seed GPUS=16 \
#     bash packaging/megatron/pretrain_seed.sh
# Several nodes: set NNODES, NODE_RANK and MASTER_ADDR on each (or use the SLURM example in
# packaging/training/slurm_train.sbatch with this script as the payload).
#
# The same network as `bandmate train --preset seed`, so that the checkpoint comes back:
#   learned absolute positions, LayerNorm, biases, tied input/output embeddings, and GPT-2's
#   tanh GELU (--openai-gelu; Megatron's default GELU is the exact erf form).
# Tokens: bandmate's mmmtrack ids, NullTokenizer with --vocab-size V from DATA/megatron.json;
#   its end-of-document id is V (explicit in megatron.json as eod_id), one past every real
#   token, never in the data (samples are separate documents; each starts with PIECE_START).
# Attention: --attention-backend (auto picks flash / fused / unfused for the GPU; set
#   ATTENTION_BACKEND=unfused on a V100 if flash is unavailable). --use-flash-attn is gone.
# Precision: --bf16 on A100/H100; on V100 (a DGX-2 has no bf16) set PRECISION=--fp16.
# Checkpoints: --ckpt-format torch, which `bandmate convert` reads:
#   bandmate convert $OUT --codec $DATA -o $OUT-hf && bandmate export $OUT-hf -o models/mg --int8
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
ATTENTION_BACKEND=${ATTENTION_BACKEND:-auto}
MICRO_BATCH=${MICRO_BATCH:-16}
GLOBAL_BATCH=${GLOBAL_BATCH:-$((MICRO_BATCH * GPUS * NNODES))}
TRAIN_ITERS=${TRAIN_ITERS:-20000}
read -r VOCAB EOD < <(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); \
print(m['vocab_size'], m.get('eod_id', m['vocab_size']))" "$DATA/megatron.json")
if [ "$EOD" != "$VOCAB" ]; then
  echo "megatron.json: eod_id $EOD != vocab_size $VOCAB: NullTokenizer's eod would be a real token" >&2
  exit 2
fi

mkdir -p "$OUT"
exec torchrun --nproc-per-node "$GPUS" --nnodes "$NNODES" --node-rank "$NODE_RANK" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
  "$MEGATRON_LM/pretrain_gpt.py" \
  --num-layers 6 --hidden-size 512 --num-attention-heads 8 --ffn-hidden-size 2048 \
  --seq-length 2048 --max-position-embeddings 2048 \
  --position-embedding-type learned_absolute --normalization LayerNorm --openai-gelu \
  --attention-dropout 0.0 --hidden-dropout 0.0 --init-method-std 0.02 \
  --tokenizer-type NullTokenizer --vocab-size "$VOCAB" \
  --train-data-path "$DATA/train_text_document" --valid-data-path "$DATA/val_text_document" \
  --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" \
  --train-iters "$TRAIN_ITERS" --lr 6e-4 --min-lr 6e-5 --lr-decay-style cosine \
  --lr-warmup-iters 200 --weight-decay 0.1 --adam-beta2 0.95 --clip-grad 1.0 \
  $PRECISION --attention-backend "$ATTENTION_BACKEND" \
  --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 \
  --log-interval 10 --log-throughput --eval-interval 500 --eval-iters 20 \
  --save "$OUT" --load "$OUT" --save-interval 1000 --ckpt-format torch \
  --tensorboard-dir "$OUT/tb"
