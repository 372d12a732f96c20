"""One generation job of the live engine, and what the engine needs from a generator.

Why a job object: a trigger's whole life (its prompt, where it plays, how many notes it
scheduled and sent, how it ended) belongs together, so that the log's counts are one job's
and Stop, Panic or a newer trigger can end exactly this job: its ``cancel`` event stops the
generation loop at the next token, and its ``id`` is the token the scheduler checks where
notes enter (``Scheduler.add_note(..., job=id)``), so nothing it would still schedule plays.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bandmate.bridge.live.policy import StreamPlacer
from bandmate.models.types import Piece

if TYPE_CHECKING:
    from bandmate.models.session import ModelSession

JOB_KINDS = ("continue", "add")
_ids = itertools.count(1)


class Generator(Protocol):
    """Event streams (NoteEvent / BarDone / Done, bandmate.models.generate) for a prompt."""

    labels: tuple[str, ...]

    def continue_stream(self, piece: Piece, bars: int, cancel: threading.Event) -> Iterator[Any]:
        ...

    def add_stream(self, piece: Piece, label: str, cancel: threading.Event) -> Iterator[Any]:
        ...


class EngineGenerator:
    """The real engine (bandmate.models.generate) behind the Generator protocol."""

    def __init__(self, session: ModelSession, sampling: Any = None,
                 density: int | None = None) -> None:
        from bandmate.models import generate

        self._gen = generate
        self.session = session
        self.sampling = sampling if sampling is not None else session.default_sampling()
        self.density = density
        self.labels = session.add_labels or tuple(session.config.labels)

    @classmethod
    def load(cls, model: str | None = None, seed: int | None = None) -> EngineGenerator:
        """Load a model folder (None: the shipped model)."""
        from bandmate.models.session import ModelSession

        session = ModelSession.load(model)
        return cls(session, session.default_sampling(seed=seed))

    def continue_stream(self, piece: Piece, bars: int, cancel: threading.Event) -> Iterator[Any]:
        return self._gen.stream_continue(self.session, piece, bars, sampling=self.sampling,
                                         cancel=cancel)

    def add_stream(self, piece: Piece, label: str, cancel: threading.Event) -> Iterator[Any]:
        kw = {} if self.density is None else {"density": self.density}
        return self._gen.stream_add_track(self.session, piece, label, sampling=self.sampling,
                                          cancel=cancel, **kw)


@dataclass
class LiveJob:
    """A Continue or Add track from its trigger to its last note."""

    kind: str
    t_ns: int
    bars: int
    label: str | None = None
    generator: Generator | None = None
    prompt: Piece | None = None
    id: int = field(default_factory=lambda: next(_ids))
    cancel: threading.Event = field(default_factory=threading.Event)
    trig_bar: int | None = None
    placer: StreamPlacer | None = None
    state: str = "queued"  # queued, running, playing, done, cancelled, skipped, failed
    scheduled: int = 0
    sent: int = 0  # note-ons sent (or dropped as late: ``dropped`` of them)
    dropped: int = 0
    total: int | None = None  # notes scheduled, once generation is over
    piece: Piece | None = None
    stats: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)
    t_start: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {JOB_KINDS}, got {self.kind!r}")

    @property
    def name(self) -> str:
        return f"{self.kind} #{self.id}"

    @property
    def target_bar(self) -> int | None:
        return None if self.placer is None else self.placer.target_bar

    @property
    def anchor_bar(self) -> int | None:
        return None if self.placer is None else self.placer.anchor_bar

    @property
    def origin_step(self) -> int | None:
        p = self.placer
        return None if p is None or p.anchor_bar is None else p.origin_step

    @property
    def live(self) -> bool:
        """Still generating, or still has notes to play."""
        return self.state in ("queued", "running") or (
            self.state == "playing" and (self.total is None or self.sent < self.total))


@dataclass(frozen=True)
class LiveEvent:
    """What the engine reports (to the log, the app's window, tests).

    kinds: ``queued``, ``skipped`` (info: reason), ``prompt`` (prompt, trig_bar),
    ``anchored`` (anchor_bar, origin_step, late_bars), ``note`` (track, note, channel,
    step), ``bar`` (done), ``generated`` (piece, stats, notes), ``first_out`` (late_ms),
    ``all_sent`` (notes), ``replaced`` (by, from_bar), ``cancelled`` (why), ``failed``
    (error), ``clock_lost``.
    """

    kind: str
    job: LiveJob | None
    info: dict = field(default_factory=dict)
