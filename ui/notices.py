"""Where the app's notices to the user go (not MIDI messages): a list anyone can read, plus
a non-blocking box.

Every failure the user can fix (no model, a port that will not open, a corrupt MIDI file) goes
through here. Boxes are opened with ``open()``, never ``exec()``, so no code path waits on a
modal loop; tests switch the boxes off and read ``items``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from PyQt6.QtCore import QObject, pyqtSignal
from PyQt6.QtWidgets import QMessageBox, QWidget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notice:
    level: str  # "info" | "warning" | "error"
    title: str
    text: str


class Notices(QObject):
    """Collects notices, logs one line each, and shows them when ``show_boxes`` is on."""

    posted = pyqtSignal(object)

    def __init__(self, parent: QWidget | None = None, show_boxes: bool = True) -> None:
        super().__init__(parent)
        self.parent_widget = parent
        self.show_boxes = show_boxes
        self.items: list[Notice] = []
        self._boxes: list[QMessageBox] = []

    def post(self, level: str, title: str, text: str) -> None:
        msg = Notice(level, title, text)
        self.items.append(msg)
        getattr(log, "info" if level == "info" else level)("%s: %s", title, text)
        self.posted.emit(msg)
        if self.show_boxes:
            icon = {
                "info": QMessageBox.Icon.Information,
                "warning": QMessageBox.Icon.Warning,
                "error": QMessageBox.Icon.Critical,
            }[level]
            box = QMessageBox(icon, title, text, QMessageBox.StandardButton.Ok, self.parent_widget)
            box.setModal(False)
            box.finished.connect(lambda _r, b=box: self._boxes.remove(b))
            self._boxes.append(box)
            box.open()

    def error(self, title: str, text: str) -> None:
        self.post("error", title, text)

    def warning(self, title: str, text: str) -> None:
        self.post("warning", title, text)

    def info(self, title: str, text: str) -> None:
        self.post("info", title, text)

    def last(self) -> Notice | None:
        return self.items[-1] if self.items else None
