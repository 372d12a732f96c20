"""Generation tasks over a Piece: continue, add a track, infill; streaming and batched.

How a continuation is laid out (docs/generation.md has the measurements): the model was
trained on samples of ``W = config.bars`` bars, tracks one after another. New bars are
written one bar at a time with a sliding window: to write bar ``b``, the context is the
``W - 1`` bars before it for every track, each track followed by its new bar, so

    PIECE_START  [T0 header, bars b-3..b-1, NEW bar b]  [T1 header, bars b-3..b-1, NEW bar b] ...

Every new bar of a track therefore sees three bars of all tracks and the new bar of the
tracks before it; tracks condition on each other inside the bar, and the bar is complete
(`BarDone`) as soon as the last track's new bar is closed, so the bridge can play bar 1 while
bar 2 is written. Each window is a fresh sequence: its prompt is pre-filled in one call and
the known bars after the first sampled bar are fed as one chunk with the next token.

An added track is the last track of each window (its earlier bars forced from what it wrote
so far); infill (models trained with fills only) marks the bars FILL_IN and writes them after
the tracks.

Batch rows: `generate_batch` runs several variations at once, one KV cache row each; every
row has its own grammar state and random generator seeded from (seed, row).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
from bandmate.models.generate_jobs import (
    MIN_ROOM_PER_BAR,
    AddJob,
    Bar,
    Choose,
    ContinueJob,
    Emit,
    Force,
    InfillJob,
    Job,
    Row,
    pitch_filter,
    resolve_instrument,
    resolve_label,
)
from bandmate.models.generate_types import BarDone, Done, GenerationError, NoteEvent
from bandmate.models.grammar import BarGrammar
from bandmate.models.sampler import SamplingConfig, row_rng, sample
from bandmate.models.session import ModelSession
from bandmate.models.types import STEPS_PER_BAR, Note, Piece

__all__ = [
    "MIN_ROOM_PER_BAR",
    "BarDone",
    "Done",
    "GenerationError",
    "NoteEvent",
    "SamplingConfig",
    "add_track",
    "continue_piece",
    "generate_batch",
    "infill",
    "resolve_instrument",
    "resolve_label",
    "stream_add_track",
    "stream_continue",
    "stream_infill",
]

log = logging.getLogger(__name__)
S = STEPS_PER_BAR


# ------------------------------------------------------------------------------ the loop


def _advance(job: Job, row: Row, out: list[tuple[int, object]]) -> None:
    """Move ``row`` through forced actions up to its next sampling action (or the end)."""
    while True:
        a = row.action
        if a is None or isinstance(a, Choose):
            return
        if isinstance(a, Force):
            row.pending.extend(a.ids)
        elif isinstance(a, Emit):
            out.append((row.index, a.event))
        elif isinstance(a, Bar):
            row.pending.append(a.start)
            g = row.grammar
            label = job.result.tracks[a.track].inst
            allowed = pitch_filter(job.session, job.sampling, label)
            g.reset()
            g.end_token = a.end
            g._on_ok = np.ones(128, bool) if allowed is None else allowed
            g.must_play = job.must_play(row, a)
            _auto(job, row, a, out)
            if not g.done:
                return
        row.ip += 1


def _auto(job: Job, row: Row, a: Bar, out: list[tuple[int, object]]) -> None:
    """Feed tokens the grammar leaves no choice about (closing NOTE_OFFs at step 16...)."""
    g = row.grammar
    while not g.done:
        idx = np.flatnonzero(g.mask())
        if len(idx) != 1:
            return
        _take(row, a, int(idx[0]), out)


def _take(row: Row, a: Bar, tok: int, out: list[tuple[int, object]]) -> None:
    closed = row.grammar.advance(tok)
    row.pending.append(tok)
    if closed is not None:
        p, s, e = closed
        note = Note(a.bar * S + s, p, a.bar * S + e)
        row.notes.setdefault(a.track, []).append(note)
        out.append((row.index, NoteEvent(a.track, note)))


def _run(
    job: Job,
    rows: int,
    sampling: SamplingConfig,
    cancel: threading.Event | None,
) -> Iterator[tuple[int, object]]:
    """Drive every window of ``job`` over ``rows`` batch rows; yields (row, event)."""
    s = job.session
    t0 = time.perf_counter()
    rs = [
        Row(
            r,
            row_rng(sampling.seed, r),
            BarGrammar(s.vocab.size, max_tokens=sampling.max_bar_tokens),
            {},
        )
        for r in range(rows)
    ]
    calls = 0
    first_note_s: float | None = None
    for window in job.windows:
        for row in rs:
            row.start(job.plan(row, window))
            row.grammar.reset()
            row.grammar.n_tokens = 0
        out: list[tuple[int, object]] = []
        for row in rs:
            _advance(job, row, out)
        yield from out
        # Every call feeds the same number of real tokens to every unfinished row (the
        # shortest pending run), so no slot is padding except for finished rows: the cache
        # never holds more slots than the longest row has positions.
        cache = s.new_cache(rows, capacity=s.n_positions)
        while any(r.action is not None for r in rs):
            if cancel is not None and cancel.is_set():
                log.info("generation cancelled")
                return
            active = [r for r in rs if r.action is not None]
            n = min(len(r.pending) for r in active)
            chunks = [r.pending[:n] if r.action is not None else [] for r in rs]
            logits = cache.feed(chunks)
            calls += 1
            out = []
            for r in active:
                r.tokens.extend(r.pending[:n])
                del r.pending[:n]
                if r.pending:  # more forced tokens to feed before this row samples
                    continue
                a = r.action
                lg = logits[r.index]
                if isinstance(a, Choose):
                    m = np.zeros(s.vocab.size, bool)
                    m[list(a.ids)] = True
                    tok = sample(lg, m, sampling, r.rng)
                    r.choices[a.key] = tok
                    r.pending.append(tok)
                    r.sampled += 1
                    r.ip += 1
                    _advance(job, r, out)
                    continue
                assert isinstance(a, Bar)
                g = r.grammar
                left = s.n_positions - int(cache.pos[r.index]) - r.suffix[r.ip]
                g.closing = left <= int(g.sounding.sum()) + 4
                tok = sample(lg, g.mask(), sampling, r.rng)
                r.sampled += 1
                _take(r, a, tok, out)
                _auto(job, r, a, out)
                if g.done:
                    r.ip += 1
                    _advance(job, r, out)
            if first_note_s is None and any(isinstance(e, NoteEvent) for _, e in out):
                first_note_s = time.perf_counter() - t0
            yield from out
        for r in rs:
            r.tokens.extend(r.pending)
            r.pending = []
            r.windows.append(r.tokens)
        del cache  # its buffers go back to the session's pool for the next window
    seconds = time.perf_counter() - t0
    sampled = sum(r.sampled for r in rs)
    for r in rs:
        piece = job.row_piece(r)
        stats = {
            "row": r.index,
            "sampled_tokens": r.sampled,
            "model_calls": calls,
            "windows": len(job.windows),
            "seconds": seconds,
            "ms_per_token": 1000 * seconds / max(sampled, 1),
            "first_note_s": first_note_s,
            "cut": list(job.cuts),
            "provider": s.provider,
            "model": s.name,
            "tokens": [list(map(int, w)) for w in r.windows],
        }
        yield r.index, Done(piece, stats)


def _stream(job: Job, sampling: SamplingConfig, cancel: threading.Event | None) -> Iterator:
    for _, ev in _run(job, 1, sampling, cancel):
        yield ev


# ------------------------------------------------------------------------------ public API


def stream_continue(
    session: ModelSession,
    piece: Piece,
    bars: int,
    tracks: Sequence[int] | None = None,
    sampling: SamplingConfig | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[NoteEvent | BarDone | Done]:
    """Extend all (or the chosen) tracks of ``piece`` by ``bars`` bars, note by note.

    Yields NoteEvent as each note closes, BarDone per finished bar, then one Done with the
    whole result (the prompt's bars plus the new ones). When ``cancel`` is set the stream ends
    before the next model call, without Done.
    """
    job = ContinueJob(session, piece, bars, tracks, sampling or SamplingConfig())
    return _stream(job, job.sampling, cancel)


def stream_add_track(
    session: ModelSession,
    piece: Piece,
    instrument: str,
    density: int | None = None,
    sampling: SamplingConfig | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[NoteEvent | BarDone | Done]:
    """Write a new part (appended as the last track) over the piece's bars, note by note.

    ``instrument`` is an INST label ("BASS", "33", "DRUMS") or "bass" (the model's bass);
    ``density`` (0..bins-1) asks for a sparser or busier part; None lets the model choose.
    """
    job = AddJob(session, piece, instrument, density, sampling or SamplingConfig())
    return _stream(job, job.sampling, cancel)


def stream_infill(
    session: ModelSession,
    piece: Piece,
    track: int,
    bars: Sequence[int],
    sampling: SamplingConfig | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[NoteEvent | BarDone | Done]:
    """Rewrite ``bars`` of one track given everything around them (models with fills)."""
    job = InfillJob(session, piece, track, bars, sampling or SamplingConfig())
    return _stream(job, job.sampling, cancel)


def _last(events: Iterator) -> Piece:
    done = None
    for ev in events:
        if isinstance(ev, Done):
            done = ev
    if done is None:
        raise GenerationError("generation was cancelled")
    return done.piece


def continue_piece(
    session: ModelSession,
    piece: Piece,
    bars: int,
    tracks: Sequence[int] | None = None,
    sampling: SamplingConfig | None = None,
    cancel: threading.Event | None = None,
) -> Piece:
    """`stream_continue` to the end: the prompt plus ``bars`` new bars."""
    return _last(stream_continue(session, piece, bars, tracks, sampling, cancel))


def add_track(
    session: ModelSession,
    piece: Piece,
    instrument: str,
    density: int | None = None,
    sampling: SamplingConfig | None = None,
    cancel: threading.Event | None = None,
) -> Piece:
    """`stream_add_track` to the end: the prompt plus one new track."""
    return _last(stream_add_track(session, piece, instrument, density, sampling, cancel))


def infill(
    session: ModelSession,
    piece: Piece,
    track: int,
    bars: Sequence[int],
    sampling: SamplingConfig | None = None,
    cancel: threading.Event | None = None,
) -> Piece:
    """`stream_infill` to the end: the piece with those bars of ``track`` rewritten."""
    return _last(stream_infill(session, piece, track, bars, sampling, cancel))


def generate_batch(
    session: ModelSession,
    task: str,
    piece: Piece,
    rows: int,
    sampling: SamplingConfig | None = None,
    cancel: threading.Event | None = None,
    **kw: object,
) -> list[Done]:
    """``rows`` variations of one task at once (one KV-cache row each): task is
    "continue" (bars=, tracks=), "add" (instrument=, density=) or "infill" (track=, bars=)."""
    sampling = sampling or SamplingConfig()
    if rows < 1:
        raise GenerationError(f"rows must be >= 1, got {rows}")
    if task == "continue":
        job: Job = ContinueJob(session, piece, int(kw["bars"]), kw.get("tracks"), sampling)  # type: ignore[arg-type]
    elif task == "add":
        job = AddJob(session, piece, str(kw["instrument"]), kw.get("density"), sampling)  # type: ignore[arg-type]
    elif task == "infill":
        job = InfillJob(session, piece, int(kw["track"]), kw["bars"], sampling)  # type: ignore[arg-type]
    else:
        raise GenerationError(f"task must be continue, add or infill, got {task!r}")
    results = [ev for _, ev in _run(job, rows, sampling, cancel) if isinstance(ev, Done)]
    if len(results) != rows:
        raise GenerationError("generation was cancelled")
    return results
