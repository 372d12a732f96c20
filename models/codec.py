"""The mmmtrack codec: notes <-> token ids (docs/mmmtrack.md is the contract).

Encoding is vectorised over every note of every track of a segment at once, because corpus
preparation encodes hundreds of thousands of files; windows of bars are then slices of a
per-track token array (`TrackBars`). Decoding is a tolerant state machine that never raises,
because it reads model output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from bandmate.models.config import CodecConfig
from bandmate.models.midi_io import SegmentArrays, TrackArrays
from bandmate.models.types import DRUM_CHANNEL, STEPS_PER_BAR, Note, Piece, Track
from bandmate.models.vocab import (
    BAR_END,
    BAR_START,
    DENSITY0,
    FILL_END,
    FILL_IN,
    FILL_START,
    NOTE_OFF0,
    NOTE_ON0,
    PAD,
    PIECE_START,
    TIME_DELTA0,
    TRACK_END,
    TRACK_START,
    UNK,
    Vocab,
)

S = STEPS_PER_BAR


@dataclass(frozen=True)
class TrackBars:
    """Every bar of every track of a segment, tokenised once.

    Bar b of track t is ``ids[offsets[t, b]:offsets[t, b + 1]]`` (``BAR_START ... BAR_END``), so
    a window of bars is one slice; ``onsets[t, b]`` counts that bar's NOTE_ONs (for DENSITY).
    """

    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64, (tracks, bars + 1)
    onsets: np.ndarray  # int64, (tracks, bars)

    def window(self, track: int, start_bar: int, n_bars: int) -> np.ndarray:
        o = self.offsets[track]
        return self.ids[o[start_bar] : o[start_bar + n_bars]]


def encode_bars(
    trk: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    pitch: np.ndarray,
    n_tracks: int,
    n_bars: int,
) -> TrackBars:
    """Tokenise notes (track index, start, end, pitch; steps from 0) into per-bar token runs.

    Notes must lie in ``[0, n_bars * 16]`` and must not overlap per (track, pitch); notes that
    cross a bar line are split there (re-struck), as the format says.
    """
    trk = np.asarray(trk, np.int64)
    start = np.asarray(start, np.int64)
    end = np.asarray(end, np.int64)
    pitch = np.asarray(pitch, np.int64)
    n_groups = n_tracks * n_bars
    # Split notes at bar lines.
    b0 = start // S
    k = (end - 1) // S - b0 + 1
    if len(k) and (k > 1).any():
        idx = np.repeat(np.arange(len(k)), k)
        first = np.cumsum(k) - k
        bar = b0[idx] + (np.arange(len(idx)) - first[idx])
        trk, pitch, start, end = trk[idx], pitch[idx], start[idx], end[idx]
    else:
        bar = b0
    on_t = np.maximum(start - bar * S, 0)
    off_t = np.minimum(end - bar * S, S)
    grp = trk * n_bars + bar
    m = len(grp)
    # Events: offs sort before ons at the same step, ascending pitch within a kind.
    g2 = np.concatenate([grp, grp])
    t2 = np.concatenate([off_t, on_t])
    kind = np.concatenate([np.zeros(m, np.int64), np.ones(m, np.int64)])
    p2 = np.concatenate([pitch, pitch])
    key = ((g2 * (S + 1) + t2) * 2 + kind) * 128 + p2
    order = np.argsort(key, kind="stable")
    g2, t2, kind, p2 = g2[order], t2[order], kind[order], p2[order]
    tok = np.where(kind == 1, NOTE_ON0 + p2, NOTE_OFF0 + p2)
    first_in_group = np.searchsorted(g2, g2, side="left")
    ar = np.arange(len(g2))
    prev_t = np.where(ar == first_in_group, 0, np.concatenate([[0], t2[:-1]]))
    delta = t2 - prev_t
    need = (delta > 0).astype(np.int64)
    w = 1 + need
    counts = np.bincount(g2, weights=w, minlength=n_groups).astype(np.int64)
    sizes = counts + 2
    group_start = np.zeros(n_groups + 1, np.int64)
    np.cumsum(sizes, out=group_start[1:])
    excl = np.cumsum(w) - w
    rel = excl - excl[first_in_group] if len(excl) else excl
    pos = group_start[g2] + 1 + rel + need
    ids = np.empty(int(group_start[-1]), np.int32)
    ids[group_start[:-1]] = BAR_START
    ids[group_start[1:] - 1] = BAR_END
    ids[pos] = tok
    dm = need.astype(bool)
    ids[pos[dm] - 1] = TIME_DELTA0 + delta[dm]
    onsets = np.bincount(grp, minlength=n_groups).reshape(n_tracks, n_bars)
    offsets = np.empty((n_tracks, n_bars + 1), np.int64)
    gs = group_start[:-1].reshape(n_tracks, n_bars)
    offsets[:, :n_bars] = gs
    offsets[:, n_bars] = gs[:, -1] + sizes.reshape(n_tracks, n_bars)[:, -1] if n_bars else 0
    return TrackBars(ids, offsets, onsets)


def segment_bars(seg: SegmentArrays) -> TrackBars:
    """`encode_bars` over every track of a parsed segment (empty tracks included)."""
    ts = seg.tracks
    if not ts:
        return encode_bars(*(np.zeros(0, np.int64),) * 4, 0, seg.bars)
    trk = np.repeat(np.arange(len(ts)), [len(t.start) for t in ts])
    return encode_bars(
        trk,
        np.concatenate([t.start for t in ts]),
        np.concatenate([t.end for t in ts]),
        np.concatenate([t.pitch for t in ts]),
        len(ts),
        seg.bars,
    )


def density_bucket(count: int, edges: Sequence[float]) -> int:
    """The DENSITY bucket of a note count: bucket d holds counts <= edges[d]."""
    return int(np.searchsorted(np.asarray(edges, np.float64), count, side="left"))


def _track_arrays(track: Track) -> TrackArrays:
    n = track.notes
    return TrackArrays(
        track.inst,
        track.program,
        track.is_drum,
        track.name,
        track.velocity,
        np.fromiter((x.start for x in n), np.int64, len(n)),
        np.fromiter((x.end for x in n), np.int64, len(n)),
        np.fromiter((x.pitch for x in n), np.int64, len(n)),
    )


def piece_bars(piece: Piece, start_bar: int = 0, n_bars: int | None = None) -> TrackBars:
    """Tokenise bars ``start_bar ..`` of every track of a piece (notes cut at the window)."""
    n_bars = piece.bars - start_bar if n_bars is None else n_bars
    if start_bar < 0 or n_bars < 0:
        raise ValueError("start_bar and n_bars must be >= 0")
    sub = piece.slice_bars(start_bar, n_bars) if (start_bar or n_bars != piece.bars) else piece
    seg = SegmentArrays(n_bars, sub.tempo, tuple(_track_arrays(t) for t in sub.tracks), 0)
    return segment_bars(seg)


def _header(vocab: Vocab, label: str, density: int | None) -> list[int]:
    h = [TRACK_START, vocab.inst_id(label)]
    if density is not None and vocab.density_bins:
        h.append(vocab.density_id(density))
    return h


def encode_track(
    track: Track,
    config: CodecConfig,
    start_bar: int = 0,
    n_bars: int | None = None,
    density: int | None = None,
) -> np.ndarray:
    """``TRACK_START INST [DENSITY] bar* TRACK_END`` for one track (empty bars included)."""
    n = n_bars if n_bars is not None else _bars_of(track) - start_bar
    tb = piece_bars(Piece((track,), start_bar + n), start_bar, n)
    if density is None and config.density_bins and config.density_edges:
        density = density_bucket(int(tb.onsets[0].sum()), config.density_edges)
    body = tb.window(0, 0, n)
    return np.concatenate(
        [np.asarray(_header(config.vocab, track.inst, density), np.int32), body, [TRACK_END]]
    ).astype(np.int32)


def _bars_of(track: Track) -> int:
    last = max((n.end for n in track.notes), default=0)
    return max(1, -(-last // S))


def encode_piece(
    piece: Piece,
    config: CodecConfig,
    start_bar: int = 0,
    n_bars: int | None = None,
    densities: dict[int, int] | Sequence[int | None] | None = None,
    keep_empty: bool = False,
) -> np.ndarray:
    """``PIECE_START`` and every track that has notes in the window, in track order.

    ``densities`` overrides the DENSITY of track i; otherwise it is bucketed from the note
    count with the config's edges (omitted when the config has no density bins).
    """
    n_bars = piece.bars - start_bar if n_bars is None else n_bars
    tb = piece_bars(piece, start_bar, n_bars)
    vocab = config.vocab
    out: list[np.ndarray] = [np.array([PIECE_START], np.int32)]
    for i, t in enumerate(piece.tracks):
        count = int(tb.onsets[i].sum())
        if count == 0 and not keep_empty:
            continue
        d = None
        if densities is not None:
            d = densities.get(i) if isinstance(densities, dict) else densities[i]
        if d is None and config.density_bins and config.density_edges:
            d = density_bucket(count, config.density_edges)
        out.append(np.asarray(_header(vocab, t.inst, d), np.int32))
        out.append(tb.window(i, 0, n_bars))
        out.append(np.array([TRACK_END], np.int32))
    return np.concatenate(out).astype(np.int32)


# --------------------------------------------------------------------------- decoding


@dataclass
class Decoded:
    """What a token list meant, and every repair the decoder had to make."""

    piece: Piece
    repairs: list[str] = field(default_factory=list)
    densities: list[int | None] = field(default_factory=list)


@dataclass
class _TrackState:
    label: str | None = None
    density: int | None = None
    bars: int = 0
    notes: list[tuple[int, int, int]] = field(default_factory=list)  # start, pitch, end
    fills: list[int] = field(default_factory=list)  # bar indices marked FILL_IN


def _program_of(label: str) -> int:
    return int(label) if label.isdigit() and 0 <= int(label) <= 127 else 0


def decode(
    ids: Iterable[int],
    config: CodecConfig | Vocab,
    bars: int | None = None,
    tempo: float = 120.0,
) -> Decoded:
    """Token ids -> Piece. Never raises on any id list; lists what it repaired.

    FILL_START..FILL_END blocks are put into the bars marked FILL_IN, in order.
    """
    vocab = config.vocab if isinstance(config, CodecConfig) else config
    n_tok = vocab.size
    inst0 = vocab.inst0
    repairs: list[str] = []
    tracks: list[_TrackState] = []
    cur: _TrackState | None = None
    in_bar = False
    bar_base = 0  # step of the current bar's start within the track
    t = 0
    sounding: dict[int, int] = {}
    fill_queue: list[tuple[_TrackState, int]] = []
    in_fill = False

    def close_notes(at: int, why: str | None) -> None:
        for p, s in sorted(sounding.items()):
            e = max(at, s + 1)
            cur_notes.append((s, p, e))
            if why:
                repairs.append(f"{why}: pitch {p} at step {s} ended at step {e}")
        sounding.clear()

    cur_notes: list[tuple[int, int, int]] = []

    def end_bar(why: str | None) -> None:
        nonlocal in_bar, in_fill
        if sounding:
            close_notes(bar_base + S, why or "note never closed, ended at the bar end")
        in_bar = False
        in_fill = False

    def close_open_bar(before: str) -> None:
        if in_bar:
            end_bar("BAR_END missing")
            repairs.append(f"BAR_END missing before {before}")

    def end_track() -> None:
        nonlocal cur
        if cur is not None:
            cur.notes.extend(cur_notes)
            cur_notes.clear()
            tracks.append(cur)
            cur = None

    for pos, raw in enumerate(ids):
        tok = int(raw)
        if tok < 0 or tok >= n_tok or tok == UNK:
            repairs.append(f"unknown token id {tok} at {pos} skipped")
            continue
        if tok == PAD:
            repairs.append(f"[PAD] at {pos} skipped")
            continue
        if tok == PIECE_START:
            if pos != 0:
                repairs.append(f"PIECE_START at {pos} ignored")
            continue
        if tok == TRACK_START:
            close_open_bar(f"TRACK_START at {pos}")
            if cur is not None:
                repairs.append(f"TRACK_END missing before TRACK_START at {pos}")
                end_track()
            in_fill = False
            cur = _TrackState()
            continue
        if tok >= inst0:
            label = vocab.labels[tok - inst0]
            if cur is None:
                repairs.append(f"INST outside a track at {pos}: a track was opened")
                cur = _TrackState()
            if cur.label is not None or cur.bars:
                repairs.append(f"second INST in a track at {pos} ignored")
            else:
                cur.label = label
            continue
        if DENSITY0 <= tok < inst0:
            if cur is not None and cur.density is None and not cur.bars:
                cur.density = tok - DENSITY0
            else:
                repairs.append(f"misplaced DENSITY at {pos} ignored")
            continue
        if tok == FILL_START:
            close_open_bar(f"FILL_START at {pos}")
            end_track()
            if not fill_queue:
                repairs.append(f"FILL_START at {pos} without a FILL_IN bar: skipped")
                in_fill = False
                in_bar = False
                continue
            target, bar_idx = fill_queue.pop(0)
            cur_fill_track = target
            cur_notes = cur_fill_track.notes  # notes go straight into that track
            bar_base = bar_idx * S
            t = 0
            in_bar = True
            in_fill = True
            continue
        if tok == FILL_END:
            if in_fill:
                if sounding:
                    close_notes(bar_base + S, "note never closed, ended at the bar end")
                in_bar = False
                in_fill = False
                cur_notes = []
            else:
                repairs.append(f"FILL_END at {pos} without FILL_START ignored")
            continue
        if tok == BAR_START:
            if cur is None:
                repairs.append(f"BAR_START outside a track at {pos}: a track was opened")
                cur = _TrackState()
            close_open_bar(f"BAR_START at {pos}")
            bar_base = cur.bars * S
            cur.bars += 1
            t = 0
            in_bar = True
            continue
        if tok == BAR_END:
            if in_bar and not in_fill:
                end_bar(None)
            else:
                repairs.append(f"BAR_END at {pos} outside a bar ignored")
            continue
        if tok == TRACK_END:
            close_open_bar(f"TRACK_END at {pos}")
            if cur is None:
                repairs.append(f"TRACK_END at {pos} outside a track ignored")
            else:
                end_track()
            continue
        if tok == FILL_IN:
            if in_bar and cur is not None and not in_fill:
                fill_queue.append((cur, cur.bars - 1))
                cur.fills.append(cur.bars - 1)
            else:
                repairs.append(f"FILL_IN at {pos} outside a bar ignored")
            continue
        # Events.
        if not in_bar:
            repairs.append(f"event at {pos} outside a bar skipped")
            continue
        if tok >= TIME_DELTA0 + 1:
            d = tok - TIME_DELTA0
            if t + d > S:
                repairs.append(f"TIME_DELTA at {pos} past the bar end clamped")
                t = S
            else:
                t += d
        elif tok >= NOTE_OFF0:
            p = tok - NOTE_OFF0
            s = sounding.pop(p, None)
            if s is None:
                repairs.append(f"NOTE_OFF={p} at {pos} without NOTE_ON ignored")
            elif bar_base + t <= s:
                repairs.append(f"zero-length NOTE_ON={p} at {pos} given one step")
                cur_notes.append((s, p, s + 1))
            else:
                cur_notes.append((s, p, bar_base + t))
        else:
            p = tok - NOTE_ON0
            if t >= S:
                repairs.append(f"NOTE_ON={p} at {pos} on the bar end skipped")
                continue
            if p in sounding:
                s = sounding.pop(p)
                repairs.append(f"NOTE_ON={p} at {pos} while sounding: previous one closed")
                cur_notes.append((s, p, max(bar_base + t, s + 1)))
            sounding[p] = bar_base + t
    if in_bar:
        end_bar("BAR_END missing at the end")
        repairs.append("BAR_END missing at the end")
    if cur is not None:
        repairs.append("TRACK_END missing at the end")
        end_track()

    n_bars = bars if bars is not None else max((ts.bars for ts in tracks), default=0)
    limit = n_bars * S
    out_tracks: list[Track] = []
    densities: list[int | None] = []
    channel = 0
    for ts in tracks:
        label = ts.label
        if label is None:
            repairs.append("track without INST: labelled 0 (piano)")
            label = "0"
        notes = set()
        for s, p, e in ts.notes:
            if s >= limit:
                continue
            notes.add(Note(s, p, min(e, limit)))
        if ts.bars != n_bars and bars is not None:
            repairs.append(f"track {label} has {ts.bars} bars, expected {n_bars}")
        if label == "DRUMS":
            ch = DRUM_CHANNEL
        else:
            if channel == DRUM_CHANNEL:
                channel += 1
            ch = channel % 16
            channel += 1
        out_tracks.append(Track(label, tuple(sorted(notes)), _program_of(label), ch, ""))
        densities.append(ts.density)
    piece = Piece(tuple(out_tracks), n_bars, tempo)
    return Decoded(piece, repairs, densities)


def split_at_bars(notes: Iterable[Note]) -> list[Note]:
    """Notes as the format stores them: cut (and re-struck) at every bar line."""
    out = []
    for n in notes:
        s = n.start
        while s < n.end:
            e = min(n.end, (s // S + 1) * S)
            out.append(Note(s, n.pitch, e))
            s = e
    return sorted(out)
