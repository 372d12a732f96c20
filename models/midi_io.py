"""MIDI files in and out: parsing with symusic, quantising to the 16th grid, writing with mido.

Parsing is the hot path of corpus preparation, so everything after symusic's C++ parse works
on numpy arrays (`SegmentArrays`) and builds `Note` objects only when a `Piece` is asked for.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bandmate.models.config import CodecConfig
from bandmate.models.types import DRUM_CHANNEL, STEPS_PER_BAR, Note, Piece, Track

MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".smf")


class MidiError(ValueError):
    """A MIDI file bandmate cannot use; the message says why and what to do."""


#: The message for a file without 4/4 bars (the CLI and the app both take --meter).
NO_44_BARS = (
    "no bars in 4/4 time: bandmate's models play 4/4 only (if the file's time signature is "
    "wrong, read it as 4/4 with --meter assume-4/4)"
)


@dataclass(frozen=True)
class TrackArrays:
    """One track's quantised notes as parallel int64 arrays, sorted by (start, pitch)."""

    label: str
    program: int
    is_drum: bool
    name: str
    velocity: int
    start: np.ndarray
    end: np.ndarray
    pitch: np.ndarray


@dataclass(frozen=True)
class SegmentArrays:
    """A 4/4 stretch of a file: ``bars`` bars, tracks in file order (empty ones kept)."""

    bars: int
    tempo: float
    tracks: tuple[TrackArrays, ...]
    start_step: int  # where the stretch starts in the file, in steps


def _load_score(src: str | os.PathLike | bytes):
    import symusic

    data = src if isinstance(src, bytes | bytearray) else Path(src).read_bytes()
    if len(data) < 14:
        raise MidiError("file too short to be MIDI (under 14 bytes)")
    head = bytes(data[:4])
    if head == b"RIFF" and b"MThd" in data[:64]:
        data = data[data.index(b"MThd") :]  # RMID wrapper
    elif head != b"MThd":
        raise MidiError("not a MIDI file (no 'MThd' header)")
    division = int.from_bytes(data[12:14], "big")
    if division & 0x8000:
        raise MidiError(
            "SMPTE time division is not supported: re-save the file with ticks per quarter note"
        )
    if division == 0:
        raise MidiError("invalid MIDI header: 0 ticks per quarter note")
    try:
        return symusic.Score.from_midi(bytes(data))
    except Exception as e:  # symusic raises plain RuntimeError / ValueError on damage
        fixed = clip_data_bytes(bytes(data)) if "program" in str(e).lower() else None
        if fixed is not None:
            with contextlib.suppress(Exception):
                return symusic.Score.from_midi(fixed)
        raise MidiError(f"unreadable MIDI data: {e}") from None


_DATA_BYTES = {0x8: 2, 0x9: 2, 0xA: 2, 0xB: 2, 0xC: 1, 0xD: 1, 0xE: 2}


def _varlen(data: bytes, i: int) -> tuple[int, int]:
    value = 0
    for _ in range(4):
        b = data[i]
        i += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            break
    return value, i


def clip_data_bytes(data: bytes) -> bytes | None:
    """The file with every channel-message data byte over 127 clamped to 127 (as mido's
    ``clip=True`` does), or None when nothing needed it or the chunks cannot be walked.

    Some editors wrote program changes like 230 (Freedoom's older files): the byte should
    be 7 bits; symusic refuses the file ("Get program=230").
    """
    out = bytearray(data)
    changed = False
    try:
        pos = 8 + int.from_bytes(data[4:8], "big")  # after MThd
        while pos + 8 <= len(data):
            kind, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "big")
            i, end = pos + 8, min(pos + 8 + size, len(data))
            pos += 8 + size
            if kind != b"MTrk":
                continue
            status = 0
            while i < end:
                _, i = _varlen(data, i)
                b = data[i]
                if b >= 0x80:
                    i += 1
                    if b == 0xFF:  # meta: type, length, data
                        n, i = _varlen(data, i + 1)
                        i += n
                        continue
                    if b in (0xF0, 0xF7):  # sysex
                        n, i = _varlen(data, i)
                        i += n
                        continue
                    status = b
                n = _DATA_BYTES.get(status >> 4)
                if n is None:
                    return None  # data with no running status: not walkable
                for k in range(i, min(i + n, end)):
                    if out[k] > 0x7F:
                        out[k] = 0x7F
                        changed = True
                i += n
    except IndexError:
        return None
    return bytes(out) if changed else None


def _q(ticks: np.ndarray, tpq: int) -> np.ndarray:
    """Round ticks to the nearest 16th step (halves round up, deterministically)."""
    return (ticks.astype(np.int64) * 8 + tpq) // (2 * tpq)


def _segments_44(score, config: CodecConfig, last_step: int) -> list[tuple[int, int]]:
    """(start_step, bars) of each 4/4 stretch of the file."""
    if config.meter == "assume-4/4":
        return [(0, max(1, -(-last_step // STEPS_PER_BAR)))] if last_step > 0 else []
    sigs: dict[int, tuple[int, int]] = {}
    for ts in score.time_signatures:
        sigs[int(_q(np.array([ts.time]), score.tpq)[0])] = (int(ts.numerator), int(ts.denominator))
    if 0 not in sigs:
        sigs[0] = (4, 4)
    points = sorted(sigs)
    out: list[tuple[int, int]] = []
    for i, at in enumerate(points):
        if sigs[at] != (4, 4) or at >= last_step:
            continue
        nxt = points[i + 1] if i + 1 < len(points) else None
        if nxt is None:
            bars = -(-(last_step - at) // STEPS_PER_BAR)
        else:
            bars = (min(nxt, last_step) - at) // STEPS_PER_BAR
        if bars <= 0:
            continue
        if out and out[-1][0] + out[-1][1] * STEPS_PER_BAR == at:
            out[-1] = (out[-1][0], out[-1][1] + bars)  # a repeated 4/4 event: same stretch
        else:
            out.append((at, bars))
    return out


def read_segments_arrays(
    src: str | os.PathLike | bytes, config: CodecConfig | None = None
) -> list[SegmentArrays]:
    """Every 4/4 stretch of a MIDI file as quantised note arrays (the fast path for corpora).

    All tracks are quantised together (one sort per file, not per track): numpy's per-call
    overhead, not arithmetic, is what a 10-note chorale track costs.
    """
    config = config or CodecConfig()
    score = _load_score(src)
    tpq = int(score.tpq)
    tracks_in = [tr for tr in score.tracks if len(tr.notes)]
    if not tracks_in:
        raise MidiError("no notes in the file")
    cols = [tr.notes.numpy() for tr in tracks_in]
    n_per = np.array([len(a["time"]) for a in cols], np.int64)
    trk = np.repeat(np.arange(len(cols)), n_per)
    time = np.concatenate([a["time"] for a in cols]).astype(np.int64)
    dur = np.concatenate([a["duration"] for a in cols]).astype(np.int64)
    pitch = np.concatenate([a["pitch"] for a in cols]).astype(np.int64)
    vel = np.concatenate([a["velocity"] for a in cols]).astype(np.int64)
    start = _q(time, tpq)
    end = np.maximum(_q(time + dur, tpq), start + 1)
    # Same-pitch overlaps within a track: cut the earlier note where the next one starts.
    tp = trk * 128 + pitch
    order = np.lexsort((end, start, tp))
    start, end, pitch, trk_s, tp = start[order], end[order], pitch[order], trk[order], tp[order]
    if len(start) > 1:
        cut = (tp[1:] == tp[:-1]) & (start[1:] < end[:-1])
        end[:-1] = np.where(cut, start[1:], end[:-1])
        keep = end > start
        start, end, pitch, trk_s = start[keep], end[keep], pitch[keep], trk_s[keep]
    order = np.argsort((trk_s * (int(start.max()) + 1) + start) * 128 + pitch, kind="stable")
    start, end, pitch, trk_s = start[order], end[order], pitch[order], trk_s[order]
    bounds = np.searchsorted(trk_s, np.arange(len(cols) + 1))
    # Median velocity of every track from one sort (groups stay contiguous).
    vs = np.sort(vel + trk * 1024) - trk * 1024
    first = np.concatenate([[0], np.cumsum(n_per)[:-1]])
    med = (vs[first + (n_per - 1) // 2] + vs[first + n_per // 2]) / 2
    raw = []
    last = int(end.max())
    voice_order = 0
    for i, tr in enumerate(tracks_in):
        lo, hi = bounds[i], bounds[i + 1]
        is_drum = bool(tr.is_drum)
        label = config.track_label(tr.name, int(tr.program), is_drum, voice_order)
        if not is_drum:
            voice_order += 1
        vel_i = int(np.clip(med[i], 1, 127))
        raw.append(
            (
                label,
                int(tr.program),
                is_drum,
                str(tr.name),
                vel_i,
                start[lo:hi],
                end[lo:hi],
                pitch[lo:hi],
            )
        )
    tempo = float(score.tempos[0].qpm) if len(score.tempos) else 120.0
    tempo = float(min(max(tempo, 1.0), 1000.0))
    segs = []
    for at, bars in _segments_44(score, config, last):
        stop = at + bars * STEPS_PER_BAR
        tracks = []
        for label, program, is_drum, name, vel_i, s, e, p in raw:
            if at == 0 and stop >= last:  # the whole file: no masking, no copies
                tracks.append(TrackArrays(label, program, is_drum, name, vel_i, s, e, p))
                continue
            m = (s >= at) & (s < stop)
            tracks.append(
                TrackArrays(
                    label,
                    program,
                    is_drum,
                    name,
                    vel_i,
                    s[m] - at,
                    np.minimum(e[m], stop) - at,
                    p[m],
                )
            )
        segs.append(SegmentArrays(bars, tempo, tuple(tracks), at))
    return segs


def arrays_to_piece(seg: SegmentArrays, keep_empty: bool = False) -> Piece:
    """Build the immutable `Piece` of a segment (one channel per track, drums on 10)."""
    tracks = []
    channel = 0
    for t in seg.tracks:
        if not keep_empty and len(t.start) == 0:
            continue
        if t.is_drum:
            ch = DRUM_CHANNEL
        else:
            ch = channel % 16
            if ch == DRUM_CHANNEL:
                channel += 1
                ch = channel % 16
            channel += 1
        notes = tuple(
            Note(s, p, e)
            for s, e, p in zip(t.start.tolist(), t.end.tolist(), t.pitch.tolist(), strict=True)
        )
        tracks.append(Track(t.label, notes, t.program, ch, t.name, t.velocity))
    return Piece(tuple(tracks), seg.bars, seg.tempo, {"start_step": seg.start_step})


def read_midi_segments(
    src: str | os.PathLike | bytes, config: CodecConfig | None = None
) -> list[Piece]:
    """Every 4/4 stretch of a MIDI file as a `Piece` starting at step 0."""
    return [arrays_to_piece(s) for s in read_segments_arrays(src, config)]


def read_midi(src: str | os.PathLike | bytes, config: CodecConfig | None = None) -> Piece:
    """The first 4/4 stretch of a MIDI file: what a prompt or a preview needs.

    Raises MidiError with the reason when the file is unusable.
    """
    config = config or CodecConfig()
    segs = read_segments_arrays(src, config)
    if not segs:
        raise MidiError(NO_44_BARS)
    return arrays_to_piece(segs[0])


def write_midi(piece: Piece, path: str | os.PathLike | None = None, tpq: int = 480) -> bytes:
    """Write a type-1 MIDI file: tempo, 4/4, one MIDI track per `Track` with name and program."""
    import mido

    step = tpq // 4
    mid = mido.MidiFile(type=1, ticks_per_beat=tpq)
    conductor = mido.MidiTrack()
    conductor.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(piece.tempo), time=0))
    conductor.append(mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0))
    conductor.append(mido.MetaMessage("end_of_track", time=0))
    mid.tracks.append(conductor)
    for t in piece.tracks:
        tr = mido.MidiTrack()
        name = t.name or t.inst.title()
        tr.append(mido.MetaMessage("track_name", name=name, time=0))
        ch = DRUM_CHANNEL if t.inst == "DRUMS" else t.channel
        if ch != DRUM_CHANNEL:
            tr.append(mido.Message("program_change", channel=ch, program=t.program, time=0))
        events = []
        for n in t.notes:
            events.append((n.end * step, 0, n.pitch))
            events.append((n.start * step, 1, n.pitch))
        events.sort()
        now = 0
        for tick, on, pitch in events:
            kind = "note_on" if on else "note_off"
            vel = t.velocity if on else 0
            tr.append(mido.Message(kind, channel=ch, note=pitch, velocity=vel, time=tick - now))
            now = tick
        tr.append(mido.MetaMessage("end_of_track", time=0))
        mid.tracks.append(tr)
    buf = io.BytesIO()
    mid.save(file=buf)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data
