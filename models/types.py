"""Small immutable note types shared by the codec, the generator, the bridge and the app.

Times are integers in 16th-note steps from the start of the piece, because the mmmtrack
format (docs/mmmtrack.md) quantises to that grid and every part of bandmate speaks it.
A 4/4 bar is ``STEPS_PER_BAR`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

STEPS_PER_BAR = 16
STEPS_PER_BEAT = 4
DRUM_CHANNEL = 9  # MIDI channel 10, counted from 0


@dataclass(frozen=True, slots=True, order=True)
class Note:
    """A quantised note. ``end`` is exclusive; ``end > start`` always holds."""

    start: int
    pitch: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.pitch <= 127:
            raise ValueError(f"pitch must be 0..127, got {self.pitch}")
        if self.start < 0 or self.end <= self.start:
            raise ValueError(f"need 0 <= start < end, got start={self.start} end={self.end}")

    @property
    def duration(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Track:
    """One part: the notes of one MIDI track on one channel.

    ``inst`` is the mmmtrack INST label ("BASS", "DRUMS", or a GM program as text, "33").
    ``velocity`` is the track's typical velocity, kept so output sounds like the prompt
    (velocity is not part of the token format).
    """

    inst: str
    notes: tuple[Note, ...] = ()
    program: int = 0
    channel: int = 0
    name: str = ""
    velocity: int = 80

    def __post_init__(self) -> None:
        if not 0 <= self.program <= 127:
            raise ValueError(f"program must be 0..127, got {self.program}")
        if not 0 <= self.channel <= 15:
            raise ValueError(f"channel must be 0..15, got {self.channel}")
        if not 1 <= self.velocity <= 127:
            raise ValueError(f"velocity must be 1..127, got {self.velocity}")

    @property
    def is_drum(self) -> bool:
        return self.inst == "DRUMS" or self.channel == DRUM_CHANNEL

    def with_notes(self, notes: tuple[Note, ...] | list[Note]) -> Track:
        return replace(self, notes=tuple(sorted(notes)))


@dataclass(frozen=True, slots=True)
class Piece:
    """A stretch of 4/4 music: ``bars`` bars of 16 steps, tracks in order."""

    tracks: tuple[Track, ...] = ()
    bars: int = 0
    tempo: float = 120.0
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.bars < 0:
            raise ValueError(f"bars must be >= 0, got {self.bars}")
        if not 1.0 <= self.tempo <= 1000.0:
            raise ValueError(f"tempo must be 1..1000 BPM, got {self.tempo}")

    @property
    def steps(self) -> int:
        return self.bars * STEPS_PER_BAR

    def slice_bars(self, start_bar: int, n_bars: int) -> Piece:
        """Bars ``start_bar .. start_bar+n_bars-1`` as a new piece starting at step 0.

        Notes that cross the window edges are cut at them, as the token format does.
        """
        lo, hi = start_bar * STEPS_PER_BAR, (start_bar + n_bars) * STEPS_PER_BAR
        tracks = []
        for t in self.tracks:
            notes = [
                Note(max(n.start, lo) - lo, n.pitch, min(n.end, hi) - lo)
                for n in t.notes
                if n.start < hi and n.end > lo
            ]
            tracks.append(t.with_notes(notes))
        return replace(self, tracks=tuple(tracks), bars=n_bars)
