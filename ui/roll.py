"""The piano-roll widget: paints a `RollModel` through a `RollGeometry`, nothing more.

User notes are solid boxes in their track's colour; generated notes are the same colour,
lighter, with a dashed white outline, so the model's bars stand out at a glance. The playhead is
a vertical line. Ctrl+wheel zooms around the mouse, the wheel scrolls, and the roll follows
the newest generated note while a job streams.
"""

from __future__ import annotations

from dataclasses import replace

from bandmate.models.types import STEPS_PER_BAR, STEPS_PER_BEAT
from bandmate.ui.roll_model import RollGeometry, RollModel, track_color
from PyQt6.QtCore import QRectF, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QFont, QPainter, QPen, QPixmap, QWheelEvent
from PyQt6.QtWidgets import QScrollArea, QWidget

BACKGROUND = QColor("#1e1f24")
BLACK_KEY_ROW = QColor("#23252b")
BAR_LINE = QColor("#5a5d68")
BEAT_LINE = QColor("#33363e")
GENERATED_REGION = QColor(255, 255, 255, 10)
PLAYHEAD = QColor("#f5f5f5")
HINT = QColor("#9a9dab")
#: What an empty roll says, so a first start never shows only a dark grid and grey buttons.
EMPTY_HINT = (
    "Open a MIDI file (Ctrl+O) or drop one here,\n"
    "or Connect (Ctrl+L) and play your DAW into 'bandmate in'."
)
BLACK_KEYS = {1, 3, 6, 8, 10}
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


class RollCanvas(QWidget):
    """The drawing surface; sized to the whole timeline, shown through a scroll area."""

    def __init__(self, model: RollModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.geometry_ = RollGeometry()
        self._bg: QPixmap | None = None
        self._bg_key: tuple | None = None
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.hint = EMPTY_HINT  # shown while there are no notes ("" hides it)
        self.relayout()

    def relayout(self, fit_pitches: bool = False, view_w: int = 0, view_h: int = 0) -> None:
        """Resize to the timeline; ``fit_pitches`` re-fits the key range to the notes."""
        lo, hi = self.model.pitch_span()
        g = self.geometry_
        if fit_pitches:
            g = g.with_pitch_span(lo, hi)
            if view_h > 0:
                keys = g.pitch_hi - g.pitch_lo + 1
                g = replace(g, px_per_key=max(4.0, min(14.0, (view_h - 2) / keys)))
        elif lo < g.pitch_lo or hi > g.pitch_hi:
            g = g.with_pitch_span(min(lo, g.pitch_lo), max(hi, g.pitch_hi))
        self.geometry_ = g
        w, h = g.size(max(self.model.bars, 4))
        size = (max(int(w), view_w), max(int(h), view_h))
        if size != (self.width(), self.height()):
            self.setFixedSize(*size)

    def paintEvent(self, event) -> None:
        """Cached background (grid + the user's notes), then generated notes and playhead.

        Streaming repaints the roll many times a second; only the generated notes change, so
        the rest is drawn once per view rectangle and blitted.
        """
        g = self.geometry_
        clip = event.rect()
        key = (clip.x(), clip.y(), clip.width(), clip.height(), g, self.model.user_version,
               self.devicePixelRatioF())  # fmt: skip
        if self._bg_key != key:
            dpr = self.devicePixelRatioF()
            pm = QPixmap(int(clip.width() * dpr), int(clip.height() * dpr))
            pm.setDevicePixelRatio(dpr)
            bp = QPainter(pm)
            bp.translate(-clip.x(), -clip.y())
            self._paint_background(bp, clip)
            bp.end()
            self._bg, self._bg_key = pm, key
        p = QPainter(self)
        p.drawPixmap(clip.topLeft(), self._bg)
        self._paint_generated(p, clip)
        if not self.model.notes and self.hint:
            self._paint_hint(p)
        if self.model.playhead is not None:
            p.setPen(QPen(PLAYHEAD, 2))
            x = int(g.x(self.model.playhead))
            p.drawLine(x, clip.top(), x, clip.bottom())
        p.end()

    def _paint_hint(self, p: QPainter) -> None:
        """The empty state: what to do first, centred in the visible part of the roll."""
        area = self.visibleRegion().boundingRect()
        font = QFont(p.font())
        font.setPointSizeF(12)
        p.setFont(font)
        p.setPen(QPen(HINT))
        p.drawText(QRectF(area), Qt.AlignmentFlag.AlignCenter, self.hint)

    def _paint_background(self, p: QPainter, clip) -> None:
        g = self.geometry_
        p.fillRect(clip, BACKGROUND)
        for pitch in range(g.pitch_lo, g.pitch_hi + 1):
            if pitch % 12 in BLACK_KEYS:
                row = QRectF(clip.left(), g.y(pitch), clip.width(), g.px_per_key)
                p.fillRect(row, BLACK_KEY_ROW)
        first = max(0, int(g.step_at(clip.left())) // STEPS_PER_BEAT * STEPS_PER_BEAT)
        last = int(g.step_at(clip.right())) + STEPS_PER_BEAT
        font = QFont(p.font())
        font.setPointSizeF(7.5)
        p.setFont(font)
        for step in range(first, last, STEPS_PER_BEAT):
            bar_line = step % STEPS_PER_BAR == 0
            if not bar_line and g.px_per_step * STEPS_PER_BEAT < 6:
                continue
            p.setPen(QPen(BAR_LINE if bar_line else BEAT_LINE, 1))
            x = g.x(step)
            p.drawLine(int(x), clip.top(), int(x), clip.bottom())
            if bar_line:
                p.drawText(int(x) + 3, clip.top() + 10, str(step // STEPS_PER_BAR + 1))
        p.setPen(QPen(QColor("#8a8d98")))
        for pitch in range(g.pitch_lo, g.pitch_hi + 1):
            if pitch % 12 == 0:
                p.drawText(int(max(0, clip.left())) + 2, int(g.y(pitch) + g.px_per_key),
                           f"C{pitch // 12 - 1}")  # fmt: skip
        for rn in self.model.notes:
            if rn.generated:
                continue
            x, y, w, h = g.note_rect(rn.note)
            if x > clip.right() or x + w < clip.left():
                continue
            color = QColor(track_color(rn.track))
            rect = QRectF(x, y, w, h)
            p.fillRect(rect, color)
            p.setPen(QPen(color.darker(160), 1))
            p.drawRect(rect.adjusted(0.5, 0.5, -0.5, -0.5))

    def _paint_generated(self, p: QPainter, clip) -> None:
        g = self.geometry_
        m = self.model
        if m.bars > m.prompt_bars and m.generated_count():
            x0 = g.x(m.prompt_bars * STEPS_PER_BAR)
            p.fillRect(QRectF(x0, clip.top(), g.x(m.bars * STEPS_PER_BAR) - x0, clip.height()),
                       GENERATED_REGION)  # fmt: skip
        outline = QPen(QColor("#ffffff"), 1, Qt.PenStyle.DashLine)
        fills: dict[int, QColor] = {}
        left, right = clip.left(), clip.right()
        for rn in m.notes:
            if not rn.generated:
                continue
            x, y, w, h = g.note_rect(rn.note)
            if x > right or x + w < left:
                continue
            fill = fills.get(rn.track)
            if fill is None:
                fill = fills[rn.track] = QColor(track_color(rn.track)).lighter(150)
            rect = QRectF(x, y, w, h)
            p.fillRect(rect, fill)
            p.setPen(outline)
            p.drawRect(rect.adjusted(0.5, 0.5, -0.5, -0.5))


class PianoRoll(QScrollArea):
    """The scrolling piano roll with zoom; call `refresh()` after changing the model."""

    zoom_changed = pyqtSignal(float)

    def __init__(self, model: RollModel | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model or RollModel()
        self.canvas = RollCanvas(self.model)
        self.setWidget(self.canvas)
        self.setWidgetResizable(False)
        self.setMinimumHeight(240)
        self.follow = True
        self.setToolTip("Piano roll: your notes solid, generated notes outlined.\n"
                        "Ctrl+wheel or Ctrl+=/Ctrl+- zoom, wheel scrolls.")  # fmt: skip

    def refresh(self, fit_pitches: bool = False) -> None:
        vp = self.viewport()
        self.canvas.relayout(fit_pitches, vp.width(), vp.height())
        self.canvas.update()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.refresh(fit_pitches=True)

    def center_pitches(self) -> None:
        lo, hi = self.model.pitch_span()
        y = self.canvas.geometry_.y((lo + hi) // 2)
        self.ensureVisible(0, int(y), 0, self.viewport().height() // 2)

    def show_step(self, step: float) -> None:
        """Scroll so ``step`` is on screen (used to follow the stream and the playhead)."""
        x = int(self.canvas.geometry_.x(step))
        bar = self.horizontalScrollBar()
        if not bar.value() <= x <= bar.value() + self.viewport().width() - 40:
            bar.setValue(max(0, x - self.viewport().width() * 2 // 3))

    def zoom(self, factor: float, anchor_viewport_x: int | None = None) -> None:
        bar = self.horizontalScrollBar()
        ax = self.viewport().width() // 2 if anchor_viewport_x is None else anchor_viewport_x
        g, new_x = self.canvas.geometry_.zoomed(factor, bar.value() + ax)
        self.canvas.geometry_ = g
        self.refresh()
        bar.setValue(int(new_x - ax))
        self.zoom_changed.emit(g.px_per_step)

    def fit_width(self) -> None:
        """Zoom so the whole timeline fits the view."""
        steps = (max(self.model.bars, 4) + 1) * STEPS_PER_BAR
        g = self.canvas.geometry_
        self.zoom(max(1e-3, (self.viewport().width() - 4) / steps) / g.px_per_step, 0)
        self.horizontalScrollBar().setValue(0)

    def wheelEvent(self, event: QWheelEvent) -> None:
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            factor = 1.25 if event.angleDelta().y() > 0 else 0.8
            self.zoom(factor, int(event.position().x()))
            event.accept()
        else:
            super().wheelEvent(event)
