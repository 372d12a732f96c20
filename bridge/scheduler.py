"""The output scheduler: notes at musical positions, played on time, never left hanging.

Why this shape: notes are kept at their *musical* position (a tick on the clock's timeline)
and converted to a ``perf_counter_ns`` target only when they are next in line, using the live
clock state, so a tempo change or a DAW nudging its clock moves every pending note. One thread
waits on a condition variable until the absolute target time (never a relative sleep that
accumulates drift; at most 5 ms at a time so a tempo change is seen). Notes can be added from any
thread while it plays (streaming generation).

Safety: the scheduler knows every sounding note. Every stop path (``stop_output``: user Stop,
DAW transport stop/start/jump, port loss, exit, a signal, an exception in the thread) sends a
note-off for each, then CC 123 (all notes off) and CC 64 = 0 (sustain off) on the channels
used. ``panic`` does it on all 16 channels.

Late policy: a note-on due more than ``late_ms`` ago is dropped (default) or played at once
(``late_policy="play"``); both are counted. Note-offs are never dropped.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import mido
from bandmate.bridge.clock import TICKS_PER_BAR, TICKS_PER_STEP, ClockSource, ClockState
from bandmate.models.types import Note

log = logging.getLogger(__name__)

LATE_POLICIES = ("drop", "play")
MAX_WAIT_S = 0.005
CHECK_S = 0.02  # how often an idle scheduler looks for a vanished clock


@dataclass
class SchedulerConfig:
    """How the scheduler treats late notes and latency."""

    late_policy: str = field(default="drop", metadata={"help": "drop or play late note-ons"})
    late_ms: float = field(default=40.0, metadata={"help": "a note-on later than this is late"})
    out_latency_ms: float = field(
        default=0.0, metadata={"help": "send this much early to make up for output latency"}
    )
    realtime: bool = field(
        default=True,
        metadata={"help": "try real-time priority (SCHED_FIFO 5) for the output thread"},
    )

    def __post_init__(self) -> None:
        if self.late_policy not in LATE_POLICIES:
            raise ValueError(
                f"late_policy must be one of {LATE_POLICIES}, got {self.late_policy!r}"
            )
        if not 0.0 <= self.late_ms <= 10_000.0:
            raise ValueError(f"late_ms must be 0..10000, got {self.late_ms}")
        if not 0.0 <= self.out_latency_ms <= 500.0:
            raise ValueError(f"out_latency_ms must be 0..500, got {self.out_latency_ms}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> SchedulerConfig:
        return cls(**d)


@dataclass
class SchedulerStats:
    notes_on: int = 0
    notes_off: int = 0
    late_played: int = 0
    late_dropped: int = 0
    retriggered: int = 0
    max_late_ms: float = 0.0
    stops: int = 0
    refused: int = 0  # notes of a cancelled job (or past its cut-off) never queued


@dataclass(order=True)
class _Event:
    tick: float
    order: int  # 0 = note-off first at the same tick, 1 = note-on
    seq: int
    channel: int = field(compare=False)
    pitch: int = field(compare=False)
    velocity: int = field(compare=False)
    note_id: int = field(compare=False)
    job: int = field(default=0, compare=False)


#: sent(message, target_ns, sent_ns) for every message the scheduler sends from its heap
SentHook = Callable[[mido.Message, int, int], None]
#: job_sent(job, message, target_ns, sent_ns) for the messages of notes added with a job id
#: (message None: a note-on of the job dropped as late)
JobSentHook = Callable[[int, mido.Message | None, int, int], None]


class Scheduler:
    """One output thread over a heap of note events on the clock's tick timeline."""

    def __init__(
        self,
        send: Callable[[mido.Message], object],
        clock: ClockSource,
        config: SchedulerConfig | None = None,
    ) -> None:
        self._send = send
        self.clock = clock
        self.config = config or SchedulerConfig()
        self.stats = SchedulerStats()
        self._heap: list[_Event] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._sounding: dict[tuple[int, int], int] = {}  # (channel, pitch) -> note id
        self._dropped_ids: set[int] = set()
        self._channels_used: set[int] = set()
        self._cutoff: dict[int, float] = {}  # job -> first tick it may no longer play
        self._closing = False
        self._thread: threading.Thread | None = None
        self.on_sent: list[SentHook] = []
        self.on_job_sent: list[JobSentHook] = []
        clock.add_listener(self._on_clock_event)

    # -- adding notes ---------------------------------------------------------------------
    def add_note(
        self, tick_on: float, tick_off: float, channel: int, pitch: int, velocity: int,
        job: int = 0,
    ) -> int:
        """Schedule one note on absolute ticks; returns its id, or 0 when ``job`` was
        cancelled (or cut off before ``tick_on``): the check is made under the same lock
        that ``cancel_job`` takes, so a generation thread can never slip a note in after a
        Stop."""
        if not 0 <= channel <= 15 or not 0 <= pitch <= 127 or not 1 <= velocity <= 127:
            raise ValueError(f"bad note: channel {channel} pitch {pitch} velocity {velocity}")
        if tick_off <= tick_on:
            raise ValueError(f"tick_off {tick_off} must be after tick_on {tick_on}")
        nid = next(self._ids)
        with self._cond:
            if job and tick_on >= self._cutoff.get(job, float("inf")):
                self.stats.refused += 1
                return 0
            heapq.heappush(self._heap, _Event(tick_on, 1, next(self._seq), channel, pitch,
                                              velocity, nid, job))
            heapq.heappush(self._heap, _Event(tick_off, 0, next(self._seq), channel, pitch, 0,
                                              nid, job))
            self._cond.notify()
        return nid

    def add_notes(
        self, notes: Iterable[Note], channel: int, velocity: int, origin_step: int,
        job: int = 0,
    ) -> int:
        """Schedule Notes: step ``s`` plays at tick ``(origin_step + s) * 6``. Returns how
        many were queued (a cancelled job's are refused)."""
        n = 0
        for note in notes:
            n += bool(self.add_note(
                (origin_step + note.start) * TICKS_PER_STEP,
                (origin_step + note.end) * TICKS_PER_STEP,
                channel, note.pitch, velocity, job,
            ))
        return n

    def cancel_job(self, job: int, from_tick: float | None = None) -> int:
        """End job ``job``: from now on (``from_tick`` None) or from a tick on (a bar line,
        when a new job replaces it). Its pending notes that start at or after the cut-off go,
        notes of it that would still sound there end there, its sounding notes end now (None),
        and notes it adds later are refused. Returns how many pending notes were removed."""
        if not job:
            return 0
        with self._cond:
            cut = float("-inf") if from_tick is None else float(from_tick)
            self._cutoff[job] = min(cut, self._cutoff.get(job, float("inf")))
            on_ids = {e.note_id for e in self._heap if e.job == job and e.order == 1}
            gone = {e.note_id for e in self._heap
                    if e.job == job and e.order == 1 and e.tick >= cut}
            keep = []
            for e in self._heap:
                if e.job == job and e.note_id in gone:
                    continue
                if e.job == job and e.order == 0 and e.tick > cut and from_tick is not None:
                    e.tick = cut  # the old part ends on the bar line the new one starts on
                keep.append(e)
            now_offs = []
            if from_tick is None:  # sounding notes of the job: end them now
                for key, nid in list(self._sounding.items()):
                    ev = next((e for e in keep if e.note_id == nid and e.order == 0), None)
                    if ev is not None and ev.job == job and nid not in on_ids:
                        del self._sounding[key]
                        keep.remove(ev)
                        now_offs.append(key)
            heapq.heapify(keep)
            self._heap = keep
            for ch, p in now_offs:
                try:
                    self._send(mido.Message("note_off", channel=ch, note=p, velocity=0))
                except Exception:
                    log.exception("send failed while cancelling job %d", job)
            self.stats.notes_off += len(now_offs)
            self._cond.notify()
        return len(gone)

    def next_bar_line(self, lead_ms: float = 50.0, state: ClockState | None = None) -> int:
        """The first bar whose downbeat is at least ``lead_ms`` from now (clock stopped: the
        bar at or after the stopped position)."""
        st = state or self.clock.state()
        now = time.perf_counter_ns()
        if not st.running:
            return int(-(-st.tick // TICKS_PER_BAR))
        tick = st.tick_at(now + int(lead_ms * 1e6))
        return int(-(-tick // TICKS_PER_BAR))

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def pending_notes(self) -> list[tuple[float, float, int, int, int]]:
        """Pending notes as sorted (tick_on, tick_off, channel, pitch, velocity)."""
        with self._cond:
            evs = list(self._heap)
        on = {e.note_id: e for e in evs if e.order == 1}
        off = {e.note_id: e for e in evs if e.order == 0}
        return sorted((e.tick, off[i].tick, e.channel, e.pitch, e.velocity)
                      for i, e in on.items() if i in off)

    def sounding(self) -> set[tuple[int, int]]:
        with self._cond:
            return set(self._sounding)

    # -- thread ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._run, name="bandmate-scheduler",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread after sending note-offs for everything sounding."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        self._thread = None
        self.stop_output("close")

    def _run(self) -> None:
        if self.config.realtime and hasattr(os, "sched_setscheduler"):
            # Below JACK's own threads (10+). Without the rtprio right this fails: fine,
            # the thread then runs at normal priority.
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
                log.debug("scheduler thread: real-time priority")
            except OSError as e:
                log.debug("scheduler thread: no real-time priority (%s)", e)
        while True:
            try:
                self._loop()
                return
            except Exception:
                # silence everything, then keep serving: a bad event must not end output
                # for the rest of the session
                log.exception("scheduler error; output silenced, scheduler continues")
                self.stop_output("scheduler error")

    def _loop(self) -> None:
        cfg = self.config
        early_ns = int(cfg.out_latency_ms * 1e6)
        late_ns = int(cfg.late_ms * 1e6)
        check = getattr(self.clock, "check", None)
        while True:
            if check is not None:
                check(time.perf_counter_ns())  # a vanished DAW clock ("lost": silenced)
            with self._cond:
                if self._closing:
                    return
                if not self._heap:
                    self._cond.wait(None if check is None else CHECK_S)
                    continue
                st = self.clock.state()
                ev = self._heap[0]
                target = st.ns_at(ev.tick)
                if target is None:  # clock stopped: hold
                    self._cond.wait(0.01)
                    continue
                target -= early_ns
                now = time.perf_counter_ns()
                if target > now:
                    self._cond.wait(min((target - now) / 1e9, MAX_WAIT_S))
                    continue
                heapq.heappop(self._heap)
                msg = self._play(ev, now - target, late_ns)
                dropped = msg is None and ev.order == 1 and ev.note_id in self._dropped_ids
            if dropped and ev.job:
                for jhook in list(self.on_job_sent):  # a late note-on dropped: msg None
                    try:
                        jhook(ev.job, None, target, now)
                    except Exception:
                        log.exception("on_job_sent hook failed")
            if msg is not None:
                sent_ns = time.perf_counter_ns()
                for hook in list(self.on_sent):
                    try:
                        hook(msg, target, sent_ns)
                    except Exception:
                        log.exception("on_sent hook failed")
                for jhook in list(self.on_job_sent) if ev.job else ():
                    try:
                        jhook(ev.job, msg, target, sent_ns)
                    except Exception:
                        log.exception("on_job_sent hook failed")

    def _play(self, ev: _Event, late: int, late_ns: int) -> mido.Message | None:
        """Send one event (lock held). Returns the message sent, or None."""
        key = (ev.channel, ev.pitch)
        if ev.order == 0:  # note-off: only for the note that sounds now
            if self._sounding.get(key) != ev.note_id:
                self._dropped_ids.discard(ev.note_id)
                return None
            del self._sounding[key]
            msg = mido.Message("note_off", channel=ev.channel, note=ev.pitch, velocity=0)
            self._send(msg)
            self.stats.notes_off += 1
            return msg
        if late > late_ns:
            if self.config.late_policy == "drop":
                self.stats.late_dropped += 1
                self._dropped_ids.add(ev.note_id)
                log.debug("late by %.1f ms: dropped note %d", late / 1e6, ev.pitch)
                return None
            self.stats.late_played += 1
        self.stats.max_late_ms = max(self.stats.max_late_ms, late / 1e6)
        if key in self._sounding:  # same pitch still sounding: end it first
            self._send(mido.Message("note_off", channel=ev.channel, note=ev.pitch, velocity=0))
            self.stats.notes_off += 1
            self.stats.retriggered += 1
        self._sounding[key] = ev.note_id
        self._channels_used.add(ev.channel)
        msg = mido.Message("note_on", channel=ev.channel, note=ev.pitch, velocity=ev.velocity)
        self._send(msg)
        self.stats.notes_on += 1
        return msg

    # -- safety ---------------------------------------------------------------------------
    def stop_output(self, reason: str = "stop", channels: Iterable[int] | None = None) -> int:
        """Clear pending notes; note-off for each sounding note; CC 123 and CC 64=0 on the
        channels used (or ``channels``). Returns how many notes were ended."""
        with self._cond:
            self._heap.clear()
            sounding = list(self._sounding)
            self._sounding.clear()
            self._dropped_ids.clear()
            chans = set(self._channels_used if channels is None else channels)
            chans.update(c for c, _ in sounding)
            msgs = [mido.Message("note_off", channel=ch, note=p, velocity=0)
                    for ch, p in sounding]
            for ch in sorted(chans):
                msgs.append(mido.Message("control_change", channel=ch, control=123, value=0))
                msgs.append(mido.Message("control_change", channel=ch, control=64, value=0))
            for m in msgs:  # one failing send must not keep the rest from going out
                try:
                    self._send(m)
                except Exception:
                    log.exception("send failed while stopping output: %s", m)
            self.stats.notes_off += len(sounding)
            self.stats.stops += 1
            self._cond.notify()
        if sounding or reason not in ("close",):
            log.info("output stopped (%s): %d sounding note(s) ended", reason, len(sounding))
        return len(sounding)

    def panic(self) -> int:
        """Stop output and silence all 16 channels."""
        return self.stop_output("panic", channels=range(16))

    def _on_clock_event(self, event: str, st: ClockState) -> None:
        # a transport stop, a jump or a vanished clock voids what is sounding and the pending
        # times; Start / Continue keep notes queued while stopped (they play from the new
        # downbeat; the live engine ends its own job's notes on Start)
        if event in ("stop", "position", "lost"):
            self.stop_output(f"transport {event}")
