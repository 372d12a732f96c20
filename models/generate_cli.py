"""Continue a MIDI file, add a track to it, or infill bars (``bandmate generate``).

The output is the input file with every event unchanged plus the new notes, at the file's own
resolution and tempo map (`bandmate.models.midi_merge`); the input itself is never written
and the output is checked before any work and written whole (`bandmate.models.outfile`).
Uses the shipped chorale model unless ``--model`` names another shipped model (``band``) or a
folder from ``bandmate export``.
With ``--variations K`` the K takes are written side by side (OUT-1.mid ...).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bandmate.models.types import Piece

from bandmate.models.config import METER_HELP, METERS
from bandmate.models.registry import MODEL_HELP
from bandmate.models.sampler import DEFAULT_TEMPERATURE, DEFAULT_TOP_P

log = logging.getLogger(__name__)

#: Most bars one --continue writes: 5 s with the shipped model on the project's 2-core CPU
#: (measured: 256 bars, 3824 notes), minutes with a seed-size model; an unbounded request
#: (10,000 bars) once ran 10 minutes. Continue the output again to go further.
MAX_CONTINUE_BARS = 256


def _pitch_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split("-", 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"pitch range looks like 36-60, got {text!r}") from None
    return lo, hi


def _infill_spec(text: str) -> tuple[str, list[int]]:
    try:
        track, bars = text.split(":", 1)
        return track, [int(b) for b in bars.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--infill looks like TRACK:BAR[,BAR...] (0-based, e.g. 3:1,2), got {text!r}"
        ) from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="the MIDI file to continue (never changed)")
    parser.add_argument(
        "-o", "--output", type=Path, required=True,
        help="MIDI file to write: the input plus the new notes (replaced if it exists; "
        "never the input itself)",
    )  # fmt: skip
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument(
        "--continue", dest="cont", type=int, metavar="N",
        help=f"add N bars (1-{MAX_CONTINUE_BARS}) after the end of the file",
    )  # fmt: skip
    task.add_argument(
        "--add-track", metavar="INSTRUMENT", help="add a part over every 4/4 bar: bass, drums, "
        "a General MIDI name ('Electric Bass (finger)') or family (guitar, strings, piano), a "
        "program 0-127, or a model label (BASS); a gm-family model writes the family",
    )  # fmt: skip
    task.add_argument(
        "--infill", type=_infill_spec, metavar="TRACK:BARS",
        help="rewrite bars of one track, as a new track (models trained with fills only)",
    )  # fmt: skip
    parser.add_argument("--model", default=None, help=MODEL_HELP + " (default: default)")
    parser.add_argument(
        "--section", type=int, default=None, metavar="K",
        help="which 4/4 stretch of the file is the prompt, 1 = the first (default: the last "
        "for --continue and --infill, every one for --add-track)",
    )  # fmt: skip
    parser.add_argument(
        "--tracks", default=None,
        help="with --continue: tracks by index (0-based) or name, e.g. 0,3 or soprano,bass",
    )  # fmt: skip
    parser.add_argument("--meter", choices=METERS, default=None, help=METER_HELP)
    parser.add_argument(
        "--force", action="store_true",
        help="use instruments the model never trained on anyway (expect nonsense)",
    )  # fmt: skip
    parser.add_argument("--density", type=int, default=None, help="with --add-track: 0..bins-1")
    parser.add_argument(
        "--temperature", type=float, default=None,
        help="lower = safer, higher = more adventurous (default: the model's own, measured on "
        f"its tuning pieces, else {DEFAULT_TEMPERATURE}; docs/generation.md)",
    )
    parser.add_argument(
        "--top-p", type=float, default=None,
        help=f"sample from the most likely tokens of mass P (default: the model's, else "
        f"{DEFAULT_TOP_P})",
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


@dataclass
class _Run:
    """One stream over one section: the prompt piece, the task and its keyword arguments."""

    section: int
    piece: Piece
    kw: dict
    bars: int  # bars this run writes (progress)
    notes: dict = field(default_factory=dict)  # variation -> result track -> [Note]
    tokens: list = field(default_factory=list)


def _track_words(piece: Piece) -> list[str]:
    return [f"{i} {t.name or t.inst.title()} ({t.inst})" for i, t in enumerate(piece.tracks)]


def pick_tracks(text: str, piece: Piece) -> list[int]:
    """Track indices from "0,3" or "soprano,bass" (names or labels, any case)."""
    from bandmate.models.midi_merge import summarise

    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item.lstrip("-").isdigit():
            i = int(item)
            if not 0 <= i < len(piece.tracks):
                raise ValueError(
                    f"--tracks {item}: the prompt has tracks 0..{len(piece.tracks) - 1}: "
                    f"{summarise(_track_words(piece), 8, ', ')}"
                )
            out.append(i)
            continue
        hits = [i for i, t in enumerate(piece.tracks)
                if item.lower() in (t.name.strip().lower(), t.inst.lower())]  # fmt: skip
        if not hits:
            raise ValueError(
                f"--tracks {item!r}: no prompt track has that name; the tracks are "
                f"{summarise(_track_words(piece), 8, ', ')}"
            )
        out.extend(hits)
    return sorted(set(out))


def run(args: argparse.Namespace) -> int:
    from bandmate.models.generate import GenerationError
    from bandmate.models.midi_io import MidiError
    from bandmate.models.outfile import OutputError, describe_os_error
    from bandmate.models.session import ModelError

    try:
        return _run(args)
    except (GenerationError, ModelError, MidiError, OutputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {describe_os_error(e, args.output)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: one line still, the traceback with -v
        log.debug("unexpected failure", exc_info=True)
        print(
            f"error: unexpected {type(e).__name__}: {e} (a bug in bandmate: run "
            "'bandmate -v generate ...' for the details and report them)",
            file=sys.stderr,
        )
        return 2


def _run(args: argparse.Namespace) -> int:
    from bandmate.models.midi_merge import bar_ranges, open_source
    from bandmate.models.model_checks import (
        check_can_infill,
        read_model_meta,
        unseen_label_message,
    )
    from bandmate.models.outfile import check_output
    from bandmate.models.sampler import SamplingConfig
    from bandmate.models.session import ModelSession

    if args.variations < 1:
        raise ValueError("--variations must be >= 1")
    if args.cont is not None and not 1 <= args.cont <= MAX_CONTINUE_BARS:
        raise ValueError(
            f"--continue takes 1 to {MAX_CONTINUE_BARS} bars per run (a longer run would take "
            "many minutes); to go further, continue the output file again"
        )
    outputs = _outputs(args.output, args.variations)
    for out in outputs:  # before any work: a bad -o must not cost a generation
        check_output(out, [args.input])
    try:
        data = args.input.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {args.input}: {e.strerror or e}") from None
    from bandmate.models.registry import resolve_model

    args.model = resolve_model(args.model)  # a shipped name ("band") -> its folder
    meta = read_model_meta(args.model)
    model_name = str(meta.get("name") or (args.model.name if args.model else "shipped"))
    if args.infill is not None:
        check_can_infill(meta, model_name)
    if args.density is not None and meta and not meta.get("codec", {}).get("density_bins"):
        raise ValueError(f"model {model_name} has no note-density setting: leave out --density")
    given = {k: v for k, v in (("temperature", args.temperature), ("top_p", args.top_p))
             if v is not None}  # fmt: skip
    opts = {"top_k": args.top_k, "seed": args.seed, "pitch_range": args.pitch_range,
            "scale": args.scale, **given}  # fmt: skip
    SamplingConfig(**opts)  # a bad option fails here, before the model loads
    session = ModelSession.load(args.model, precision=args.precision)
    sampling = session.default_sampling(**opts)
    config = session.config if args.meter is None else replace(session.config, meter=args.meter)
    src = open_source(data, config, args.input.name)
    n_sec = len(src.sections)
    if args.section is not None and not 1 <= args.section <= n_sec:
        raise ValueError(f"--section must be 1..{n_sec}: the file has {n_sec} 4/4 stretch(es)")
    seen = set(session.labels_seen)
    runs: list[_Run] = []
    if args.add_track is not None:
        from bandmate.models.generate import resolve_label

        task = "add"
        label = resolve_label(session, args.add_track)
        if seen and label not in seen and not args.force:
            raise ValueError(unseen_label_message(session.name, label, session.labels_seen))
        for k in [args.section - 1] if args.section else range(n_sec):
            piece, _ = src.section_piece(k)
            # The words as typed: the job keeps the GM program asked for (33) under the
            # model's label (the family's 32 for a gm-family model).
            kw = {"instrument": args.add_track, "density": args.density}
            runs.append(_Run(k, piece, kw, piece.bars))
        used = [r.section for r in runs]
    else:
        k = args.section - 1 if args.section else n_sec - 1
        piece, _ = src.section_piece(k)
        used = [k]
        if args.cont is not None:
            task = "continue"
            tracks = _continue_tracks(args, piece, seen, session.name)
            runs.append(_Run(k, piece, {"bars": args.cont, "tracks": tracks}, args.cont))
        else:
            task = "infill"
            which, bars = args.infill
            (track,) = pick_tracks(which, piece)[:1] or [0]
            runs.append(_Run(k, piece, {"track": track, "bars": bars}, len(set(bars))))
    _warn_unseen(src, used, seen)
    alone = src.outside(used)
    kw = runs[0].kw
    if task == "continue":
        where = f"; {kw['bars']} new bar(s) from bar {src.total_bars + 1}"
    elif task == "add":
        where = "; a new track over those bars"
    else:
        where = f"; bars {kw['bars']} of track {kw['track']} rewritten as a new track"
    log.info(
        "%s: prompt = bars %s of %s (4/4, %d track(s)); left alone: %s%s; model %s (%s); "
        "temperature %g, top-p %g%s",
        task, bar_ranges([src.section_bars(k) for k in used]), args.input.name,
        len(runs[0].piece.tracks),
        f"bars {bar_ranges(alone)}, kept as they are" if alone else "nothing",
        where, session.name, session.provider, sampling.temperature, sampling.top_p,
        " (the model's own defaults)" if session.description.sampling and not given else "",
    )  # fmt: skip
    interrupted, done_bars = _generate(session, task, runs, sampling, args.variations)
    if interrupted and not any(r.notes for r in runs):
        print("interrupted before any bar was finished: nothing written", file=sys.stderr)
        return 130
    if interrupted:
        print(f"interrupted: writing the {done_bars} finished bar(s) to "
              f"{', '.join(map(str, outputs[:1]))}", file=sys.stderr)  # fmt: skip
    _write(src, task, runs, outputs, args, session)
    if args.tokens:
        for r in runs:
            for w in r.tokens:
                print(" ".join(session.vocab.decode(w)))
    return 130 if interrupted else 0


def _continue_tracks(
    args: argparse.Namespace, piece: Piece, seen: set[str], model: str
) -> list[int]:
    """The tracks to continue: --tracks, else every track of an instrument the model knows."""
    from bandmate.models.midi_merge import summarise
    from bandmate.models.model_checks import unseen_label_message

    if args.tracks:
        tracks = pick_tracks(args.tracks, piece)
        bad = [i for i in tracks if seen and piece.tracks[i].inst not in seen]
        if bad and not args.force:
            raise ValueError(unseen_label_message(model, piece.tracks[bad[0]].inst, sorted(seen)))
        return tracks
    tracks = [i for i, t in enumerate(piece.tracks) if not seen or t.inst in seen or args.force]
    if not tracks:
        labels = sorted({t.inst for t in piece.tracks})
        raise ValueError(unseen_label_message(model, ", ".join(labels), sorted(seen)))
    skipped = [w for i, w in enumerate(_track_words(piece)) if i not in tracks]
    if skipped:
        log.warning("not continued (instruments the model never trained on; --force to try): "
                    "%s", summarise(skipped))  # fmt: skip
    return tracks


def _warn_unseen(src, used: list[int], seen: set[str]) -> None:
    from bandmate.models.midi_merge import summarise

    if not seen:
        return
    odd: dict[str, None] = {}
    for k in used:
        piece, _ = src.section_piece(k)
        for w, t in zip(_track_words(piece), piece.tracks, strict=True):
            if t.inst not in seen:
                odd[w.split(" ", 1)[1]] = None
    if odd:
        log.warning(
            "the prompt has instrument(s) this model never trained on: %s; it hears them "
            "without having learned them", summarise(list(odd)),
        )  # fmt: skip


def _generate(session, task: str, runs: list[_Run], sampling, variations: int) -> tuple[bool, int]:
    """Run every stream with a progress bar; returns (interrupted, finished bars).

    Ctrl-C stops at once: what each run finished (whole bars) is kept in ``run.notes``.
    """
    from bandmate.models import generate as gen
    from tqdm import tqdm

    streams = {"continue": gen.stream_continue, "add": gen.stream_add_track,
               "infill": gen.stream_infill}  # fmt: skip
    total = sum(r.bars for r in runs)
    done_bars, notes_n = 0, 0
    t0, calls0 = time.perf_counter(), session.calls
    with tqdm(total=total, unit="bar", desc=task, disable=None, file=sys.stderr) as bar:
        for r in runs:
            if variations > 1:
                try:
                    results = gen.generate_batch(session, task, r.piece, variations,
                                                 sampling=sampling, **r.kw)  # fmt: skip
                except KeyboardInterrupt:
                    return True, done_bars
                for v, d in enumerate(results):
                    r.notes[v] = _new_notes(task, r, d.piece)
                    r.tokens += d.stats["tokens"]
                done_bars += r.bars
                bar.update(r.bars)
                continue
            got: dict[int, list] = {}
            last_done = -1
            try:
                for ev in streams[task](session, r.piece, sampling=sampling, **r.kw):
                    if isinstance(ev, gen.NoteEvent):
                        got.setdefault(ev.track, []).append(ev.note)
                        notes_n += 1
                    elif isinstance(ev, gen.BarDone):
                        last_done = ev.bar
                        done_bars += 1
                        tps = (session.calls - calls0) / max(time.perf_counter() - t0, 1e-9)
                        bar.set_postfix_str(f"{notes_n} notes, {tps:.0f} tokens/s", refresh=False)
                        bar.update(1)
                    elif isinstance(ev, gen.Done):
                        r.tokens += ev.stats["tokens"]
            except KeyboardInterrupt:
                kept = {t: [n for n in ns if n.start // 16 <= last_done] for t, ns in got.items()}
                if last_done >= 0:
                    r.notes[0] = _filter(task, r, kept)
                return True, done_bars
            r.notes[0] = _filter(task, r, got)
    return False, done_bars


def _filter(task: str, r: _Run, got: dict) -> dict:
    """Streamed notes as new notes per result track (continue: only after the prompt)."""
    if task == "continue":
        return {t: [n for n in ns if n.start >= r.piece.steps] for t, ns in got.items()}
    if task == "infill":
        return {r.kw["track"]: got.get(r.kw["track"], [])}
    return {t: ns for t, ns in got.items() if t >= len(r.piece.tracks)}


def _new_notes(task: str, r: _Run, result) -> dict:
    from bandmate.models.midi_merge import new_notes_of

    if task == "infill":
        t, bars = r.kw["track"], set(r.kw["bars"])
        return {t: [n for n in result.tracks[t].notes if n.start // 16 in bars]}
    return new_notes_of(r.piece, result, task)


def _write(src, task: str, runs: list[_Run], outputs: list[Path], args, session) -> None:
    from bandmate.models import midi_merge as M
    from bandmate.models.outfile import write_atomic

    for v, out in enumerate(outputs):
        if not any(v in r.notes for r in runs):
            continue
        meter_at = None
        if task == "continue":
            r = runs[0]
            parts, meter_at = M.continuation(src, r.section, r.notes.get(v, {}), r.piece.steps)
        elif task == "add":
            by_sec = {r.section: next(iter(r.notes[v].values()), []) for r in runs if v in r.notes}
            from bandmate.models.generate import resolve_instrument

            label, program = resolve_instrument(session, runs[0].kw["instrument"])
            name = f"GM {program}" if label.isdigit() else label.title()
            parts = [M.added_track(src, by_sec, f"{name} (bandmate)", program, label == "DRUMS")]
        else:
            r = runs[0]
            (t, ns), = r.notes[v].items()
            piece, part_of = src.section_piece(r.section)
            p = src.parts[part_of[t]]
            parts = [M.added_track(src, {r.section: ns}, f"{p.name or piece.tracks[t].inst} "
                                   "(infill)", p.program, p.is_drum)]  # fmt: skip
        write_atomic(out, M.merge(src, parts, meter_at))
        n = sum(len(p.notes) for p in parts)
        log.info("wrote %s: the input unchanged plus %d new note(s)%s", out, n,
                 f" in {len(parts)} track(s)" if task == "continue" else " in a new track")
