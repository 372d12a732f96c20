"""What the piano roll shows, and where, without Qt: notes per track, geometry, zoom, colours.

The widget (`bandmate.ui.roll`) only paints what this model says, so the arithmetic (which
rectangle a note gets, what a zoom keeps under the mouse, which notes are the model's) is
tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from bandmate.models.types import STEPS_PER_BAR, Note, Piece

#: One colour per track (soprano, alto, tenor, bass, then more), readable on a dark background.
TRACK_COLORS: tuple[str, ...] = (
    "#e6550d",  # orange
    "#3182bd",  # blue
    "#31a354",  # green
    "#b5179e",  # magenta
    "#e7ba52",  # ochre
    "#17becf",  # cyan
    "#9467bd",  # violet
    "#d62728",  # red
)


def track_color(index: int) -> str:
    """The colour of track ``index`` (cycling after eight tracks)."""
    return TRACK_COLORS[index % len(TRACK_COLORS)]


@dataclass(frozen=True, slots=True)
class RollNote:
    track: int
    note: Note
    generated: bool


@dataclass
class RollModel:
    """The prompt's notes plus the notes generated so far, in one timeline of 16th steps."""

    track_names: list[str] = field(default_factory=list)
    notes: list[RollNote] = field(default_factory=list)
    prompt_bars: int = 0
    prompt_tracks: int = 0
    bars: int = 0
    playhead: float | None = None  # in steps; None = hidden
    user_version: int = 0  # bumps whenever the user's notes change (the view caches them)

    def set_prompt(self, piece: Piece, names: list[str] | None = None) -> None:
        """Show ``piece`` as the user's music; forgets anything generated."""
        self.track_names = names or [t.name or t.inst for t in piece.tracks]
        self.notes = [RollNote(i, n, False) for i, t in enumerate(piece.tracks) for n in t.notes]
        self.prompt_bars = self.bars = piece.bars
        self.prompt_tracks = len(piece.tracks)
        self.user_version += 1

    def clear_generated(self) -> None:
        self.notes = [n for n in self.notes if not n.generated]
        self.bars = self.prompt_bars
        del self.track_names[self.prompt_tracks :]

    def add_generated(self, track: int, note: Note, name: str = "") -> None:
        """One streamed note; grows the timeline and the track list as needed."""
        while len(self.track_names) <= track:
            self.track_names.append(name or f"Track {len(self.track_names) + 1}")
        self.notes.append(RollNote(track, note, True))
        self.bars = max(self.bars, -(-note.end // STEPS_PER_BAR))

    def show_result(self, prompt: Piece, result: Piece, names: list[str]) -> None:
        """Replace the roll with a finished result: notes not in the prompt count as generated."""
        self.set_prompt(prompt, names[: len(prompt.tracks)] or None)
        self.track_names = list(names)
        for i, t in enumerate(result.tracks):
            mine = set(prompt.tracks[i].notes) if i < len(prompt.tracks) else set()
            self.notes.extend(RollNote(i, n, True) for n in t.notes if n not in mine)
        self.bars = max(self.prompt_bars, result.bars)

    def generated_count(self) -> int:
        return sum(1 for n in self.notes if n.generated)

    def pitch_span(self) -> tuple[int, int]:
        """Lowest and highest pitch on show, padded; a default octave range when empty."""
        if not self.notes:
            return 48, 84
        lo = min(n.note.pitch for n in self.notes)
        hi = max(n.note.pitch for n in self.notes)
        return max(0, lo - 3), min(127, hi + 3)


@dataclass(frozen=True)
class RollGeometry:
    """Step/pitch <-> pixel mapping. Higher pitches are drawn higher (smaller y)."""

    px_per_step: float = 8.0
    px_per_key: float = 7.0
    pitch_lo: int = 36
    pitch_hi: int = 96
    MIN_STEP_PX = 1.5
    MAX_STEP_PX = 64.0

    def x(self, step: float) -> float:
        return step * self.px_per_step

    def y(self, pitch: int) -> float:
        return (self.pitch_hi - pitch) * self.px_per_key

    def note_rect(self, note: Note) -> tuple[float, float, float, float]:
        """(x, y, width, height) of a note's box."""
        return (
            self.x(note.start),
            self.y(note.pitch),
            max(1.0, note.duration * self.px_per_step - 1.0),
            max(1.0, self.px_per_key - 1.0),
        )

    def step_at(self, x: float) -> float:
        return x / self.px_per_step

    def pitch_at(self, y: float) -> int:
        return int(self.pitch_hi - y // self.px_per_key)

    def size(self, bars: int) -> tuple[float, float]:
        """Content width and height for ``bars`` bars (at least one extra bar of room)."""
        return (
            self.x((bars + 1) * STEPS_PER_BAR),
            (self.pitch_hi - self.pitch_lo + 1) * self.px_per_key,
        )

    def with_pitch_span(self, lo: int, hi: int) -> RollGeometry:
        return replace(self, pitch_lo=lo, pitch_hi=max(hi, lo + 12))

    def zoomed(self, factor: float, anchor_x: float = 0.0) -> tuple[RollGeometry, float]:
        """Zoom horizontally by ``factor`` keeping the step under ``anchor_x`` in place.

        Returns the new geometry and the new x of the anchor step, so the view can scroll by
        the difference.
        """
        step = self.step_at(anchor_x)
        px = min(self.MAX_STEP_PX, max(self.MIN_STEP_PX, self.px_per_step * factor))
        g = replace(self, px_per_step=px)
        return g, g.x(step)
