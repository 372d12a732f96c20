"""Turn MIDI folders into mmmtrack token shards for training (resumable, all cores).

Example: bandmate prepare ../shared/data/jsfakes -o data/ --voices SOPRANO,ALTO,TENOR,BASS
"""

from __future__ import annotations

import argparse
import logging
import sys

from bandmate.models.config import BAR_CHOICES, LABEL_SCHEMES, METERS

log = logging.getLogger("bandmate.prepare")


def _pair(text: str, sep: str, what: str) -> tuple[int, int]:
    try:
        a, b = text.split(sep)
        return int(a), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{what}: expected two integers as A{sep}B, got {text!r}"
        ) from None


def _transpose(text: str) -> tuple[int, int]:
    return _pair(text, ":", "--transpose")


def _shard(text: str) -> tuple[int, int]:
    return _pair(text, "/", "--shard")


def _meter(text: str) -> str:
    words = [w.strip() for w in text.split(",")]
    bad = [w for w in words if w not in METERS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"--meter: each value must be one of {', '.join(METERS)}, got {bad[0]!r}"
        )
    return ",".join(words)


def _words(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split(",") if w.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--density-edges: numbers separated by commas: {text!r}"
        ) from None


def read_digest_list(path: str) -> tuple[str, ...]:
    """The digests of a held-out list: the first word of each line, comments and blanks skipped.

    Content digests rather than paths, so a held-out file stays out under any name or folder.
    """
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            word = line.split("#", 1)[0].split()
            if word:
                out.append(word[0])
    if not out:
        raise ValueError(f"{path}: no digests in the --exclude list")
    return tuple(out)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SRC", help="MIDI files or folders")
    parser.add_argument("-o", "--out", required=True, help="output folder (created)")
    parser.add_argument("--bars", type=int, choices=BAR_CHOICES, default=4, help="bars per sample")
    parser.add_argument(
        "--hop",
        type=int,
        default=0,
        help="bars between window starts (0 = bars/4: every bar in ~4 samples; "
        "--hop equal to --bars: no overlap)",
    )
    parser.add_argument(
        "--transpose",
        type=_transpose,
        default="-5:6",
        metavar="LO:HI",
        help="train-only transposition augmentation in semitones (0:0 = none); "
        "write a negative LO with =, as in --transpose=-5:6",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of files held out (by content)"
    )
    parser.add_argument(
        "--density-bins", type=int, default=4, help="DENSITY buckets per track (0 = none)"
    )
    parser.add_argument(
        "--density-edges",
        type=_floats,
        default="",
        metavar="E1,E2,..",
        help="fixed bucket edges (density-bins - 1 values) instead of training quantiles; "
        "give every --shard part the same edges",
    )
    parser.add_argument(
        "--voices",
        type=_words,
        default="",
        metavar="L1,L2,..",
        help="label tracks by order (the chorales: SOPRANO,ALTO,TENOR,BASS)",
    )
    parser.add_argument(
        "--meter",
        type=_meter,
        default="strict",
        metavar="METER[,METER..]",
        help="strict: only bars in 4/4; assume-4/4: ignore time signatures; or one per SRC "
        "separated by commas (e.g. strict,assume-4/4 for a source whose signatures lie)",
    )
    parser.add_argument(
        "--labels",
        choices=LABEL_SCHEMES,
        default="program",
        help="INST labels: program (voice names from --voices or track names, else the GM "
        "program: the chorale models) or gm-family (DRUMS, else the GM family: band material); "
        "docs/codec.md",
    )
    parser.add_argument(
        "--split-by",
        choices=("content", "piece"),
        default="content",
        help="train/val split by file content, or by piece (the file name without a leading "
        "10-hex-digit revision prefix: all revisions of a piece on one side)",
    )
    parser.add_argument(
        "--exclude",
        metavar="LIST",
        default="",
        help="leave out every file whose content is listed in LIST (one blake2b-16 hex digest "
        "per line, first word; '#' starts a comment), e.g. a benchmark's held-out set "
        "(bench/holdout/jsfakes.txt); the digests are recorded in the manifest",
    )
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0 = every core)")
    parser.add_argument(
        "--shard", type=_shard, default="0/1", metavar="I/N", help="take part I of N (0-based)"
    )
    parser.add_argument(
        "--format", choices=("bin", "text"), default="bin", help="uint16 shards or text lines"
    )
    parser.add_argument(
        "--chunk-files", type=int, default=0, help="files per work unit (0 = automatic)"
    )
    parser.add_argument(
        "--file-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="skip a file that takes longer than this to read, as damaged: a real file takes "
        "well under a second (0 = no limit; the unit it was in is re-run file by file, so a "
        "stuck file costs twice this)",
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="progress bar (auto: only on a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    from bandmate.training.prepare import PrepareConfig, PrepareError, prepare

    try:
        cfg = PrepareConfig(
            sources=tuple(args.sources),
            bars=args.bars,
            hop=args.hop,
            transpose=args.transpose,
            val_fraction=args.val_fraction,
            density_bins=args.density_bins,
            density_edges=args.density_edges,
            voices=args.voices,
            meter=args.meter,
            label_scheme=args.labels,
            split_by=args.split_by,
            shard=args.shard,
            format=args.format,
            chunk_files=args.chunk_files,
            exclude=read_digest_list(args.exclude) if args.exclude else (),
        )
    except (ValueError, OSError) as e:
        print(f"bandmate prepare: {e}", file=sys.stderr)
        return 2
    if args.workers < 0:
        print("bandmate prepare: --workers must be >= 0 (0 = every core)", file=sys.stderr)
        return 2
    if args.file_timeout < 0:
        print("bandmate prepare: --file-timeout must be >= 0 (0 = no limit)", file=sys.stderr)
        return 2
    progress = {"auto": None, "on": True, "off": False}[args.progress]
    try:
        prepare(
            cfg,
            args.out,
            workers=args.workers or None,
            progress=progress,
            file_timeout=args.file_timeout or None,
        )
    except PrepareError as e:
        print(f"bandmate prepare: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions: the finished work units are kept
        print(
            f"bandmate prepare: {e}. Fix this, then run the same command again: "
            "it resumes where it stopped.",
            file=sys.stderr,
        )
        return 1
    return 0
