"""A real multi-section MIDI file built with mido, and a way to list its events for comparing.

Shared by the merge unit tests and the CLI's golden test: 8 bars of 4/4 then 8 bars of 3/4 at
384 ticks per beat, a tempo change, markers, a song name, four named voices with programs
and velocities from 40 to 120, a sustain pedal on the bass and a pitch bend on the soprano.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import mido

TPQ = 384
BAR4, BAR3 = 4 * TPQ, 3 * TPQ
END_44 = 8 * BAR4  # where the 3/4 section starts
END = END_44 + 8 * BAR3  # the end of the song
VOICES = (("Soprano", 72, 52), ("Alto", 67, 52), ("Tenor", 60, 53), ("Bass", 48, 32))


def song(path: Path, tpq: int = TPQ) -> Path:
    bar4, bar3 = 4 * tpq, 3 * tpq
    mid = mido.MidiFile(type=1, ticks_per_beat=tpq)
    c = mido.MidiTrack()
    mid.tracks.append(c)
    c += [
        mido.MetaMessage("track_name", name="My Song", time=0),
        mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(90), time=0),
        mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0),
        mido.MetaMessage("marker", text="Verse", time=0),
        mido.MetaMessage("marker", text="Waltz", time=8 * bar4),
        mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0),
        mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(100), time=0),
    ]
    for i, (name, base, program) in enumerate(VOICES):
        t = mido.MidiTrack()
        mid.tracks.append(t)
        t.append(mido.MetaMessage("track_name", name=name, time=0))
        t.append(mido.Message("program_change", channel=i, program=program, time=0))
        ev: list = []
        starts = [b * bar4 + beat * tpq for b in range(8) for beat in range(4)]
        starts += [8 * bar4 + b * bar3 + beat * tpq for b in range(8) for beat in range(3)]
        for k, on in enumerate(starts):
            vel = 40 + (k * 17 + i * 11) % 81
            p = base + (0, 2, 4, 5, 7, 5, 4, 2)[k % 8]
            ev.append((on, 1, mido.Message("note_on", channel=i, note=p, velocity=vel)))
            ev.append((on + tpq - 10, 0, mido.Message("note_off", channel=i, note=p, velocity=0)))
        if name == "Bass":
            bar_starts = [b * bar4 for b in range(8)] + [8 * bar4 + b * bar3 for b in range(8)]
            for st in bar_starts:
                ev.append((st + 5, 2, mido.Message("control_change", channel=i, control=64,
                                                   value=127)))  # fmt: skip
                ev.append((st + 2 * tpq, 2, mido.Message("control_change", channel=i, control=64,
                                                         value=0)))  # fmt: skip
        if name == "Soprano":
            ev.append((2 * bar4 + 30, 2, mido.Message("pitchwheel", channel=0, pitch=1200)))
            ev.append((2 * bar4 + 300, 2, mido.Message("pitchwheel", channel=0, pitch=0)))
        ev.sort(key=lambda e: (e[0], e[1]))
        now = 0
        for tick, _, m in ev:
            t.append(m.copy(time=tick - now))
            now = tick
    mid.save(path)
    return path


def events(path: Path) -> list[Counter]:
    """Per MIDI track, a multiset of (absolute tick, message without its delta time);
    end_of_track is left out (it moves when new notes end after it)."""
    out = []
    for tr in mido.MidiFile(path).tracks:
        now, c = 0, Counter()
        for m in tr:
            now += m.time
            if m.type != "end_of_track":
                c[(now, str(m.copy(time=0)))] += 1
        out.append(c)
    return out


def notes(path: Path, track: int) -> list[tuple[int, int, int]]:
    """(tick, pitch, velocity) of a track's note-ons."""
    now, out = 0, []
    for m in mido.MidiFile(path).tracks[track]:
        now += m.time
        if m.type == "note_on" and m.velocity > 0:
            out.append((now, m.note, m.velocity))
    return out


def assert_originals_kept(original: Path, written: Path) -> None:
    """Every event of ``original`` is in ``written``, same track, same absolute tick."""
    a, b = events(original), events(written)
    assert mido.MidiFile(written).ticks_per_beat == mido.MidiFile(original).ticks_per_beat
    assert len(b) >= len(a)
    for i, (mine, theirs) in enumerate(zip(a, b, strict=False)):
        missing = mine - theirs
        assert not missing, f"track {i}: original events missing: {list(missing)[:5]}"
