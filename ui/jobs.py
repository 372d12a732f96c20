"""Generation jobs as plain functions: progress out through a callback, cancel in by an Event.

The window hands a job everything it needs (session, prompt piece, a frozen `JobSpec`) before
it starts, so the worker never touches a widget; `bandmate.ui.worker` runs these on a thread and
turns the callback into Qt signals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bandmate.models.sampler import DEFAULT_TEMPERATURE
from bandmate.models.session import ModelSession
from bandmate.models.types import Note, Piece

JOB_KINDS = ("continue", "add")


@dataclass(frozen=True)
class JobSpec:
    """One click of Continue or Add track, with the controls as they were at the click."""

    kind: str = "continue"
    bars: int = 4
    instrument: str = "BASS"
    temperature: float = DEFAULT_TEMPERATURE
    density: int | None = None
    variations: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {JOB_KINDS}, got {self.kind!r}")
        if self.bars not in (4, 8):
            raise ValueError(f"bars must be 4 or 8, got {self.bars}")
        if not 0.1 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be 0.1..2.0, got {self.temperature}")
        if not 1 <= self.variations <= 4:
            raise ValueError(f"variations must be 1..4, got {self.variations}")
        if self.density is not None and self.density < 0:
            raise ValueError(f"density must be None (automatic) or >= 0, got {self.density}")

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict) -> JobSpec:
        return cls(**d)


# Events the job reports (plain values, safe to pass between threads).
@dataclass(frozen=True)
class StreamNote:
    take: int
    track: int
    note: Note


@dataclass(frozen=True)
class Progress:
    done: int  # bars finished over all takes
    total: int


@dataclass(frozen=True)
class TakeDone:
    take: int
    piece: Piece
    stats: dict


@dataclass
class JobResult:
    spec: JobSpec
    takes: list[Piece] = field(default_factory=list)
    stats: list[dict] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0


StreamFn = Callable[..., Iterator[Any]]


class Engine(NamedTuple):
    """The generation functions a job calls (the real engine, or a fake in logic tests)."""

    stream_continue: StreamFn
    stream_add_track: StreamFn
    sampling: Callable[..., Any]  # (session, temperature=, seed=) -> the sampling config


def _model_sampling(session: ModelSession, **changes: Any) -> Any:
    """The model's own sampling defaults (its top-p) with the click's temperature and seed."""
    return session.default_sampling(**changes)


def default_engine() -> Engine:
    """bandmate.models.generate, imported only when a job first runs."""
    from bandmate.models import generate

    return Engine(generate.stream_continue, generate.stream_add_track, _model_sampling)


def bars_per_take(prompt: Piece, spec: JobSpec) -> int:
    """Progress units of one take: the new bars, or the prompt's bars for a new track."""
    return spec.bars if spec.kind == "continue" else max(1, prompt.bars)


def run_job(
    session: Any,
    prompt: Piece,
    spec: JobSpec,
    emit: Callable[[object], None],
    cancel: threading.Event,
    engine: Engine | None = None,
) -> JobResult:
    """Generate ``spec.variations`` takes, reporting every note and bar through ``emit``.

    Returns what finished; a cancelled job returns the takes completed before the cancel
    (the engine stops at its next token when ``cancel`` is set).
    """
    stream_continue, stream_add, make_sampling = engine or default_engine()
    t0 = time.perf_counter()
    result = JobResult(spec)
    per_take = bars_per_take(prompt, spec)
    total = per_take * spec.variations
    done = 0
    emit(Progress(0, total))
    for take in range(spec.variations):
        if cancel.is_set():
            break
        seed = None if spec.seed is None else spec.seed + take
        sampling = make_sampling(session, temperature=spec.temperature, seed=seed)
        if spec.kind == "continue":
            events = stream_continue(session, prompt, spec.bars, sampling=sampling, cancel=cancel)
        else:
            events = stream_add(
                session,
                prompt,
                spec.instrument,
                density=spec.density,
                sampling=sampling,
                cancel=cancel,
            )
        finished = False
        bars_seen = 0
        for ev in events:
            name = type(ev).__name__
            if name == "NoteEvent":
                emit(StreamNote(take, ev.track, ev.note))
            elif name == "BarDone":
                bars_seen = min(per_take, bars_seen + 1)
                emit(Progress(done + bars_seen, total))
            elif name == "Done":
                result.takes.append(ev.piece)
                result.stats.append(dict(ev.stats or {}))
                emit(TakeDone(take, ev.piece, dict(ev.stats or {})))
                finished = True
        if not finished or cancel.is_set():
            break
        done += per_take
        emit(Progress(done, total))
    result.cancelled = cancel.is_set() or len(result.takes) < spec.variations
    result.seconds = time.perf_counter() - t0
    return result


class GapTracker:
    """Longest gap between heartbeats: how long the UI thread was unable to run a timer.

    Feed it ``tick(now)`` from a short repeating timer; ``max_stall`` is the longest gap minus
    the timer's own interval, in seconds.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last: float | None = None
        self.max_gap = 0.0
        self.ticks = 0

    def reset(self) -> None:
        self.last = None
        self.max_gap = 0.0
        self.ticks = 0

    def tick(self, now: float) -> None:
        if self.last is not None:
            self.max_gap = max(self.max_gap, now - self.last)
        self.last = now
        self.ticks += 1

    @property
    def max_stall(self) -> float:
        return max(0.0, self.max_gap - self.interval_s)


class SpecGenerator:
    """A live job's generator (`bandmate.bridge.live.Generator`) with the click's controls
    (temperature, seed, density) over the window's engine functions (real or fake)."""

    def __init__(self, session: ModelSession, spec: JobSpec, engine: Engine | None = None) -> None:
        self.session = session
        self.spec = spec
        self._eng = engine or default_engine()
        self.labels = session.labels_seen or tuple(session.config.labels)

    def _sampling(self) -> Any:
        return self._eng.sampling(self.session, temperature=self.spec.temperature,
                                  seed=self.spec.seed)

    def continue_stream(self, piece: Piece, bars: int, cancel: threading.Event) -> Iterator[Any]:
        return self._eng.stream_continue(self.session, piece, bars, sampling=self._sampling(),
                                         cancel=cancel)

    def add_stream(self, piece: Piece, label: str, cancel: threading.Event) -> Iterator[Any]:
        return self._eng.stream_add_track(self.session, piece, label, density=self.spec.density,
                                          sampling=self._sampling(), cancel=cancel)
