"""Musical time: the DAW's MIDI clock or an internal tempo, behind one interface.

Why timing and not only counting: JACK drops the MIDI of a cycle that xruns, so a clock
follower that only counts clocks slips the whole grid by a 96th note per lost clock. Here each
clock is placed on a least-squares line through the recent clocks (index vs arrival time): a
clock that arrives two periods after the last one is tick k+2, not k+1. The same line gives a
smoothed tempo (its slope) and maps any time to a fractional tick and back, which the capture
(quantising input) and the scheduler (timing output) both use.

Times are ``time.perf_counter_ns()``. Ticks are MIDI clocks: 24 per quarter note,
6 per 16th step, 96 per 4/4 bar.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import mido

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


#: listener(event, state); events: "start", "stop", "continue", "position"
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


class MidiClockFollower(_Listeners):
    """Follows MIDI clock / Start / Stop / Continue / Song Position Pointer.

    Feed it every incoming message with its arrival time (``feed``). Between Start (or
    Continue) and the first clock after it the state is not running: the downbeat's time is
    the arrival of that first clock.
    """

    def __init__(self, tempo: float = 120.0, window: int = 48, max_gap: int = 4) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.window = window
        self.max_gap = max_gap
        self._hist: deque[tuple[int, int]] = deque(maxlen=window)  # (tick index, t_ns)
        self._armed = False  # Start/Continue seen, waiting for the first clock
        self._next_tick = 0  # index the next clock gets when armed / when stopped
        self._last_gap = 0
        self._pending_event = "start"
        self.lost_ticks = 0
        self.clocks = 0
        self.seen_clock = False
        self._st = ClockState(False, float(tempo), 0.0, time.perf_counter_ns(), 0)

    def state(self) -> ClockState:
        return self._st

    # -- input --------------------------------------------------------------------------
    def feed(self, msg: mido.Message, t_ns: int) -> bool:
        """Handle one message; True if it was a clock/transport message."""
        kind = msg.type
        if kind == "clock":
            self._on_clock(t_ns)
        elif kind == "start":
            self._transport("start", 0)
        elif kind == "continue":
            self._transport("continue", None)
        elif kind == "stop":
            self._on_stop(t_ns)
        elif kind == "songpos":
            self._on_songpos(msg.pos, t_ns)
        else:
            return False
        return True

    def _transport(self, event: str, tick: int | None) -> None:
        with self._lock:
            self.seen_clock = True
            if tick is not None:
                self._next_tick = tick
            self._armed = True
            self._hist.clear()
            self._last_gap = 0
            s = self._st
            self._st = ClockState(False, s.tempo, float(self._next_tick), s.t_ns, s.epoch + 1)
        # listeners learn of it when the first clock fixes the time (see _on_clock)
        self._pending_event = event

    def _on_stop(self, t_ns: int) -> None:
        with self._lock:
            s = self._st
            self._armed = False
            if self._hist:
                self._next_tick = self._hist[-1][0] + 1
            self._hist.clear()
            self._st = ClockState(False, s.tempo, float(self._next_tick), t_ns, s.epoch + 1)
            st = self._st
        self._emit("stop", st)

    def _on_songpos(self, pos: int, t_ns: int) -> None:
        tick = pos * TICKS_PER_STEP  # SPP counts MIDI beats = 16th notes
        with self._lock:
            s = self._st
            self._next_tick = tick
            running = s.running
            self._hist.clear()
            self._last_gap = 0
            if running:
                # a jump while running: the next clock lands on the new position
                self._armed = True
            self._st = ClockState(False, s.tempo, float(tick), t_ns, s.epoch + 1)
            st = self._st
        self._emit("position", st)

    def _on_clock(self, t_ns: int) -> None:
        event = None
        with self._lock:
            self.clocks += 1
            self.seen_clock = True
            s = self._st
            if self._armed or not s.running:
                if not self._armed:
                    # clocks without Start (DAW stopped but sending clock, as many do):
                    # they give the tempo, not a position
                    self._tempo_only(t_ns)
                    return
                self._armed = False
                self._hist.clear()
                self._hist.append((self._next_tick, t_ns))
                self._st = ClockState(True, s.tempo, float(self._next_tick), t_ns, s.epoch)
                event = getattr(self, "_pending_event", "start")
                st = self._st
            else:
                self._advance(t_ns)
                return
        self._emit(event, st)

    def _tempo_only(self, t_ns: int) -> None:
        h = self._hist
        k = h[-1][0] + 1 if h else 0
        if h and t_ns - h[-1][1] > 4 * self._st.ns_per_tick:
            h.clear()
            k = 0
        h.append((k, t_ns))
        if len(h) >= 8:
            s = self._st
            self._st = ClockState(False, self._fit_tempo(s.tempo), s.tick, s.t_ns, s.epoch)

    def _advance(self, t_ns: int) -> None:
        s = self._st
        h = self._hist
        k_last = h[-1][0]
        # index from the fitted line: where does this arrival fall?
        k_est = s.tick + (t_ns - s.t_ns) / s.ns_per_tick
        n = round(k_est - k_last)
        if n < 1 and self._last_gap:
            # the "gap" before was a late clock, not a lost one (this one is early on the
            # line built from it): take the gap back
            g = self._last_gap
            k_prev, t_prev = h.pop()
            h.append((k_prev - g, t_prev))
            self.lost_ticks -= g
            k_last -= g
            self._last_gap = 0
            log.debug("clock gap taken back: clock %d was late, not lost", k_last)
        if n < 1 or len(h) < 8:
            n = 1  # too few clocks for a trustworthy line: count them
        if n > 1:
            if n > self.max_gap:
                # far too late for lost clocks (JACK loses a cycle's worth, not a beat): the
                # sender stalled. Count it as the next clock; the robust fit ignores it.
                n = 1
                self._last_gap = 0
            elif self._last_gap:
                # two gaps in a row: the tempo dropped, no clocks were lost. Take the first
                # "gap" back and re-base the line on the last two clocks.
                g = self._last_gap
                self.lost_ticks -= g
                k_prev, t_prev = h.pop()
                k_last = k_prev - g
                h.clear()
                h.append((k_last, t_prev))
                n = 1
                self._last_gap = 0
            else:
                self.lost_ticks += n - 1
                self._last_gap = n - 1
                log.debug("clock gap: %d clock(s) missing before tick %d", n - 1, k_last + n)
        else:
            self._last_gap = 0
        h.append((k_last + n, t_ns))
        tempo = self._fit_tempo(s.tempo)
        # anchor the state on the line at the newest point
        k0, t0 = self._line_point()
        self._st = ClockState(True, tempo, k0, t0, s.epoch)

    def _fit(self) -> tuple[float, float] | None:
        """Least squares t = a + b*k over the history, refitted without the clocks far off
        the first line (a sender that stalls and then sends a burst
        must not swing the tempo); None if too few points."""
        pts = list(self._hist)
        f = _lsq(pts)
        if f is None or len(pts) < 8:
            return f
        a, b = f
        res = [abs(t - (a + b * k)) for k, t in pts]
        # arrival times are quantised to JACK periods (up to ~5 ms of honest jitter): only
        # reject points well outside both half a clock and 4x the typical residual
        mad = sorted(res)[len(res) // 2]
        lim = max(abs(b) / 2, 4 * mad)
        good = [pt for pt, r in zip(pts, res, strict=True) if r <= lim]
        if len(good) >= max(len(pts) // 2, 3) and len(good) < len(pts):
            return _lsq(good) or f
        return f

    def _fit_tempo(self, prior: float) -> float:
        f = self._fit()
        if f is None or f[1] <= 0:
            return prior
        tempo = NS_PER_MIN / (f[1] * PPQN)
        return min(max(tempo, 20.0), 400.0)

    def _line_point(self) -> tuple[float, int]:
        k_last, t_last = self._hist[-1]
        f = self._fit()
        if f is None:
            return float(k_last), t_last
        a, b = f
        return float(k_last), int(a + b * k_last)


def _lsq(pts: list[tuple[int, int]]) -> tuple[float, float] | None:
    n = len(pts)
    if n < 3:
        return None
    mk = sum(k for k, _ in pts) / n
    mt = sum(t for _, t in pts) / n
    sxx = sum((k - mk) ** 2 for k, _ in pts)
    if sxx <= 0:
        return None
    sxy = sum((k - mk) * (t - mt) for k, t in pts)
    b = sxy / sxx
    return mt - b * mk, b


class AutoClock(_Listeners):
    """The internal clock until the DAW's clock shows up, then the DAW's.

    Why: a user with no clock routed still gets a steady grid at ``tempo``; once the DAW
    sends Start/Continue/Song Position, the follower takes over for good.
    """

    def __init__(self, tempo: float = 120.0) -> None:
        super().__init__()
        self.internal = InternalClock(tempo)
        self.follower = MidiClockFollower(tempo)
        self._use_follower = False
        self.internal.add_listener(self._from_internal)
        self.follower.add_listener(self._from_follower)

    def _from_internal(self, event: str, st: ClockState) -> None:
        if not self._use_follower:
            self._emit(event, st)

    def _from_follower(self, event: str, st: ClockState) -> None:
        if not self._use_follower:
            self._use_follower = True
            log.info("MIDI clock from the DAW: following it (internal clock off)")
        self._emit(event, st)

    def feed(self, msg: mido.Message, t_ns: int) -> bool:
        return self.follower.feed(msg, t_ns)

    def state(self) -> ClockState:
        return self.follower.state() if self._use_follower else self.internal.state()

    @property
    def following(self) -> bool:
        return self._use_follower
