"""One generation job as the window shows it: notes streaming into the roll, progress, takes.

`JobView` starts a job on a `GenerationWorker` (a file prompt) or follows the live engine's
job (`bandmate.bridge.live`, through `LiveLink`), and draws what either reports: streamed
notes (repainted at most ~30 times a second), bars done, the takes in the Take picker, the
result or the failure. The takes themselves go to the `AppController`.
"""

from __future__ import annotations

import logging
import time

from bandmate.bridge.live import LiveEvent, LiveJob
from bandmate.models.session import ModelSession
from bandmate.models.types import Note, Piece
from bandmate.ui.controller import AppController, track_names
from bandmate.ui.jobs import Engine, JobResult, JobSpec, SpecGenerator
from bandmate.ui.live import LiveLink
from bandmate.ui.names import instrument_name
from bandmate.ui.notices import Notices
from bandmate.ui.panels import GeneratePanel, StallMeter, StatusPanel
from bandmate.ui.roll import PianoRoll
from bandmate.ui.worker import GenerationWorker
from PyQt6.QtCore import QObject, QTimer, pyqtSignal

log = logging.getLogger(__name__)


class JobView(QObject):
    """The running job's display; ``busy`` from the start until its result is shown."""

    job_finished = pyqtSignal(object)  # JobResult, or None when the job failed
    note_streamed = pyqtSignal(int, int, object)  # take, track, Note (after the roll has it)
    idle = pyqtSignal()  # the job ended: buttons may change

    def __init__(self, ctl: AppController, roll: PianoRoll, gen: GeneratePanel,
                 status: StatusPanel, notices: Notices, parent: QObject) -> None:
        super().__init__(parent)
        self.ctl, self.roll, self.gen, self.status, self.notices = ctl, roll, gen, status, notices
        self.worker: GenerationWorker | None = None
        self.live: LiveJob | None = None  # the live engine's job being drawn
        self.busy = False
        self.last_stall_ms: float | None = None
        self.stall = StallMeter(parent=self)
        self.streaming_take = self.stream_count = self.follow_step = 0
        self.repaint_timer = QTimer(self)
        self.repaint_timer.setSingleShot(True)
        self.repaint_timer.setInterval(33)
        self.repaint_timer.timeout.connect(self._repaint_roll)

    def _begin(self, prompt: Piece) -> None:
        self.gen.clear_takes()
        self.roll.model.set_prompt(prompt, track_names(prompt, self.ctl.label_scheme))
        self.roll.refresh()
        self.streaming_take = self.stream_count = self.follow_step = 0
        self.live = None
        self.status.show_job(True)
        self.stall.start()
        self.busy = True

    def start_worker(self, session: ModelSession, prompt: Piece, spec: JobSpec,
                     engine: Engine | None) -> None:
        self._begin(prompt)
        self.worker = w = GenerationWorker(session, prompt, spec, engine, self)
        w.note.connect(self._on_note)
        w.progress.connect(self._on_progress)
        w.take_done.connect(self._on_take)
        w.finished.connect(self._on_finished)
        w.failed.connect(self._on_failed)
        w.start()
        log.info("%s: %s on %d bars", spec.kind, spec, prompt.bars)

    def start_live(self, link: LiveLink, t_click: int, session: ModelSession, prompt: Piece,
                   spec: JobSpec, engine: Engine | None) -> None:
        """The live engine plays one take: notes go from its generation thread straight to
        the scheduler; this only draws what it reports (`on_live_event`)."""
        self._begin(prompt)
        self.worker = None
        self.live = link.trigger(spec.kind, t_click, prompt, spec.instrument, spec.bars,
                                 SpecGenerator(session, spec, engine))
        log.info("%s: %s on %d live bars (%s)", spec.kind, spec, prompt.bars, self.live.name)

    def _on_note(self, take: int, track: int, note: Note) -> None:
        if take != self.streaming_take:
            self.streaming_take, self.follow_step = take, 0
            self.roll.model.clear_generated()
        spec = self.ctl.last_spec
        name = (instrument_name(spec.instrument, self.ctl.label_scheme)
                if spec is not None and spec.kind == "add" else "")
        self.roll.model.add_generated(track, note, name)
        self.stream_count += 1
        # repaint at most ~30 times a second, however fast notes stream
        self.follow_step = max(self.follow_step, note.end)
        if not self.repaint_timer.isActive():
            self.repaint_timer.start()
        self.note_streamed.emit(take, track, note)

    def _repaint_roll(self) -> None:
        self.roll.refresh()
        if self.roll.follow and self.follow_step:
            self.roll.show_step(self.follow_step)

    def _on_progress(self, done: int, total: int) -> None:
        self.status.progress.setRange(0, max(1, total))
        self.status.progress.setValue(done)

    def _on_take(self, take: int, piece: Piece, stats: dict) -> None:
        self.ctl.takes.append(piece)
        self.gen.take_box.addItem(f"Take {take + 1}")

    def _finish(self) -> None:
        self.last_stall_ms = self.stall.stop()
        self.busy = False
        self.repaint_timer.stop()
        self.status.show_job(False)
        self.idle.emit()

    def _on_finished(self, result: JobResult) -> None:
        self._finish()
        self.ctl.last_result = result
        if self.ctl.takes:
            self.gen.take_box.setCurrentIndex(0)
            self.show_take(0)
        else:
            self.roll.model.clear_generated()
            self.roll.refresh()
        log.info("%s %s: %d take(s), %d notes streamed in %.2f s; longest UI stall %.1f ms",
                 result.spec.kind, "cancelled" if result.cancelled else "done",
                 len(result.takes), self.stream_count, result.seconds,
                 self.last_stall_ms or 0.0)  # fmt: skip
        self.job_finished.emit(result)

    def _on_failed(self, message: str) -> None:
        self._finish()
        self.roll.model.clear_generated()
        self.roll.refresh()
        self.notices.error("Generation failed", f"{message}\n\nThe prompt is unchanged. Try "
                            "again, or pick another model (Ctrl+M) if this keeps happening.")
        self.job_finished.emit(None)

    def show_take(self, i: int) -> None:
        shown = self.ctl.take_names(i)
        if shown is not None:
            self.roll.model.show_result(*shown)
            self.roll.refresh()

    def cancel(self, link: LiveLink | None) -> None:
        if self.worker is not None and self.worker.is_running():
            log.info("cancelling generation")
            self.worker.cancel()
        live = self.live
        if live is not None and live.state in ("queued", "running") and link is not None:
            link.stop(why="cancel")

    def on_live_event(self, ev: LiveEvent) -> None:
        """Draw what the live engine reports (UI thread, queued from engine threads)."""
        job, kind, info, spec = ev.job, ev.kind, ev.info, self.ctl.last_spec
        if job is None or job is not self.live:
            return  # another job's report (an older one, replaced), or the clock's
        if kind == "note":
            self._on_note(0, info["track"], info["note"])
        elif kind == "bar":
            total = spec.bars if spec and spec.kind == "continue" else max(1, job.prompt.bars)
            self._on_progress(min(info["done"], total), total)
        elif kind == "generated" and spec is not None:
            piece = info["piece"] or job.prompt
            self._on_take(0, piece, info["stats"])
            self._on_finished(JobResult(spec, [piece], [info["stats"]], False,
                                        time.perf_counter() - job.t_start))
        elif kind in ("cancelled", "replaced", "skipped") and self.busy and spec is not None:
            self._on_finished(JobResult(spec, [], [], True, time.perf_counter() - job.t_start))
        elif kind == "failed" and self.busy:
            self._on_failed(info.get("error", "generation failed"))
