"""Musical time: the DAW's MIDI clock or an internal tempo, behind one interface.

The DAW's clock is followed by ``bandmate.bridge.follower.MidiClockFollower`` (lost clocks,
tempo changes, a vanished clock); this module holds the shared state type, the internal
clock and the listener plumbing. A ``ClockState`` maps any time to a fractional tick and
back, which the capture (quantising input) and the scheduler (timing output) both use.

Times are ``time.perf_counter_ns()``. Ticks are MIDI clocks: 24 per quarter note,
6 per 16th step, 96 per 4/4 bar.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

PPQN = 24
TICKS_PER_STEP = 6
TICKS_PER_BAR = 96
NS_PER_MIN = 60_000_000_000


def ns_per_tick(tempo: float) -> float:
    return NS_PER_MIN / (tempo * PPQN)


@dataclass(frozen=True)
class ClockState:
    """A snapshot: at ``t_ns`` the position was ``tick``; while running it advances at tempo.

    ``epoch`` changes on every discontinuity (start, stop, continue, position jump), so a
    user of the clock can tell that times computed from an older snapshot are void.
    """

    running: bool
    tempo: float
    tick: float
    t_ns: int
    epoch: int = 0

    @property
    def ns_per_tick(self) -> float:
        return ns_per_tick(self.tempo)

    def tick_at(self, t_ns: int) -> float:
        if not self.running:
            return self.tick
        return self.tick + (t_ns - self.t_ns) / self.ns_per_tick

    def ns_at(self, tick: float) -> int | None:
        """When ``tick`` happens (None while stopped: it has no time yet)."""
        if not self.running:
            return None
        return int(self.t_ns + (tick - self.tick) * self.ns_per_tick)

    def step_at(self, t_ns: int) -> float:
        return self.tick_at(t_ns) / TICKS_PER_STEP

    def bar_at(self, t_ns: int) -> float:
        return self.tick_at(t_ns) / TICKS_PER_BAR


#: listener(event, state); events: "start", "stop", "continue", "position", "lost" (the
#: DAW's clock vanished while running)
ClockListener = Callable[[str, ClockState], None]


class ClockSource(Protocol):
    """What the capture and the scheduler need from a clock."""

    def state(self) -> ClockState: ...

    def add_listener(self, fn: ClockListener) -> None: ...


class _Listeners:
    def __init__(self) -> None:
        self._listeners: list[ClockListener] = []

    def add_listener(self, fn: ClockListener) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: ClockListener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _emit(self, event: str, st: ClockState) -> None:
        for fn in list(self._listeners):
            try:
                fn(event, st)
            except Exception:
                log.exception("clock listener failed on %s", event)


class InternalClock(_Listeners):
    """A clock at a set tempo, for when the DAW sends none (or for the app's own playback)."""

    def __init__(self, tempo: float = 120.0) -> None:
        super().__init__()
        if not 20.0 <= tempo <= 400.0:
            raise ValueError(f"tempo must be 20..400 BPM, got {tempo}")
        self._lock = threading.Lock()
        self._st = ClockState(False, float(tempo), 0.0, time.perf_counter_ns(), 0)

    def state(self) -> ClockState:
        return self._st

    def start(self, at_ns: int | None = None, tick: float = 0.0) -> None:
        with self._lock:
            t = time.perf_counter_ns() if at_ns is None else at_ns
            self._st = ClockState(True, self._st.tempo, tick, t, self._st.epoch + 1)
            st = self._st
        self._emit("start", st)

    def stop(self) -> None:
        with self._lock:
            now = time.perf_counter_ns()
            s = self._st
            self._st = ClockState(False, s.tempo, s.tick_at(now), now, s.epoch + 1)
            st = self._st
        self._emit("stop", st)

    def set_tempo(self, tempo: float) -> None:
        """Change tempo keeping the current position (pending notes move with it)."""
        if not 20.0 <= tempo <= 400.0:
            raise ValueError(f"tempo must be 20..400 BPM, got {tempo}")
        with self._lock:
            now = time.perf_counter_ns()
            s = self._st
            self._st = ClockState(s.running, float(tempo), s.tick_at(now), now, s.epoch)

    def locate(self, tick: float) -> None:
        with self._lock:
            now = time.perf_counter_ns()
            s = self._st
            self._st = ClockState(s.running, s.tempo, float(tick), now, s.epoch + 1)
            st = self._st
        self._emit("position", st)

