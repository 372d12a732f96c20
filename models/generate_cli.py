"""Continue a MIDI file, add a track to it, or infill bars (``bandmate generate``).

Uses the shipped chorale model unless ``--model`` names another shipped model (``band``) or a
folder from ``bandmate export``.
With ``--variations K`` the K takes are written side by side in one batch (OUT-1.mid ...).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bandmate.models.registry import MODEL_HELP

log = logging.getLogger(__name__)


def _pitch_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split("-", 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"pitch range looks like 36-60, got {text!r}") from None
    return lo, hi


def _infill_spec(text: str) -> tuple[int, list[int]]:
    try:
        track, bars = text.split(":", 1)
        return int(track), [int(b) for b in bars.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--infill looks like TRACK:BAR[,BAR...] (0-based, e.g. 3:1,2), got {text!r}"
        ) from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="prompt MIDI file (its first 4/4 stretch)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="MIDI file to write")
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--continue", dest="cont", type=int, metavar="N", help="add N bars")
    task.add_argument(
        "--add-track",
        metavar="INSTRUMENT",
        help="add a part: bass, drums, a General MIDI name ('Electric Bass (finger)') or family "
        "(guitar, strings, piano), a program 0-127, or a model label (BASS); a gm-family model "
        "writes the family",
    )
    task.add_argument(
        "--infill", type=_infill_spec, metavar="TRACK:BARS", help="rewrite bars of one track"
    )
    parser.add_argument("--model", default=None, help=MODEL_HELP + " (default: default)")
    parser.add_argument("--tracks", default=None, help="with --continue: track indices, e.g. 0,3")
    parser.add_argument("--density", type=int, default=None, help="with --add-track: 0..bins-1")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="lower = safer, higher = more adventurous"
    )
    parser.add_argument(
        "--top-p", type=float, default=0.95, help="sample from the most likely tokens of mass P"
    )
    parser.add_argument("--top-k", type=int, default=0, help="only the K most likely (0 = off)")
    parser.add_argument("--seed", type=int, default=None, help="same seed, same notes")
    parser.add_argument("--variations", type=int, default=1, help="takes to write at once")
    parser.add_argument("--scale", default=None, help="keep new notes in key, e.g. 'D minor'")
    parser.add_argument("--pitch-range", type=_pitch_range, default=None, help="e.g. 36-60")
    parser.add_argument("--tokens", action="store_true", help="print the generated tokens")
    parser.add_argument(
        "--precision", default="default", choices=("default", "fp32", "int8", "fp16")
    )


def _outputs(out: Path, k: int) -> list[Path]:
    if k == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix or '.mid'}") for i in range(k)]


def run(args: argparse.Namespace) -> int:
    from bandmate.models import generate as gen
    from bandmate.models.midi_io import MidiError, read_midi, write_midi
    from bandmate.models.sampler import SamplingConfig
    from bandmate.models.session import ModelError, ModelSession
    from tqdm import tqdm

    if args.variations < 1:
        print("error: --variations must be >= 1", file=sys.stderr)
        return 2
    try:
        sampling = SamplingConfig(
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            pitch_range=args.pitch_range,
            scale=args.scale,
        )
        session = ModelSession.load(args.model, precision=args.precision)
        prompt = read_midi(args.input, session.config)
        if args.cont is not None:
            tracks = [int(x) for x in args.tracks.split(",")] if args.tracks else None
            kw = {"bars": args.cont, "tracks": tracks}
            task, total = "continue", args.cont
        elif args.add_track is not None:
            kw = {"instrument": args.add_track, "density": args.density}
            task, total = "add", prompt.bars
        else:
            track, bars = args.infill
            kw = {"track": track, "bars": bars}
            task, total = "infill", len(bars)
        log.info(
            "%s: %s, %d track(s), %d bar(s), model %s (%s)",
            task, args.input.name, len(prompt.tracks), prompt.bars, session.name, session.provider,
        )
        if args.variations == 1:
            streams = {
                "continue": gen.stream_continue,
                "add": gen.stream_add_track,
                "infill": gen.stream_infill,
            }
            done = None
            with tqdm(total=total, unit="bar", desc=task, disable=None) as bar:
                for ev in streams[task](session, prompt, sampling=sampling, **kw):
                    if isinstance(ev, gen.BarDone):
                        bar.update(1)
                    elif isinstance(ev, gen.Done):
                        done = ev
            results = [done]
        else:
            results = gen.generate_batch(
                session, task, prompt, args.variations, sampling=sampling, **kw
            )
    except (gen.GenerationError, ModelError, MidiError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, done in zip(_outputs(args.output, len(results)), results, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_midi(done.piece, path)
        st = done.stats
        log.info(
            "wrote %s: %d bar(s), %d note(s); %d tokens in %.2f s (%.1f ms/token)%s",
            path, done.piece.bars, sum(len(t.notes) for t in done.piece.tracks),
            st["sampled_tokens"], st["seconds"], st["ms_per_token"],
            f"; prompt cut: {'; '.join(st['cut'])}" if st["cut"] else "",
        )
        if args.tokens:
            for w in st["tokens"]:
                print(" ".join(session.vocab.decode(w)))
    return 0
