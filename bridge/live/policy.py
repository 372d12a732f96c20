"""Where a generated part goes: one policy for the trigger's bar, the start bar, the new
part's channel and velocity (used by ``bandmate jam`` and the app alike).

Why one module: the two front ends used to decide these each in their own way and disagreed
(velocity, fallback channel, the start bar's lead). Everything here is a pure function or a
small value object over a ``ClockState`` and a prompt ``Piece``, tested without ports.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from bandmate.bridge.clock import TICKS_PER_BAR, ClockState
from bandmate.models.types import DRUM_CHANNEL, STEPS_PER_BAR, Note, Piece

log = logging.getLogger("bandmate.live")

#: A trigger this many clocks (1/8 beat, a 32nd note) before a bar line counts as on it.
#: Why: a DAW sends a downbeat trigger right after (or just before) that beat's clock, JACK
#: delivers both at period boundaries, and the follower's line can put the bar line a
#: fraction of a clock after the trigger's arrival; a player pressing "on the one" is often a
#: few tens of ms early. 3 clocks is 62 ms at 120 BPM: far more than that jitter, far less
#: than any trigger meant for the bar before (which comes while that bar plays).
TRIGGER_TOLERANCE_TICKS = 3.0
#: the first generated bar must be ready this long before the bar line it starts on
LEAD_MS = 100.0
FALLBACK_VELOCITY = 80
FALLBACK_CHANNEL = 15


def trigger_bar(state: ClockState, t_ns: int,
                tolerance_ticks: float = TRIGGER_TOLERANCE_TICKS) -> int:
    """The bar a trigger at ``t_ns`` belongs to: the prompt is the bars before it, the
    output starts at the bar after it (see ``TRIGGER_TOLERANCE_TICKS``)."""
    tick = state.tick_at(t_ns) if state.running else state.tick
    return int((tick + tolerance_ticks) // TICKS_PER_BAR)


def earliest_bar(state: ClockState, lead_ms: float = LEAD_MS, now_ns: int | None = None) -> int:
    """The first bar whose downbeat is at least ``lead_ms`` from now (stopped: the bar at or
    after the stopped position)."""
    if not state.running:
        return int(-(-state.tick // TICKS_PER_BAR))
    now = time.perf_counter_ns() if now_ns is None else now_ns
    tick = state.tick_at(now + int(lead_ms * 1e6))
    return int(-(-tick // TICKS_PER_BAR))


def channel_for_track(prompt: Piece, track: int, label: str | None = None,
                      taken: dict[int, int] | None = None) -> int:
    """A result track's MIDI channel: the prompt track's; a new track gets channel 10 for
    DRUMS, else the first channel no prompt track (nor another new track in ``taken``)
    uses, channel 16 when all are taken."""
    if track < len(prompt.tracks):
        return prompt.tracks[track].channel
    if taken is not None and track in taken:
        return taken[track]
    if label == "DRUMS":
        ch = DRUM_CHANNEL
    else:
        used = {t.channel for t in prompt.tracks} | set((taken or {}).values())
        free = [c for c in range(16) if c not in used and c != DRUM_CHANNEL]
        ch = free[0] if free else FALLBACK_CHANNEL
    if taken is not None:
        taken[track] = ch
    return ch


def velocity_for_track(prompt: Piece, track: int, fixed: int | None = None) -> int:
    """``fixed`` when set; else the prompt track's velocity; a new track plays at the
    prompt's average, so it sits in the same dynamic as the parts it joins."""
    if fixed is not None:
        return fixed
    if track < len(prompt.tracks):
        return prompt.tracks[track].velocity
    if not prompt.tracks:
        return FALLBACK_VELOCITY
    return int(sum(t.velocity for t in prompt.tracks) / len(prompt.tracks))


@dataclass(frozen=True)
class Placed:
    """A note ready for the scheduler: ``origin_step + note.start`` is its step on the clock."""

    track: int
    note: Note
    channel: int
    velocity: int
    origin_step: int


class StreamPlacer:
    """Holds streamed notes until the clip is anchored to a bar line, then passes them on.

    ``first_step`` is the result step that sounds on the anchor bar's downbeat: the prompt's
    length for a continuation, 0 for an added track (it plays along the next pass). Notes
    before it are the prompt echoed back by the engine: never replayed.
    """

    def __init__(self, prompt: Piece, first_step: int, target_bar: int, label: str | None = None,
                 velocity: int | None = None) -> None:
        self.prompt = prompt
        self.first_step = first_step
        self.target_bar = target_bar
        self.label = label
        self.velocity = velocity
        self.anchor_bar: int | None = None
        self._pending: list[tuple[int, Note]] = []
        self._taken: dict[int, int] = {}

    @property
    def origin_step(self) -> int:
        assert self.anchor_bar is not None
        return self.anchor_bar * STEPS_PER_BAR - self.first_step

    def _place(self, track: int, note: Note) -> Placed:
        return Placed(track, note, channel_for_track(self.prompt, track, self.label, self._taken),
                      velocity_for_track(self.prompt, track, self.velocity), self.origin_step)

    def note(self, track: int, note: Note) -> list[Placed]:
        if note.start < self.first_step:
            return []  # a prompt note echoed back: never replay the user's own notes
        if self.anchor_bar is None:
            self._pending.append((track, note))
            return []
        return [self._place(track, note)]

    def anchor(self, earliest_bar: int) -> list[Placed]:
        """Fix the anchor at ``max(target_bar, earliest_bar)``; returns the held-back notes."""
        if self.anchor_bar is not None:
            return []
        self.anchor_bar = max(self.target_bar, earliest_bar)
        out = [self._place(t, n) for t, n in self._pending]
        self._pending.clear()
        return out
