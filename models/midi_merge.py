"""Write generated notes into the user's own MIDI file, leaving every original event as it was.

Why this module exists: a composer's file holds far more than the codec reads (velocities,
pedals, bends, program changes, names, markers, tempo and meter changes, bars in 3/4), and the
codec's re-rendering of one 4/4 stretch loses all of it. So output is never re-rendered from a
`Piece`: the original file is parsed with mido at its own resolution, the new notes are mapped
from the codec's 16th-step grid to the file's ticks and added as events, and nothing else
changes (an ``end_of_track`` moves later when new notes end after it; a 4/4 time signature is
added where new 4/4 bars follow bars in another meter).

Pure functions over bytes and small immutable types, no Qt: `bandmate generate` and the app's
Save and drag-out both use them; writing files safely is `bandmate.models.outfile`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np
from bandmate.models.config import CodecConfig
from bandmate.models.midi_io import (
    NO_44_BARS,
    MidiError,
    SegmentArrays,
    _load_score,
    arrays_to_piece,
    read_segments_arrays,
)
from bandmate.models.types import DRUM_CHANNEL, STEPS_PER_BAR, Note, Piece

#: Velocity of new notes when the file gives nothing to follow (never reached with notes in it).
FALLBACK_VELOCITY = 80
#: How many of a part's latest notes decide a continuation's velocity.
RECENT_NOTES = 8


@dataclass(frozen=True)
class Part:
    """One part as the codec sees it (a symusic track: one channel of one MIDI track), with
    where it lives in the file and how loud it plays (note-on ticks and velocities, sorted)."""

    track: int
    channel: int
    name: str
    program: int
    is_drum: bool
    ticks: np.ndarray
    velocities: np.ndarray


@dataclass(frozen=True)
class NewPart:
    """Notes to add, in file ticks: ``(on, off, pitch, velocity)``. ``part`` is the index of
    the `Part` they continue (same MIDI track and channel); None makes a new MIDI track."""

    notes: tuple[tuple[int, int, int, int], ...]
    part: int | None = None
    name: str = ""
    program: int = 0
    is_drum: bool = False


@dataclass(frozen=True)
class Source:
    """A MIDI file opened as a prompt: the original bytes, its 4/4 stretches for the codec,
    and how the codec's steps map to the file's ticks and bars."""

    data: bytes
    name: str
    tpq: int
    file_type: int
    parts: tuple[Part, ...]
    sections: tuple[SegmentArrays, ...]
    meters: tuple[tuple[int, int, int], ...]  # (tick, numerator, denominator), first at 0
    end_tick: int  # the bar line at or after the last note's end
    assume_44: bool
    tempos: tuple[tuple[int, float], ...] = ((0, 120.0),)  # (tick, BPM), first at 0

    # -------------------------------------------------------------- the grid
    def tick(self, step: int) -> int:
        """File tick of a step counted from the start of the file (16ths of a quarter note)."""
        return round(step * self.tpq / 4)

    def section_piece(self, k: int) -> tuple[Piece, list[int]]:
        """Section ``k`` as a `Piece` (steps from its start, at the tempo in force there) and
        the `Part` of each of its tracks."""
        seg = self.sections[k]
        piece = arrays_to_piece(seg)
        tempo = min(max(self.tempo_at(self.tick(seg.start_step)), 1.0), 1000.0)
        parts = [j for j, t in enumerate(seg.tracks) if len(t.start)]
        return replace(piece, tempo=tempo), parts

    def tempo_at(self, tick: int) -> float:
        """The tempo (BPM) in force at a tick."""
        return [bpm for at, bpm in self.tempos if at <= tick][-1]

    def partial_note(self, k: int) -> str:
        """"" when section ``k`` is the whole file, else which bars were read and why."""
        alone = self.outside([k])
        if not alone and len(self.sections) == 1:
            return ""
        a, b = self.section_bars(k)
        return (f"bars {a}-{b} of {self.total_bars} loaded (4/4 only); "
                "the rest is kept when saving")  # fmt: skip

    def section_ticks(self, k: int) -> tuple[int, int]:
        seg = self.sections[k]
        return self.tick(seg.start_step), self.tick(seg.start_step + seg.bars * STEPS_PER_BAR)

    def _bar_len(self, i: int) -> Fraction:
        _, num, den = self.meters[i]
        return Fraction(num * self.tpq * 4, den)

    def bar_of(self, tick: int) -> int:
        """0-based bar number of a tick, through the file's meter changes."""
        bar = 0
        for i, (at, _, _) in enumerate(self.meters):
            nxt = self.meters[i + 1][0] if i + 1 < len(self.meters) else None
            length = self._bar_len(i)
            if nxt is None or tick < nxt:
                return bar + int((tick - at) // length)
            bar += -(-(nxt - at) // length)  # a partial bar before a change counts as one
        return bar

    @property
    def total_bars(self) -> int:
        return self.bar_of(self.end_tick - 1) + 1 if self.end_tick > 0 else 0

    def meter_at(self, tick: int) -> tuple[int, int]:
        m = [x for x in self.meters if x[0] <= tick]
        return (m[-1][1], m[-1][2]) if m else (4, 4)

    # -------------------------------------------------------------- words
    def section_bars(self, k: int) -> tuple[int, int]:
        """First and last bar (1-based, as a DAW counts) of section ``k``."""
        lo, hi = self.section_ticks(k)
        return self.bar_of(lo) + 1, self.bar_of(hi - 1) + 1

    def outside(self, used: Iterable[int]) -> list[tuple[int, int]]:
        """Bar ranges (1-based) of the file that no section in ``used`` covers."""
        covered = set()
        for k in used:
            a, b = self.section_bars(k)
            covered.update(range(a, b + 1))
        out: list[tuple[int, int]] = []
        for bar in range(1, self.total_bars + 1):
            if bar in covered:
                continue
            if out and out[-1][1] == bar - 1:
                out[-1] = (out[-1][0], bar)
            else:
                out.append((bar, bar))
        return out


def bar_ranges(ranges: Sequence[tuple[int, int]], limit: int = 6) -> str:
    """"1-8, 17-20" (long lists summarised)."""
    words = [f"{a}-{b}" if a != b else str(a) for a, b in ranges]
    return summarise(words, limit, sep=", ")


def summarise(items: Sequence[str], limit: int = 6, sep: str = "; ") -> str:
    """At most ``limit`` items and how many more: a 200-track file must not print 9 KB."""
    items = list(items)
    if len(items) <= limit:
        return sep.join(items)
    return sep.join(items[:limit]) + f"{sep}... and {len(items) - limit} more"


# ------------------------------------------------------------------ reading


def _smf(data: bytes) -> bytes:
    """The plain SMF inside a RIFF (RMID) wrapper, else the bytes as they are."""
    if data[:4] == b"RIFF" and b"MThd" in data[:64]:
        return data[data.index(b"MThd") :]
    return data


def _read_mido(data: bytes):
    import mido

    try:
        return mido.MidiFile(file=io.BytesIO(data))
    except Exception as e:  # mido raises OSError, EOFError, ValueError, KeyError on damage
        raise MidiError(
            f"the file reads as MIDI but cannot be rewritten safely ({type(e).__name__}: {e}): "
            "re-save it from your DAW as a standard MIDI file"
        ) from None


def open_source(data: bytes, config: CodecConfig | None = None, name: str = "") -> Source:
    """Parse a MIDI file for prompting and for merging; raises MidiError with what to do."""
    config = config or CodecConfig()
    data = _smf(bytes(data))
    sections = read_segments_arrays(data, config)
    if not sections:
        raise MidiError(NO_44_BARS)
    score = _load_score(data)
    tracks_in = [tr for tr in score.tracks if len(tr.notes)]
    mid = _read_mido(data)
    # Every note-on of the file by (MIDI track, channel), to find each symusic track's home.
    by_key: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    meters: dict[int, tuple[int, int]] = {}
    tempos: dict[int, float] = {}
    for ti, tr in enumerate(mid.tracks):
        now = 0
        for msg in tr:
            now += msg.time
            if msg.type == "note_on" and msg.velocity > 0:
                by_key.setdefault((ti, msg.channel), []).append((now, msg.note, msg.velocity))
            elif msg.type == "time_signature":
                meters[now] = (msg.numerator, msg.denominator)
            elif msg.type == "set_tempo":
                tempos[now] = 60_000_000 / msg.tempo
    sets = {k: {(t, p) for t, p, _ in v} for k, v in by_key.items()}
    parts = []
    for tr in tracks_in:
        arr = tr.notes.numpy()
        mine = set(zip(arr["time"].tolist(), arr["pitch"].tolist(), strict=True))
        key = max(sets, key=lambda k: len(sets[k] & mine)) if sets else (0, 0)
        notes = sorted(by_key.get(key, []))
        parts.append(
            Part(
                key[0],
                key[1],
                str(tr.name),
                int(tr.program),
                bool(tr.is_drum),
                np.array([n[0] for n in notes], np.int64),
                np.array([n[2] for n in notes], np.int64),
            )
        )
    assume = config.meter == "assume-4/4"
    if assume or 0 not in meters:
        meters[0] = (4, 4)
    meter_list = ((0, 4, 4),) if assume else tuple((t, *meters[t]) for t in sorted(meters))
    tpq = int(mid.ticks_per_beat)
    tempos.setdefault(0, 120.0)
    src = Source(data, name, tpq, int(mid.type), tuple(parts), tuple(sections), meter_list, 0,
                 assume, tuple(sorted(tempos.items())))  # fmt: skip
    last = 0
    for tr in tracks_in:
        a = tr.notes.numpy()
        last = max(last, int((a["time"] + a["duration"]).max()))
    last = src.tick((last * 8 + tpq) // (2 * tpq))  # on the step grid, as the codec reads it
    return replace(src, end_tick=_bar_line_at_or_after(src, last))


def _bar_line_at_or_after(src: Source, tick: int) -> int:
    i = max(j for j, m in enumerate(src.meters) if m[0] <= tick)
    at = src.meters[i][0]
    length = src._bar_len(i)
    n = -(-(tick - at) // length)
    return round(at + n * length)


# ------------------------------------------------------------------ new notes


def _median(v: np.ndarray) -> int:
    return int(np.clip(round(float(np.median(v))), 1, 127)) if len(v) else 0


def continuation(
    src: Source, k: int, new: dict[int, list[Note]], prompt_steps: int
) -> tuple[list[NewPart], int]:
    """The new bars of a continuation of section ``k``, placed after the end of the file.

    ``new`` maps a track of `section_piece(k)` to its new notes (steps from the section
    start, at or after ``prompt_steps``). Each part plays at the median velocity of its own
    latest notes (else the piece's). Returns the parts and the tick where the new bars start.
    """
    _, part_of = src.section_piece(k)
    at = src.end_tick
    ticks, vels = _all_notes(src)
    idx = int(np.searchsorted(ticks, at))
    piece_vel = _median(vels[max(0, idx - RECENT_NOTES) : idx])
    out = []
    for i, notes in sorted(new.items()):
        if not notes:
            continue
        j = part_of[i]
        p = src.parts[j]
        mine = p.velocities[p.ticks < at][-RECENT_NOTES:]
        vel = _median(mine) or piece_vel or FALLBACK_VELOCITY
        evs = tuple(
            (at + src.tick(n.start - prompt_steps), at + src.tick(n.end - prompt_steps), n.pitch,
             vel)
            for n in sorted(notes)
        )  # fmt: skip
        out.append(NewPart(evs, part=j, name=p.name, program=p.program, is_drum=p.is_drum))
    return out, at


def _all_notes(src: Source) -> tuple[np.ndarray, np.ndarray]:
    ticks = np.concatenate([p.ticks for p in src.parts]) if src.parts else np.zeros(0, np.int64)
    vels = np.concatenate([p.velocities for p in src.parts]) if src.parts else ticks
    order = np.argsort(ticks, kind="stable")
    return ticks[order], vels[order]


def added_track(
    src: Source,
    notes: dict[int, list[Note]],
    name: str,
    program: int,
    is_drum: bool,
) -> NewPart:
    """A new track from notes per section (steps from each section's start).

    Velocities follow the piece's dynamics: each note gets the median velocity of the notes
    the file starts within a bar either side of it (the nearest earlier ones if none).
    """
    ticks, vels = _all_notes(src)
    span = src.tpq * 4
    evs = []
    for k, ns in sorted(notes.items()):
        base = src.sections[k].start_step
        for n in sorted(ns):
            on, off = src.tick(base + n.start), src.tick(base + n.end)
            lo, hi = np.searchsorted(ticks, on - span), np.searchsorted(ticks, on + span)
            v = _median(vels[lo:hi]) or _median(vels[max(0, lo - RECENT_NOTES) : lo])
            evs.append((on, off, n.pitch, v or FALLBACK_VELOCITY))
    return NewPart(tuple(evs), None, name, program, is_drum)


def new_notes_of(prompt: Piece, result: Piece, kind: str) -> dict[int, list[Note]]:
    """What a finished result adds to its prompt, per result track: the notes after the
    prompt's bars (continue) or the tracks after the prompt's (add, infill)."""
    if kind == "continue":
        return {
            i: [n for n in t.notes if n.start >= prompt.steps]
            for i, t in enumerate(result.tracks[: len(prompt.tracks)])
        }
    return {i: list(t.notes) for i, t in enumerate(result.tracks) if i >= len(prompt.tracks)}


def take_parts(
    src: Source, k: int, prompt: Piece, result: Piece, kind: str
) -> tuple[list[NewPart], int]:
    """What a finished take of section ``k`` adds to the file, and the tick a drag clip of it
    starts at (the new bars' first tick, or the section's for a new track)."""
    new = new_notes_of(prompt, result, kind)
    if kind == "continue":
        return continuation(src, k, new, prompt.steps)
    parts = []
    for i, ns in new.items():
        t = result.tracks[i]
        name = f"{t.name or t.inst.title()} (bandmate)"
        parts.append(added_track(src, {k: ns}, name, t.program, t.inst == "DRUMS"))
    return parts, src.section_ticks(k)[0]


# ------------------------------------------------------------------ writing


def _free_channel(mid, is_drum: bool) -> int:
    if is_drum:
        return DRUM_CHANNEL
    used: dict[int, int] = {}
    for tr in mid.tracks:
        for msg in tr:
            if hasattr(msg, "channel"):
                used[msg.channel] = used.get(msg.channel, 0) + 1
    free = [c for c in range(16) if c != DRUM_CHANNEL and c not in used]
    if free:
        return free[0]
    return min((c for c in range(16) if c != DRUM_CHANNEL), key=lambda c: used.get(c, 0))


def _note_events(notes: Sequence[tuple[int, int, int, int]], channel: int) -> list:
    import mido

    out = []
    for on, off, pitch, vel in notes:
        out.append((on, 2, mido.Message("note_on", channel=channel, note=pitch, velocity=vel)))
        out.append((off, 0, mido.Message("note_off", channel=channel, note=pitch, velocity=0)))
    return out


def _rebuild(track, extra: list) -> list:
    """Original events in their order plus ``extra`` (tick, rank, msg): at one tick new
    note-offs come first, then the originals, then new note-ons; end_of_track stays last."""
    import mido

    events, now, eot = [], 0, None
    for msg in track:
        now += msg.time
        if msg.type == "end_of_track":
            eot = (now, msg)
            continue
        events.append((now, 1, msg))
    events.extend(extra)
    events.sort(key=lambda e: (e[0], e[1]))  # stable: originals keep their order
    last = events[-1][0] if events else 0
    end = eot[1] if eot else mido.MetaMessage("end_of_track")
    events.append((max(last, eot[0] if eot else 0), 3, end))
    out, now = [], 0
    for tick, _, msg in events:
        out.append(msg.copy(time=tick - now))
        now = tick
    return out


def merge(src: Source, parts: Sequence[NewPart], meter_44_at: int | None = None) -> bytes:
    """The original file plus ``parts``, at its own resolution and tempo map, as bytes.

    ``meter_44_at``: a tick where new 4/4 bars follow another meter (a time signature is
    added there, on the first track).
    """
    import mido

    mid = _read_mido(src.data)
    extra: dict[int, list] = {}
    if meter_44_at is not None and src.meter_at(meter_44_at) != (4, 4):
        ts = mido.MetaMessage("time_signature", numerator=4, denominator=4)
        extra.setdefault(0, []).append((meter_44_at, 2, ts))
    new_tracks = []
    for np_ in parts:
        if np_.part is not None:
            p = src.parts[np_.part]
            extra.setdefault(p.track, []).extend(_note_events(np_.notes, p.channel))
            continue
        ch = _free_channel(mid, np_.is_drum)
        tr = mido.MidiTrack()
        tr.append(mido.MetaMessage("track_name", name=np_.name or "bandmate"))
        if ch != DRUM_CHANNEL:
            tr.append(mido.Message("program_change", channel=ch, program=np_.program))
        new_tracks.append(_rebuild(tr, _note_events(np_.notes, ch)))
    for ti, ev in extra.items():
        mid.tracks[ti] = mido.MidiTrack(_rebuild(mid.tracks[ti], ev))
    for tr in new_tracks:
        mid.tracks.append(mido.MidiTrack(tr))
    if mid.type == 0 and len(mid.tracks) > 1:
        mid.type = 1  # a type-0 file holds one track: the new one makes it type 1
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


def clip(src: Source, parts: Sequence[NewPart], start_tick: int = 0) -> bytes:
    """Just the new parts, for dragging into a DAW: the file's resolution, its tempo and meter
    from ``start_tick`` on (what was in force there moves to 0), the notes moved by
    ``-start_tick``, one track per part with its name, channel and program."""
    import mido

    mid = _read_mido(src.data)
    keep = ("set_tempo", "time_signature", "key_signature")
    before: dict[str, mido.MetaMessage] = {}
    later = []
    for tr in mid.tracks:
        now = 0
        for msg in tr:
            now += msg.time
            if msg.type in keep:
                if now <= start_tick:
                    if msg.type not in before or now >= before[msg.type].time:
                        before[msg.type] = msg.copy(time=now)
                else:
                    later.append((now - start_tick, 1, msg))
    if src.meter_at(start_tick) != (4, 4) and not src.assume_44:
        before["time_signature"] = mido.MetaMessage("time_signature", numerator=4, denominator=4)
    out = mido.MidiFile(type=1, ticks_per_beat=src.tpq)
    conductor = mido.MidiTrack()
    out.tracks.append(conductor)
    head = [(0, 0, m) for m in before.values()]
    out.tracks[0] = mido.MidiTrack(_rebuild(conductor, head + later))
    used = set()
    for np_ in parts:
        p = src.parts[np_.part] if np_.part is not None else None
        ch = p.channel if p is not None else _free_channel(mid, np_.is_drum)
        if ch in used and not np_.is_drum:
            ch = next((c for c in range(16) if c != DRUM_CHANNEL and c not in used), ch)
        used.add(ch)
        tr = mido.MidiTrack()
        tr.append(mido.MetaMessage("track_name", name=np_.name or "bandmate"))
        if ch != DRUM_CHANNEL:
            tr.append(mido.Message("program_change", channel=ch, program=np_.program))
        shifted = [(a - start_tick, b - start_tick, n, v) for a, b, n, v in np_.notes]
        out.tracks.append(mido.MidiTrack(_rebuild(tr, _note_events(shifted, ch))))
    buf = io.BytesIO()
    out.save(file=buf)
    return buf.getvalue()
