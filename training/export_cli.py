"""Export a trained run to an ONNX model folder (model.onnx, tokenizer.json, bandmate.json).

Examples:
  bandmate export runs/small -o models/chorales --int8
  bandmate export runs/seed -o models/seed --int8 --fp16 --no-fp32
  bandmate export runs/seed -o models/seed --int8 --no-fp32 --no-kv  (contract graph only)
  bandmate export runs/seed/checkpoints/step-0020000 -o models/seed-20k --int8
  bandmate export runs/band -o models/band --int8 --no-fp32 --average 4  (mean of 4 checkpoints)

Every export ends with a parity check against PyTorch (fp32 logits within --tolerance, with
and without past keys/values); a failing check exits with status 3 and keeps nothing.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bandmate.training.export import ExportConfig, ParityError, export_run

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run",
        help="run folder written by `bandmate train` (its latest checkpoint), one of its "
        "checkpoint folders, or a Hugging Face model folder with codec.json",
    )
    parser.add_argument("-o", "--out", required=True, help="model folder to write")
    parser.add_argument("--int8", action="store_true", help="also write model.int8.onnx")
    parser.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (GPU)")
    parser.add_argument("--no-fp32", action="store_true", help="drop model.onnx (needs --int8)")
    parser.add_argument(
        "--kv",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write the in-place decode graph (model.kv*.onnx: the CPU runtime's fast path)",
    )
    parser.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: latest)")
    parser.add_argument(
        "--average",
        type=int,
        default=1,
        metavar="K",
        help="export the mean of the weights of the K newest checkpoints up to the chosen one "
        "(checkpoint averaging: smoother than one checkpoint; the run must have kept K, see "
        "`bandmate train --keep-checkpoints`) (default: 1, that checkpoint alone)",
    )
    parser.add_argument("--name", default="", help="model name (default: the folder name)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max |logit diff| fp32")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = ExportConfig(
            fp32=not args.no_fp32,
            int8=args.int8,
            fp16=args.fp16,
            kv=args.kv,
            opset=args.opset,
            tolerance=args.tolerance,
            name=args.name,
        )
        meta = export_run(
            args.run,
            args.out,
            cfg,
            Path(args.checkpoint) if args.checkpoint else None,
            average=args.average,
        )
    except (ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    except ParityError as e:
        log.error("%s", e)
        return 3
    ex = meta["export"]
    log.info(
        "wrote %s: %s, parity max |logit diff| %.2e%s",
        args.out,
        ", ".join(v for k, v in meta["onnx"].items() if k != "default" and v),
        ex["parity"]["max_abs_logit_diff"],
        f", int8 top-1 match {ex['int8']['top1_match']:.3f} KL {ex['int8']['mean_kl']:.2e}"
        if "int8" in ex
        else "",
    )
    return 0
