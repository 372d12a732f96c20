"""Turn a Megatron-LM GPT checkpoint of bandmate's architecture into a Hugging Face model folder.

Examples:
  bandmate convert /runs/mg-seed --codec /data/mg -o /runs/mg-seed-hf
  bandmate export /runs/mg-seed-hf -o /models/mg-seed --int8      (then, as for any run)

The checkpoint is a Megatron-LM save folder written with --ckpt-format torch (or one
iter_NNNNNNN folder of it); --codec is the data it was trained on (the folder written by
`python -m bandmate.training.megatron`, a `bandmate prepare` folder, or a codec.json).
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        help="folder written by packaging/megatron/to_safetensors.py (model.safetensors + "
        "megatron_args.json), or a .safetensors state dict",
    )
    parser.add_argument("--codec", required=True, help="data folder or codec.json of the run")
    parser.add_argument("-o", "--out", required=True, help="Hugging Face model folder to write")
    parser.add_argument("--n-head", type=int, default=0, help="heads (if no args saved)")


def run(args: argparse.Namespace) -> int:
    from bandmate.training.megatron_convert import convert_megatron, load_codec

    try:
        codec = load_codec(args.codec)
        convert_megatron(args.checkpoint, codec, args.out, args.n_head or None)
    except (ValueError, FileNotFoundError, KeyError) as e:
        log.error("%s", e)
        return 2
    return 0
