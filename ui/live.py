"""Playing streamed notes through the bridge, in time with the DAW (or the internal clock).

`StreamPlacer` is the Qt-free rule for *where* streamed notes land on the clock's timeline:
it holds notes back until the first generated bar is complete, then anchors the clip at the
next bar line that is still far enough away (the bar after the click when the model keeps up,
a later one when it does not), and from then on sends each note as it arrives. The scheduler
(`bandmate.bridge.scheduler`) does the real-time part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bandmate.models.types import DRUM_CHANNEL, STEPS_PER_BAR, Note, Piece

log = logging.getLogger(__name__)


def channel_for_track(prompt: Piece, track: int, inst: str = "") -> int:
    """The MIDI channel a result track plays on: the prompt track's, else a free one."""
    if track < len(prompt.tracks):
        return prompt.tracks[track].channel
    if inst == "DRUMS":
        return DRUM_CHANNEL
    used = {t.channel for t in prompt.tracks}
    for ch in range(16):
        if ch != DRUM_CHANNEL and ch not in used:
            return ch
    return 0


def velocity_for_track(prompt: Piece, track: int) -> int:
    if track < len(prompt.tracks):
        return prompt.tracks[track].velocity
    return 80


@dataclass
class Placed:
    """A note ready for the scheduler: ``origin_step + note.start`` is its step on the clock."""

    track: int
    note: Note
    channel: int
    velocity: int
    origin_step: int


class StreamPlacer:
    """Buffers streamed notes until the clip is anchored to a bar line, then passes them on.

    ``first_step`` is the result step that should sound on the anchor bar's downbeat: the
    prompt's length for a continuation, 0 for an added track (it plays along the next pass).
    """

    def __init__(self, prompt: Piece, first_step: int, target_bar: int, inst: str = "") -> None:
        self.prompt = prompt
        self.first_step = first_step
        self.target_bar = target_bar
        self.inst = inst
        self.anchor_bar: int | None = None
        self._pending: list[tuple[int, Note]] = []

    @property
    def origin_step(self) -> int:
        assert self.anchor_bar is not None
        return self.anchor_bar * STEPS_PER_BAR - self.first_step

    def _place(self, track: int, note: Note) -> Placed:
        return Placed(
            track,
            note,
            channel_for_track(self.prompt, track, self.inst),
            velocity_for_track(self.prompt, track),
            self.origin_step,
        )

    def note(self, track: int, note: Note) -> list[Placed]:
        if self.anchor_bar is None:
            self._pending.append((track, note))
            return []
        return [self._place(track, note)]

    def anchor(self, earliest_bar: int) -> list[Placed]:
        """Fix the anchor at ``max(target_bar, earliest_bar)``; returns the held-back notes."""
        if self.anchor_bar is not None:
            return []
        self.anchor_bar = max(self.target_bar, earliest_bar)
        if self.anchor_bar > self.target_bar:
            log.info(
                "first bar ready too late for bar %d; playing from bar %d",
                self.target_bar + 1,
                self.anchor_bar + 1,
            )
        out = [self._place(t, n) for t, n in self._pending]
        self._pending.clear()
        return out


class LivePlayback:
    """Feeds one job's streamed notes to the bridge's scheduler through a `StreamPlacer`."""

    LEAD_MS = 120.0  # the click's bar line must be at least this far away
    READY_LEAD_MS = 40.0  # ... and once the first bar is ready, at least this

    def __init__(self, bridge: Any, prompt: Piece, first_step: int, inst: str = "") -> None:
        self.bridge = bridge
        target = bridge.scheduler.next_bar_line(lead_ms=self.LEAD_MS)
        self.placer = StreamPlacer(prompt, first_step, target, inst)
        self.sent = 0

    def _send(self, placed: list[Placed]) -> None:
        for p in placed:
            self.bridge.scheduler.add_notes(
                [p.note], channel=p.channel, velocity=p.velocity, origin_step=p.origin_step
            )
        self.sent += len(placed)

    def note(self, track: int, note: Note) -> None:
        self._send(self.placer.note(track, note))

    def bar_done(self) -> None:
        if self.placer.anchor_bar is None:
            earliest = self.bridge.scheduler.next_bar_line(lead_ms=self.READY_LEAD_MS)
            self._send(self.placer.anchor(earliest))

    finish = bar_done
