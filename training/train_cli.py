"""Train a GPT-2 music model on prepared shards (one CPU, one GPU, or torchrun on many).

Examples:
  bandmate train data/ -o runs/tiny --preset tiny --max-steps 200
  torchrun --nproc-per-node 8 -m bandmate train data/ -o runs/seed --preset seed
  bandmate train data/ -o runs/seed --resume            (continue a stopped run)
  bandmate train data/ -o runs/seed --auto-resume       (continue it if it exists, else start)

Exit status: 0 when the run finished (all its steps), 75 (EX_TEMPFAIL) when it stopped
unfinished after saving a checkpoint (SIGTERM, SIGUSR1, Ctrl-C, --time-limit-min): run the same
command with --resume (or --auto-resume) to continue; 2 for a usage or run-folder error.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields

from bandmate.training.train import RunFolderError, TrainConfig, train

log = logging.getLogger(__name__)

#: sysexits.h EX_TEMPFAIL: "try again later" -- a stopped run that resumes with --resume.
EXIT_UNFINISHED = 75


class _Given(argparse.Action):
    """Store a value and remember that the user gave the flag: on --resume only given
    settings apply, so a flag set to its default value still counts."""

    def __init__(self, option_strings: list[str], dest: str, flag: bool = False, **kw) -> None:
        if flag:
            kw.update(nargs=0, default=False)
        self.flag = flag
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, True if self.flag else values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="folder written by `bandmate prepare`")
    parser.add_argument("-o", "--out", required=True, help="run folder (checkpoints, logs)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--auto-resume",
        action="store_true",
        help="continue the run in --out if there is one, else start it (decided by rank 0; "
        "for launchers that restart a job)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = (
            getattr(defaults, f.name)
            if f.name not in ("n_layer", "n_head", "n_embd", "n_positions", "batch_size")
            else 0
        )
        if isinstance(default, bool):
            parser.add_argument(flag, action=_Given, flag=True, help=help_text)
        else:
            kw = {"choices": ("tiny", "small", "seed")} if f.name == "preset" else {}
            parser.add_argument(flag, action=_Given, type=type(default), default=default,
                                help=help_text, **kw)


def run(args: argparse.Namespace) -> int:
    kw = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    try:
        cfg = TrainConfig(**kw)
        summary = train(
            args.data,
            args.out,
            cfg,
            resume="auto" if args.auto_resume else args.resume,
            device=args.device,
            progress=not args.no_progress,
            given=frozenset(getattr(args, "given", ())),
        )
    except (ValueError, FileNotFoundError, FileExistsError, RunFolderError) as e:
        log.error("%s", e)
        return 2
    return 0 if summary["finished"] else EXIT_UNFINISHED
