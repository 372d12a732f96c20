"""What generation yields and raises (all re-exported by `bandmate.models.generate`).

A stream yields `NoteEvent` as each note closes, `BarDone` per finished bar and one `Done`
with the result; a request the model cannot serve raises `GenerationError`. They live apart
from `generate` so that its plans (`generate_jobs`) can use them without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bandmate.models.types import Note, Piece


class GenerationError(ValueError):
    """A request this model cannot serve (the message says what to change)."""


@dataclass(frozen=True)
class NoteEvent:
    """A note as soon as it is closed: ``track`` indexes the result piece, times in steps
    from the piece start."""

    track: int
    note: Note


@dataclass(frozen=True)
class BarDone:
    """Every generated track has closed bar ``bar`` (counted from the piece start)."""

    bar: int


@dataclass(frozen=True)
class Done:
    """The finished result and what it cost (tokens, calls, seconds, cuts)."""

    piece: Piece
    stats: dict = field(default_factory=dict, compare=False)

