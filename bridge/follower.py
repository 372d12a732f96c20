"""Following the DAW's MIDI clock: position and tempo from clock arrival times.

Why a model and not a counter: JACK drops the MIDI of a cycle that xruns, so counting clocks
slips the grid by a 96th note per lost clock; and a DAW changes tempo, which also stretches
the gaps between clocks. Arrival times alone cannot tell "a clock was lost" from "the tempo
dropped" at the moment the long gap is seen, so the follower decides with the clocks that
follow, the way a listener would:

* a *segment* is a run of clocks at one tempo; its least-squares line (index vs arrival time)
  gives the tempo (slope) and maps times to fractional ticks and back;
* a gap of about ``m`` periods (``m >= 2``, the next clock landing on the segment's line at
  ``k + m``) is *tentatively* ``m - 1`` lost clocks. After ``DECIDE`` more clocks the two
  readings are compared: "lost" (the segment's line, every gap counted, a small penalty per
  lost clock) against "tempo change" (consecutive indices on a fresh line from the clock
  before the gap). The better fit wins; a tempo change takes the count back and starts a new
  segment there. A gap followed by a clock that comes at once was a late clock, not a lost
  one;
* a tempo change too small to make a gap shows as drift: ``DRIFT_RUN`` clocks in a row off the
  segment's line on the same side, beyond the jitter (measured, JACK periods quantise
  arrivals), at sane intervals, re-base the segment on the latest clocks;
* a gap longer than ``max_gap`` clocks is a stalled sender: the clocks are counted, and the
  burst that follows is left out of the fit (robust refit) and of the drift test;
* no clock for ``vanish_ticks`` clock periods while running: the DAW has gone. The state
  stops (event ``lost``), so output is silenced and nothing is sent on extrapolated time; only
  Start, Continue or Song Position make it run again.

`AutoClock` (the internal clock until the DAW's shows up) lives here too, beside the follower
it hands over to, so that ``clock`` needs nothing from this module.

Times are ``time.perf_counter_ns()``; ticks are MIDI clocks (24 per quarter note).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import mido
from bandmate.bridge.clock import (
    NS_PER_MIN,
    PPQN,
    TICKS_PER_STEP,
    ClockState,
    InternalClock,
    _Listeners,
)

log = logging.getLogger("bandmate.bridge.clock")

DECIDE = 4  # clocks after a gap before "lost" vs "tempo change" is decided
DRIFT_RUN = 2  # clocks in a row off the line (same side) that re-base the segment
LOSS_PENALTY = 0.15  # per lost clock, in periods (as an RMS residual): losses are rare
VANISH_TICKS = 12  # an eighth note without a clock: the DAW stopped sending
#: an input reader silent for longer than this is itself stuck (or its port gone): its last
#: drain time is no evidence any more, so silence is judged on the wall clock alone
STALE_DRAIN_NS = 1_000_000_000


class MidiClockFollower(_Listeners):
    """Follows MIDI clock / Start / Stop / Continue / Song Position Pointer.

    Feed it every incoming message with its arrival time (``feed``); call ``check(now)``
    now and then (the scheduler does) so a vanished clock is noticed. Between Start (or
    Continue) and the first clock after it the state is not running: the downbeat's time is
    the arrival of that first clock.
    """

    def __init__(self, tempo: float = 120.0, window: int = 48, max_gap: int = 4,
                 vanish_ticks: int = VANISH_TICKS) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.window = window
        self.max_gap = max_gap
        self.vanish_ticks = vanish_ticks
        #: when set (the bridge sets it to its input port's ``drained_ns``): the time up to
        #: which every arrived message has been fed. Silence is only believed up to there,
        #: so a reader thread held up by a busy machine (its clocks still queued, stamped
        #: with their real arrival) is not taken for a DAW that stopped.
        self.input_drained: Callable[[], int] | None = None
        self._hist: deque[tuple[int, int]] = deque(maxlen=window)  # segment: (tick, t_ns)
        self._armed = False  # Start/Continue seen, waiting for the first clock
        self._next_tick = 0  # index the next clock gets when armed / when stopped
        self._pending_event = "start"
        self._deciding: list[tuple[int, int, int]] | None = None  # (tick, t_ns, span)
        self._base: tuple[int, int] | None = None  # last clock before the pending gap
        self._burst = False
        self._noise = 0.0  # mean |residual| (ns): the measured arrival jitter
        self._n_noise = 0
        self._last_ns = 0
        self.lost_ticks = 0
        self.clocks = 0
        self.tempo_changes = 0
        self.vanished = 0
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

    def check(self, now_ns: int) -> bool:
        """Notice a vanished clock: True (and event ``lost``) when it just stopped."""
        drained = self.input_drained() if self.input_drained is not None else now_ns
        if now_ns - drained < STALE_DRAIN_NS:
            now_ns = min(now_ns, drained)
        with self._lock:
            s = self._st
            if not s.running or self._armed or not self._hist:
                return False
            if now_ns - self._last_ns <= self.vanish_ticks * s.ns_per_tick:
                return False
            self._next_tick = self._hist[-1][0] + 1
            self._reset_segment()
            self._st = ClockState(False, s.tempo, float(self._next_tick), now_ns, s.epoch + 1)
            self.vanished += 1
            st = self._st
            gap_ms = (now_ns - self._last_ns) / 1e6
        log.warning("no MIDI clock for %.0f ms (at %.1f BPM): the DAW stopped sending; output "
                    "silenced until it sends Start, Continue or Song Position", gap_ms, st.tempo)
        self._emit("lost", st)
        return True

    def _reset_segment(self) -> None:
        self._hist.clear()
        self._deciding = None
        self._base = None
        self._burst = False

    def _transport(self, event: str, tick: int | None) -> None:
        with self._lock:
            self.seen_clock = True
            if tick is not None:
                self._next_tick = tick
            self._armed = True
            self._reset_segment()
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
            self._reset_segment()
            self._st = ClockState(False, s.tempo, float(self._next_tick), t_ns, s.epoch + 1)
            st = self._st
        self._emit("stop", st)

    def _on_songpos(self, pos: int, t_ns: int) -> None:
        tick = pos * TICKS_PER_STEP  # SPP counts MIDI beats = 16th notes
        with self._lock:
            s = self._st
            self._next_tick = tick
            if s.running:
                self._armed = True  # a jump while running: the next clock lands there
            self._reset_segment()
            self._st = ClockState(False, s.tempo, float(tick), t_ns, s.epoch + 1)
            st = self._st
        self._emit("position", st)

    def _on_clock(self, t_ns: int) -> None:
        with self._lock:
            self.clocks += 1
            self.seen_clock = True
            s = self._st
            if self._armed:
                self._armed = False
                self._reset_segment()
                self._hist.append((self._next_tick, t_ns))
                self._last_ns = t_ns
                self._st = ClockState(True, s.tempo, float(self._next_tick), t_ns, s.epoch)
                event, st = self._pending_event, self._st
            else:
                if s.running:
                    self._advance(t_ns)
                else:
                    # clocks without Start (a stopped DAW that keeps sending clock, or one
                    # back after vanishing): the tempo, not a position
                    self._tempo_only(t_ns)
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
            f = _robust_fit(list(h))
            self._st = ClockState(False, _tempo_of(f, s.tempo), s.tick, s.t_ns, s.epoch)

    # -- the model ------------------------------------------------------------------------
    def _advance(self, t_ns: int) -> None:
        s, h = self._st, self._hist
        self._last_ns = t_ns
        k_last, t_last = h[-1]
        line = _robust_fit(list(h)) if len(h) >= 3 else None
        period = line[1] if line is not None and line[1] > 0 else s.ns_per_tick
        lim = max(0.12 * period, 3.5 * self._noise)
        r = (t_ns - t_last) / period
        m = 1  # clocks this interval spans if clocks were lost
        if self._deciding and self._deciding[-1][2] > 1 and r < 0.5:
            # the "gap" before was a late clock, not a lost one: this one came at once
            self._settle(None)
            k_last = h[-1][0]
        elif r >= 1.5 and line is not None:
            m = round(r)
            if m > self.max_gap:
                self._burst = True  # a stalled sender: count it, keep it out of the fit
                m = 1
            elif self._deciding is None:
                self._deciding, self._base = [], (k_last, t_last)
        n = 1
        if m > 1 and abs(t_ns - (line[0] + line[1] * (k_last + m))) <= lim:
            n = m  # on the line: tentatively m - 1 lost clocks (the next clocks decide)
            self.lost_ticks += m - 1
        k = k_last + n
        if line is not None and not self._burst and not self._deciding:
            # the arrival jitter (JACK quantises arrivals to its period): mean |residual|
            res = min(abs(t_ns - (line[0] + line[1] * k)), 0.5 * period)
            self._noise += (res - self._noise) * (0.05 if self._n_noise >= 20 else 0.2)
            self._n_noise += 1
        h.append((k, t_ns))
        if self._deciding is not None:
            self._deciding.append((k, t_ns, m))
            self._decide(period, final=len(self._deciding) > DECIDE)
        elif line is not None:
            self._check_drift(period, lim)
        if self._burst and line is not None and abs(t_ns - (line[0] + line[1] * k)) < lim:
            self._burst = False  # caught up with the line
        self._anchor(s, lim)

    def _settle(self, spans: list[int] | None, final: bool = True) -> None:
        """Re-index the clocks since the gap: clock i is ``spans[i]`` clocks after the one
        before it (None: 1 each, a late clock), counting the difference as lost."""
        assert self._deciding is not None and self._base is not None
        h = self._hist
        k0 = self._base[0]
        kept = [(k, t) for k, t in h if k <= k0]
        spans = spans or [1] * len(self._deciding)
        k = k0
        dec = []
        for (_k, t, m), n in zip(self._deciding, spans, strict=True):
            k += n
            kept.append((k, t))
            dec.append((k, t, m))
        self.lost_ticks += (kept[-1][0] - h[-1][0]) if h else 0
        h.clear()
        h.extend(kept)
        if final:
            self._deciding, self._base = None, None
        else:
            self._deciding = dec

    def _decide(self, period: float, final: bool) -> None:
        """Lost clocks, a late clock or a tempo change? Readings of the clocks since the gap:
        "lost" (the old line, every gap counted), "late" (the old line, nothing lost) and,
        when the clocks after the gap keep a new pace, "tempo" (each interval counted in that
        pace, so a loss right after a tempo change is counted too; a line fitted from the
        clock before the gap). The best fit wins, each lost clock costing a little.
        Meanwhile the best one so far is used; ``final`` settles it."""
        assert self._deciding is not None and self._base is not None
        dec, (k0, t0) = self._deciding, self._base
        if len(dec) < 3:
            return
        seg = [(k, t) for k, t in self._hist if k <= k0]
        old = _robust_fit(seg) if len(seg) >= 3 else None
        if old is None:
            old = (t0 - period * k0, period)
        pen = (LOSS_PENALTY * old[1]) ** 2
        times = [t0] + [t for _, t, _ in dec]
        ivals = [b - a for a, b in itertools.pairwise(times)]
        # the pace after the gap: the clocks after the one that ended the gap (that one may
        # be late, making the next interval short), averaged over JACK's quantisation,
        # without intervals that hold a loss; close to the old period: no new tempo
        after = ivals[2:]
        med = sorted(after)[len(after) // 2]
        after = [d for d in after if d < 1.5 * med] or after
        pace = sum(after) / len(after)
        readings = {  # spans of the clocks since the gap, and the line they should fit
            "lost": ([m for _, _, m in dec], old),  # every gap counted, the old line
            "late": ([1] * len(dec), old),  # nothing lost: a late clock
        }
        if abs(pace / old[1] - 1) >= 0.12:
            # a new pace (or nothing new: then the two readings above say it all). Its
            # spans in that pace; its line from the clock before the gap, slope fitted
            spans = [max(1, round(d / pace)) for d in ivals]
            js = list(itertools.accumulate(spans))
            b = sum(j * (t - t0) for j, t in zip(js, times[1:], strict=True)) / sum(
                j * j for j in js)
            if abs(b / pace - 1) < 0.12:
                readings["tempo"] = (spans, (t0 - b * k0, b))
        best, best_cost = "lost", float("inf")
        for name, (spans, (a, b)) in readings.items():
            k, cost = k0, 0.0
            for n, t in zip(spans, times[1:], strict=True):
                k += n
                cost += (t - a - b * k) ** 2
            cost += (k - k0 - len(dec)) * pen
            if cost < best_cost:
                best, best_cost = name, cost
        best_b = readings[best][1][1]
        spans = readings[best][0]
        self._settle(spans, final=final)
        if not final:
            return
        lost = sum(spans) - len(spans)
        if best == "tempo" and abs(best_b / old[1] - 1) >= 0.12:
            self._rebase(len(dec) + 1)
            log.info("clock: tempo change to %.1f BPM after a long gap (%d clock(s) lost)",
                     NS_PER_MIN / (best_b * PPQN), lost)
        elif lost:
            log.info("clock: %d clock(s) lost (the clocks after the gap confirm it)", lost)
        else:
            log.debug("clock: a late clock, none lost")

    def _check_drift(self, period: float, lim: float) -> None:
        h = list(self._hist)
        if self._burst or len(h) < DRIFT_RUN + 5 or self._n_noise < 12:
            return
        base = _robust_fit(h[:-DRIFT_RUN])
        if base is None:
            return
        tail = h[-DRIFT_RUN - 1:]
        res = [t - (base[0] + base[1] * k) for k, t in tail[1:]]
        gaps = [(b[1] - a[1]) / max(b[0] - a[0], 1) for a, b in itertools.pairwise(tail)]
        if not all(0.25 * period < g < 3.0 * period for g in gaps):
            return
        if all(x > lim for x in res) or all(x < -lim for x in res):
            self._rebase(DRIFT_RUN + 1)
            log.debug("clock: drift off the line; tempo re-based on the last clocks")

    def _rebase(self, keep: int) -> None:
        """Start a new segment with the last ``keep`` clocks: the tempo changed."""
        tail = list(self._hist)[-keep:]
        self._hist.clear()
        self._hist.extend(tail)
        self.tempo_changes += 1

    def _anchor(self, s: ClockState, lim: float) -> None:
        """State at the newest clock: on the segment's line, or at its arrival when the line
        is off (a tempo change being decided, or too few clocks)."""
        h = self._hist
        k_last, t_last = h[-1]
        f = _robust_fit(list(h)) if len(h) >= 3 else None
        tempo = _tempo_of(f, s.tempo) if len(h) >= 3 else s.tempo
        t = t_last
        if f is not None and not self._deciding:
            t_line = int(f[0] + f[1] * k_last)
            if abs(t_line - t_last) <= lim:
                t = t_line
            elif len(h) >= 3 and not self._burst:
                # off the line (a tempo change not yet re-based): extrapolate at the pace of
                # the last clocks, not the segment's old slope
                (k2, t2) = h[-3]
                if k_last > k2 and t_last > t2:
                    tempo = _tempo_of((0.0, (t_last - t2) / (k_last - k2)), tempo)
        self._st = ClockState(True, tempo, float(k_last), t, s.epoch)


def _robust_fit(pts: list[tuple[int, int]]) -> tuple[float, float] | None:
    """Least squares t = a + b*k, refitted without the clocks far off the first line (a
    stalled sender's burst must not swing the tempo); None if too few points."""
    f = _lsq(pts)
    if f is None or len(pts) < 8:
        return f
    a, b = f
    res = [abs(t - (a + b * k)) for k, t in pts]
    mad = sorted(res)[len(res) // 2]
    lim = max(abs(b) / 2, 4 * mad)
    good = [pt for pt, r in zip(pts, res, strict=True) if r <= lim]
    if len(good) >= max(len(pts) // 2, 3) and len(good) < len(pts):
        return _lsq(good) or f
    return f


def _tempo_of(f: tuple[float, float] | None, prior: float) -> float:
    if f is None or f[1] <= 0:
        return prior
    return min(max(NS_PER_MIN / (f[1] * PPQN), 20.0), 400.0)


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

    def __init__(self, tempo: float = 120.0, vanish_ticks: int | None = None) -> None:
        super().__init__()
        self.internal = InternalClock(tempo)
        self.follower = MidiClockFollower(tempo, vanish_ticks=vanish_ticks or VANISH_TICKS)
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

    def check(self, now_ns: int) -> bool:
        return self._use_follower and self.follower.check(now_ns)

    def state(self) -> ClockState:
        return self.follower.state() if self._use_follower else self.internal.state()

    @property
    def following(self) -> bool:
        return self._use_follower

    @property
    def lost_ticks(self) -> int:
        return self.follower.lost_ticks

