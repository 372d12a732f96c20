"""The window's link to the live engine (`bandmate.bridge.live`): commands out, reports in.

The engine does the live path (prompt, generation thread, placement, the job's life); notes
go from its generation thread straight to the scheduler. This adapter only turns the
engine's reports (`LiveEvent`, on engine threads) into a Qt signal, which Qt queues to the UI
thread, where the window draws them.
"""

from __future__ import annotations

import logging

from bandmate.bridge.bridge import Bridge
from bandmate.bridge.live import Generator, LiveConfig, LiveEngine, LiveEvent, LiveJob
from bandmate.models.types import Piece
from PyQt6.QtCore import QObject, pyqtSignal

log = logging.getLogger("bandmate.ui.window")


class LiveLink(QObject):
    """Owns a `LiveEngine` on an open `Bridge`; ``event`` carries each `LiveEvent`."""

    event = pyqtSignal(object)

    def __init__(self, bridge: Bridge, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = LiveEngine(bridge.clock, bridge.capture, bridge.scheduler, None,
                                 LiveConfig())
        self.engine.add_listener(self._forward)
        self.engine.start()

    def _forward(self, ev: LiveEvent) -> None:
        self.event.emit(ev)  # from an engine thread: queued to the UI thread

    def prompt_at(self, t_ns: int, bars: int) -> Piece:
        return self.engine.prompt_at(t_ns, bars)[0]

    def played_prompt(self, t_ns: int, bars: int) -> Piece | None:
        """The captured bars for a click at ``t_ns``, or None when nothing was played (or
        the capture failed: the window then uses the open file)."""
        try:
            piece = self.prompt_at(t_ns, bars)
        except Exception as e:
            log.warning("no live capture: %s", e)
            return None
        return piece if any(t.notes for t in piece.tracks) else None

    def trigger(self, kind: str, t_ns: int, prompt: Piece, label: str, bars: int,
                generator: Generator) -> LiveJob:
        return self.engine.trigger(kind, t_ns, label=label if kind == "add" else None,
                                   bars=bars, generator=generator, prompt=prompt)

    def stop(self, panic: bool = False, why: str | None = None) -> int:
        return self.engine.stop(panic=panic, why=why)

    def shutdown(self) -> None:
        self.engine.remove_listener(self._forward)
        self.engine.shutdown()
