"""The live engine: capture -> prompt -> generation job -> scheduler, with no Qt in it.

Why one engine: ``bandmate jam`` and the app's window used to carry their own copies of this
path, and the copies disagreed. Here is the one path: both front ends send commands
(``trigger``, ``stop``, ``panic``) and listen to ``LiveEvent`` reports; notes go from the
generation thread straight into the scheduler (never through a GUI event loop).

Jobs have a clear life. One worker thread runs one job at a time, and at most one job plays:
* a new trigger ends the running job: its generation is cancelled, and its notes from the
  next bar line on are removed (notes it adds later are refused), so the new part takes over
  on that bar line; the log says so ("replaces");
* Stop and Panic end the running job and every queued one at any moment, before its first
  note too: the job's cancel event stops the generation loop, and its id, checked by the
  scheduler under its own lock where notes enter, refuses anything it would still add;
* the DAW's Start, Song Position, Stop or a vanished clock end the job as well (its bar
  positions belong to a timeline that is gone).
Every count in the log ("first note out", "all N notes sent") names its job.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bandmate.bridge.capture import Capture
from bandmate.bridge.clock import TICKS_PER_BAR, ClockSource, ClockState
from bandmate.bridge.live.job import Generator, LiveEvent, LiveJob
from bandmate.bridge.live.policy import (
    LEAD_MS,
    TRIGGER_TOLERANCE_TICKS,
    StreamPlacer,
    earliest_bar,
    trigger_bar,
)
from bandmate.bridge.scheduler import Scheduler
from bandmate.models.types import STEPS_PER_BAR, Piece

log = logging.getLogger("bandmate.live")

EngineListener = Callable[[LiveEvent], None]


@dataclass
class LiveConfig:
    """Prompt length and placement of the live engine."""

    bars: int = field(default=4, metadata={"help": "prompt bars (and bars to generate)"})
    lead_ms: float = field(default=LEAD_MS,
                           metadata={"help": "first bar must be ready this long before its bar"})
    velocity: int | None = field(default=None, metadata={"help": "None: the prompt's"})
    tolerance_ticks: float = field(default=TRIGGER_TOLERANCE_TICKS,
                                   metadata={"help": "a trigger this early counts as on the bar"})

    def __post_init__(self) -> None:
        if not 1 <= self.bars <= 16:
            raise ValueError(f"bars must be 1..16, got {self.bars}")
        if not 0 <= self.lead_ms <= 5000:
            raise ValueError(f"lead_ms must be 0..5000, got {self.lead_ms}")
        if self.velocity is not None and not 1 <= self.velocity <= 127:
            raise ValueError(f"velocity must be 1..127 or None, got {self.velocity}")
        if not 0 <= self.tolerance_ticks <= 24:
            raise ValueError(f"tolerance_ticks must be 0..24, got {self.tolerance_ticks}")

    def to_json(self) -> dict:
        return asdict(self)


class LiveEngine:
    """Commands in (any thread), ``LiveEvent`` reports out (on engine threads: be quick)."""

    def __init__(self, clock: ClockSource, capture: Capture, scheduler: Scheduler,
                 generator: Generator | None = None, config: LiveConfig | None = None) -> None:
        self.clock, self.capture, self.scheduler = clock, capture, scheduler
        self.generator = generator
        self.config = config or LiveConfig()
        self._q: queue.Queue[LiveJob | None] = queue.Queue()
        self._lock = threading.RLock()
        self._current: LiveJob | None = None  # the job generating or playing
        self._jobs: dict[int, LiveJob] = {}  # recent jobs by id (for the send hook)
        self._listeners: list[EngineListener] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.jobs_done = 0
        self.last: LiveJob | None = None
        scheduler.on_job_sent.append(self._on_job_sent)
        clock.add_listener(self._on_clock_event)

    # -- reports --------------------------------------------------------------------------
    def add_listener(self, fn: EngineListener) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: EngineListener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _report(self, kind: str, job: LiveJob | None, **info: Any) -> None:
        ev = LiveEvent(kind, job, info)
        for fn in list(self._listeners):
            try:
                fn(ev)
            except Exception:
                log.exception("live engine listener failed on %s", kind)

    # -- commands -------------------------------------------------------------------------
    def prompt_at(self, t_ns: int, bars: int | None = None) -> tuple[Piece, int]:
        """The prompt a trigger at ``t_ns`` gets, and the bar the trigger belongs to."""
        st = self.clock.state()
        trig = trigger_bar(st, t_ns, self.config.tolerance_ticks)
        return self.capture.current_bars(bars or self.config.bars, before_bar=trig), trig

    def trigger(self, kind: str, t_ns: int | None = None, label: str | None = None,
                bars: int | None = None, generator: Generator | None = None,
                prompt: Piece | None = None) -> LiveJob:
        """Queue a Continue (``kind="continue"``) or Add track (``"add"``, ``label``); the
        running job is replaced from the next bar line. Returns the job (its fields fill in
        as it runs)."""
        t = time.perf_counter_ns() if t_ns is None else t_ns
        job = LiveJob(kind, t, bars or self.config.bars, label, generator, prompt)
        st = self.clock.state()
        job.trig_bar = trigger_bar(st, t, self.config.tolerance_ticks)
        with self._lock:
            old = self._current
            if old is not None and old.live:
                cut = (job.trig_bar + 1) * TICKS_PER_BAR if st.running else None
                self._end(old, "replaced", by=job, from_tick=cut)
            for q in self._drain():
                self._end(q, "replaced", by=job)
            self._jobs[job.id] = job
            for old_id in list(self._jobs)[:-16]:
                self._jobs.pop(old_id, None)  # keep the recent ones: their notes may sound
            self._current = job
        self._q.put(job)
        self._report("queued", job)
        return job

    def stop(self, panic: bool = False, why: str | None = None) -> int:
        """End the running and queued jobs and silence output (Panic: all 16 channels).
        Returns how many sounding notes were ended."""
        why = why or ("panic" if panic else "stop")
        with self._lock:
            for q in self._drain():
                self._end(q, why)
            if self._current is not None:
                self._end(self._current, why)
        n = self.scheduler.panic() if panic else self.scheduler.stop_output(why)
        log.info("%s: %d sounding note(s) ended", why, n)
        return n

    def panic(self) -> int:
        return self.stop(panic=True)

    def _drain(self) -> list[LiveJob]:
        out = []
        while True:
            try:
                j = self._q.get_nowait()
            except queue.Empty:
                return out
            if j is None:
                self._q.put(None)  # keep the shutdown mark
                return out
            out.append(j)

    def _end(self, job: LiveJob, why: str, by: LiveJob | None = None,
             from_tick: float | None = None) -> None:
        """Cancel ``job``'s generation and its notes (all, or from ``from_tick`` on)."""
        job.cancel.set()
        removed = self.scheduler.cancel_job(job.id, from_tick)
        if job.total is not None:
            job.total = max(job.total - removed, job.sent)
        if job.state in ("queued", "running"):
            job.state = "cancelled"
        elif from_tick is None:
            job.state = "done"
        if job is self._current:
            self._current = None
        if by is not None:
            bar = None if from_tick is None else int(from_tick // TICKS_PER_BAR)
            where = f"from bar {bar + 1} on" if bar is not None else "all of it"
            log.info("%s replaces %s: its unplayed notes go (%s; %d removed)", by.name,
                     job.name, where, removed)
            self._report("replaced", job, by=by, from_bar=bar)
        else:
            log.info("%s ended (%s): %d pending note(s) removed", job.name, why, removed)
            self._report("cancelled", job, why=why)

    def _on_clock_event(self, event: str, st: ClockState) -> None:
        if event == "continue":
            return
        with self._lock:
            for q in self._drain():
                self._end(q, f"transport {event}")
            if self._current is not None and self._current.live:
                self._end(self._current, f"transport {event}")
        if event == "lost":
            self._report("clock_lost", None)

    # -- worker ---------------------------------------------------------------------------
    def start(self) -> None:
        """Serve jobs on a thread of the engine's own."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self.serve, args=(self._stop,),
                                            name="bandmate-live", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 2.0) -> None:
        """End every job and the worker (output is left to the scheduler's owner)."""
        with self._lock:
            for q in self._drain():
                self._end(q, "shutdown")
            if self._current is not None:
                self._end(self._current, "shutdown")
        self._stop.set()
        self._q.put(None)
        th, self._thread = self._thread, None
        if th is not None and th is not threading.current_thread():
            th.join(timeout)

    def serve(self, stop: threading.Event | None = None) -> None:
        """Run queued jobs until ``shutdown`` (or ``stop`` is set)."""
        while stop is None or not stop.is_set():
            try:
                job = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if job is None:
                return
            self.run(job)

    def run_queued(self) -> None:
        """Run what is queued now on this thread, then return (tests, scripts)."""
        for job in self._drain():
            self.run(job)

    def run(self, job: LiveJob) -> dict:
        """Run one job here (the generation thread); returns its result."""
        if job.cancel.is_set():
            job.result = {"action": job.kind, "cancelled": True, "notes": 0}
        else:
            job.state = "running"
            try:
                job.result = self._generate(job)
            except Exception as e:
                log.exception("%s: generation failed: %s", job.name, e)
                job.state = "failed"
                job.result = {"action": job.kind, "error": str(e)}
                self._report("failed", job, error=str(e))
        self.jobs_done += 1
        self.last = job
        return job.result

    def _generate(self, job: LiveJob) -> dict:
        gen = job.generator or self.generator
        if gen is None:
            raise RuntimeError("no generator: pass one to LiveEngine or trigger()")
        trig = job.trig_bar or 0
        prompt = job.prompt
        if prompt is None:
            prompt = self.capture.current_bars(job.bars, before_bar=trig)
            job.prompt = prompt
        if not prompt.tracks:
            log.info("%s: no notes captured in the %d bar(s) before bar %d; play something "
                     "into 'bandmate in' while the DAW runs", job.name, prompt.bars, trig + 1)
            return self._skip(job, "empty prompt")
        first = prompt.bars * STEPS_PER_BAR if job.kind == "continue" else 0
        job.placer = StreamPlacer(prompt, first, trig + 1, job.label, self.config.velocity)
        start = prompt.meta.get("start_bar", 0)
        take = " (the take just played)" if prompt.meta.get("take") == "previous" else ""
        if job.kind == "add":
            if not job.label:
                return self._skip(job, "no label")
            log.info("add %s over %d prompt bar(s) %d-%d%s (#%d)", job.label, prompt.bars,
                     start + 1, start + prompt.bars, take, job.id)
            events = gen.add_stream(prompt, job.label, job.cancel)
        else:
            log.info("%s: prompt bars %d-%d, %d track(s)%s", job.name, start + 1,
                     start + prompt.bars, len(prompt.tracks), take)
            events = gen.continue_stream(prompt, job.bars, job.cancel)
        self._report("prompt", job, prompt=prompt, trig_bar=trig)
        bars_done = 0
        for ev in events:
            if job.cancel.is_set():
                break
            k = type(ev).__name__
            if k == "NoteEvent":
                self._place(job, job.placer.note(ev.track, ev.note))
                self._report("note", job, track=ev.track, note=ev.note)
            elif k == "BarDone":
                self._anchor(job)
                bars_done += 1
                self._report("bar", job, done=bars_done)
            elif k == "Done":
                job.piece = ev.piece
                job.stats = dict(getattr(ev, "stats", {}) or {})
        if job.cancel.is_set():
            log.info("%s: cancelled after %d note(s) scheduled", job.name, job.scheduled)
            return {"action": job.kind, "cancelled": True, "notes": job.scheduled}
        self._anchor(job)
        tokens = job.stats.get("sampled_tokens", "?")
        with self._lock:
            job.total = job.scheduled
            job.state = "playing"
        log.info("%s: generated %s tokens in %.2f s; %d note(s) scheduled from bar %d",
                 job.name, tokens, time.perf_counter() - job.t_start, job.scheduled,
                 (job.anchor_bar or 0) + 1)
        self._report("generated", job, piece=job.piece, stats=job.stats, notes=job.scheduled)
        if job.total == 0 or job.sent >= job.total:
            self._all_sent(job)
        return {"action": job.kind, "notes": job.scheduled, "start_bar": job.anchor_bar,
                "tokens": tokens, "label": job.label, "job": job.id}

    def _skip(self, job: LiveJob, why: str) -> dict:
        job.state = "skipped"
        with self._lock:
            if self._current is job:
                self._current = None
        self._report("skipped", job, reason=why)
        return {"action": job.kind, "skipped": why}

    def _anchor(self, job: LiveJob) -> None:
        p = job.placer
        if p is None or p.anchor_bar is not None:
            return
        earliest = earliest_bar(self.clock.state(), self.config.lead_ms)
        placed = p.anchor(earliest)
        secs = time.perf_counter() - job.t_start
        late = p.anchor_bar - p.target_bar
        if late == 0:
            log.info("%s: first bar ready in %.2f s; output starts at bar %d (next bar line)",
                     job.name, secs, p.anchor_bar + 1)
        else:
            log.info("%s: first bar ready in %.2f s, too late for bar %d; output starts at "
                     "bar %d (%d bar(s) later)", job.name, secs, p.target_bar + 1,
                     p.anchor_bar + 1, late)
        self._report("anchored", job, anchor_bar=p.anchor_bar, origin_step=p.origin_step,
                     late_bars=late)
        self._place(job, placed)

    def _place(self, job: LiveJob, placed: list) -> None:
        for pl in placed:
            job.scheduled += self.scheduler.add_notes([pl.note], pl.channel, pl.velocity,
                                                      pl.origin_step, job=job.id)

    # -- sent counts (scheduler thread) ---------------------------------------------------
    def _on_job_sent(self, job_id: int, msg: Any, target_ns: int, sent_ns: int) -> None:
        if msg is not None and msg.type != "note_on":
            return
        job = self._jobs.get(job_id)
        if job is None:
            return
        job.sent += 1  # sent, or dropped as late (msg None): either way done with
        if msg is None:
            job.dropped += 1
        elif job.sent - job.dropped == 1:
            late = (sent_ns - target_ns) / 1e6
            log.info("%s: first note out (%.1f ms after its time)", job.name, late)
            self._report("first_out", job, late_ms=late)
        if job.total is not None and job.sent >= job.total:
            self._all_sent(job)

    def _all_sent(self, job: LiveJob) -> None:
        with self._lock:
            if job.state != "playing":
                return
            job.state = "done"
            if self._current is job:
                self._current = None
        late = f" ({job.dropped} of them dropped as late)" if job.dropped else ""
        log.info("%s: all %d note(s) sent%s", job.name, job.sent, late)
        self._report("all_sent", job, notes=job.sent)
