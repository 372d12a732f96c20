"""Run jobs off the UI thread and bring their events back as Qt signals.

A plain Python thread runs the plain function (`run_job`, a model load); it only ever calls
``emit`` on a QObject that lives in the UI thread, so Qt queues every event to the UI thread.
The function gets its inputs when it starts and never reads a widget.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from typing import Any

from bandmate.models.session import ModelSession
from bandmate.models.types import Piece
from bandmate.ui.jobs import Engine, JobSpec, Progress, StreamNote, TakeDone, run_job
from PyQt6.QtCore import QObject, pyqtSignal

log = logging.getLogger(__name__)


class BackgroundCall(QObject):
    """Call ``fn()`` on a thread; ``done(result)`` or ``failed(message)`` on the UI thread."""

    done = pyqtSignal(object)
    failed = pyqtSignal(str)

    def __init__(self, fn: Callable[[], Any], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._fn = fn
        self.thread = threading.Thread(target=self._run, name="bandmate-call", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            result = self._fn()
        except Exception as e:
            log.debug("background call failed:\n%s", traceback.format_exc())
            self.failed.emit(str(e) or type(e).__name__)
            return
        self.done.emit(result)


class GenerationWorker(QObject):
    """One generation job on a thread: notes, progress and takes stream out as signals."""

    note = pyqtSignal(int, int, object)  # take, track, Note
    progress = pyqtSignal(int, int)  # done, total (bars)
    take_done = pyqtSignal(int, object, dict)  # take, Piece, stats
    finished = pyqtSignal(object)  # JobResult
    failed = pyqtSignal(str)

    def __init__(
        self,
        session: ModelSession,
        prompt: Piece,
        spec: JobSpec,
        engine: Engine | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.cancel_event = threading.Event()
        self._args = (session, prompt, spec, engine)
        self.thread = threading.Thread(target=self._run, name="bandmate-generate", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def cancel(self) -> None:
        self.cancel_event.set()

    def is_running(self) -> bool:
        return self.thread.is_alive()

    def _emit(self, ev: object) -> None:
        if isinstance(ev, StreamNote):
            self.note.emit(ev.take, ev.track, ev.note)
        elif isinstance(ev, Progress):
            self.progress.emit(ev.done, ev.total)
        elif isinstance(ev, TakeDone):
            self.take_done.emit(ev.take, ev.piece, ev.stats)

    def _run(self) -> None:
        session, prompt, spec, engine = self._args
        try:
            result = run_job(session, prompt, spec, self._emit, self.cancel_event, engine)
        except Exception as e:
            log.error("generation failed:\n%s", traceback.format_exc())
            self.failed.emit(f"{type(e).__name__}: {e}")
            return
        self.finished.emit(result)
