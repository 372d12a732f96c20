"""Token ids -> notes: the tolerant mmmtrack decoder (docs/mmmtrack.md, "What a decoder must
survive").

A module of its own because it reads model output, not data: a state machine that never
raises and lists every repair it made, while `bandmate.models.codec` writes the layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from bandmate.models.config import CodecConfig
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
