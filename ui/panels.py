"""The window's widgets, built and labelled here; `bandmate.ui.window` connects them.

`MidiPanel` (API, ports, clock, Connect), `GeneratePanel` (the generation controls and
buttons), `StatusPanel` (status line, progress, Cancel), the `ClipHandle` that drags the clip
into a DAW, and the `StallMeter` that measures the UI thread's longest stall.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from bandmate.ui.jobs import GapTracker
from bandmate.ui.settings import MIDI_APIS
from PyQt6.QtCore import QMimeData, QObject, QPoint, Qt, QTimer
from PyQt6.QtGui import QAction, QDrag, QKeySequence
from PyQt6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QStatusBar,
    QToolButton,
    QWidget,
)

VIRTUAL_PORT = "(virtual port)"
#: A menu entry: (text, shortcut, slot, tip); None draws a separator.
MenuItem = tuple[str, str, Callable[[], object], str] | None


def add_menus(win: QMainWindow, menus: Mapping[str, Sequence[MenuItem]]) -> None:
    """The menu bar; every entry's shortcut also works without opening the menu."""
    for title, items in menus.items():
        menu = win.menuBar().addMenu(title)
        for item in items:
            if item is None:
                menu.addSeparator()
                continue
            text, keys, slot, tip = item
            a = QAction(text, win)
            a.setShortcut(QKeySequence(keys))
            a.setStatusTip(tip)
            a.setToolTip(tip)
            a.triggered.connect(slot)
            menu.addAction(a)
            win.addAction(a)


class StallMeter(QObject):
    """A short repeating timer on the UI thread; its longest gap is the UI's longest stall."""

    def __init__(self, interval_ms: int = 5, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.tracker = GapTracker(interval_ms / 1000)
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(lambda: self.tracker.tick(time.perf_counter()))

    def start(self) -> None:
        self.tracker.reset()
        self.tracker.tick(time.perf_counter())
        self.timer.start()

    def stop(self) -> float:
        """Stop; returns the longest stall in milliseconds."""
        self.tracker.tick(time.perf_counter())
        self.timer.stop()
        return self.tracker.max_stall * 1000


class ClipHandle(QLabel):
    """Press and drag to drop the generated clip into a DAW as a .mid file; ``mime`` makes
    the drag's data (None: nothing to drag)."""

    def __init__(self, mime: Callable[[], QMimeData | None]) -> None:
        super().__init__("⇲ Drag clip")
        self.mime = mime
        self.setFrameShape(QLabel.Shape.StyledPanel)
        self.setToolTip("Drag the generated clip into your DAW (a .mid file)")
        self.setCursor(Qt.CursorShape.OpenHandCursor)
        self._press: QPoint | None = None

    def mousePressEvent(self, event) -> None:
        self._press = event.position().toPoint()

    def mouseMoveEvent(self, event) -> None:
        if self._press is None:
            return
        if (event.position().toPoint() - self._press).manhattanLength() < 8:
            return
        self._press = None
        mime = self.mime()
        if mime is None:
            return
        drag = QDrag(self)
        drag.setMimeData(mime)
        drag.exec(Qt.DropAction.CopyAction)


def _button(text: str, keys: str, tip: str) -> QPushButton:
    b = QPushButton(text)
    b.setShortcut(QKeySequence(keys))
    b.setToolTip(tip)
    return b


class MidiPanel(QGroupBox):
    """MIDI system, ports, clock source, tempo and Connect."""

    def __init__(self) -> None:
        super().__init__("MIDI")
        self.api_box = QComboBox()
        self.api_box.addItems(MIDI_APIS)
        self.api_box.setToolTip("MIDI system: auto picks ALSA, JACK, CoreMIDI or Windows MM")
        self.in_box = QComboBox()
        self.in_box.setEditable(True)
        self.in_box.setToolTip(
            "Where bandmate listens: its own virtual port (route your DAW's tracks and MIDI "
            "clock to 'bandmate in'), or an existing port by name"
        )
        self.out_box = QComboBox()
        self.out_box.setEditable(True)
        self.out_box.setToolTip(
            "Where generated notes go: 'bandmate out' (record it in your DAW) or a synth port"
        )
        self.refresh_btn = QToolButton()
        self.refresh_btn.setText("⟳")
        self.refresh_btn.setToolTip("List the MIDI ports again")
        self.connect_btn = _button("Connect", "Ctrl+L",
                                   "Open the MIDI ports and follow the clock (Ctrl+L)")
        self.connect_btn.setCheckable(True)
        self.clock_box = QComboBox()
        self.clock_box.addItem("DAW clock", "daw")
        self.clock_box.addItem("Internal tempo", "internal")
        self.clock_box.setToolTip("Follow the DAW's MIDI clock, or run at the tempo set here")
        self.tempo_spin = QDoubleSpinBox()
        self.tempo_spin.setRange(20, 300)
        self.tempo_spin.setDecimals(1)
        self.tempo_spin.setSuffix(" BPM")
        self.tempo_spin.setToolTip("Tempo of the internal clock (previews and no-DAW use)")
        cl = QHBoxLayout(self)
        for label, w in (("API", self.api_box), ("In", self.in_box), ("Out", self.out_box)):
            cl.addWidget(QLabel(label))
            cl.addWidget(w, 1 if w is not self.api_box else 0)
        cl.addWidget(self.refresh_btn)
        cl.addWidget(QLabel("Clock"))
        cl.addWidget(self.clock_box)
        cl.addWidget(self.tempo_spin)
        cl.addWidget(self.connect_btn)

    def set_port_names(self, ins: list[str], outs: list[str]) -> None:
        """Fill the port pickers (the virtual port first), keeping what is typed or chosen."""
        for box, names in ((self.in_box, ins), (self.out_box, outs)):
            keep = box.currentText()
            box.blockSignals(True)
            box.clear()
            box.addItems([VIRTUAL_PORT, *names])
            box.setCurrentText(keep or VIRTUAL_PORT)
            box.blockSignals(False)

    def port(self, box: QComboBox) -> str:
        """The port chosen in ``box``; '' for bandmate's own virtual port."""
        t = box.currentText().strip()
        return "" if t in ("", VIRTUAL_PORT) else t


#: the Model picker's last entry: open a folder dialog
OTHER_MODEL = "\x00other"


class GeneratePanel(QGroupBox):
    """Bars, temperature, density, instrument, variations, take; the action buttons."""

    def __init__(self, mime: Callable[[], QMimeData | None]) -> None:
        super().__init__("Generate")
        self.bars_box = QComboBox()
        self.bars_box.addItem("4 bars", 4)
        self.bars_box.addItem("8 bars", 8)
        self.bars_box.setToolTip("How many bars Continue writes")
        self.temp_spin = QDoubleSpinBox()
        self.temp_spin.setRange(0.1, 2.0)
        self.temp_spin.setSingleStep(0.05)
        self.temp_spin.setToolTip("Temperature: lower is safer, higher is more adventurous")
        self.density_box = QComboBox()
        self.density_box.setToolTip("Note density of an added track (Auto: the model decides)")
        self.model_box = QComboBox()
        self.model_box.setToolTip("The model: a shipped one by name, or an exported folder "
                                  "(Other folder…); remembered for the next start")
        self.inst_box = QComboBox()
        self.inst_box.setToolTip("The instrument 'Add track' writes")
        self.var_spin = QSpinBox()
        self.var_spin.setRange(1, 4)
        self.var_spin.setToolTip("Variations: how many takes one click writes")
        self.take_box = QComboBox()
        self.take_box.setToolTip("Which take to show, preview, save and drag")
        self.continue_btn = _button("Continue", "Ctrl+Return",
                                    "Write the next bars after the prompt (Ctrl+Enter)")
        self.add_btn = _button("Add track", "Ctrl+T",
                               "Write a new part for the prompt's bars (Ctrl+T)")
        self.preview_btn = _button("Preview", "Ctrl+P",
                                   "Play the selected take on the output port (Ctrl+P)")
        self.stop_btn = _button("Stop", "Esc",
                                "Stop generating and playing; every sounding note ends (Esc)")
        self.panic_btn = _button("Panic", "Ctrl+Shift+P",
                                 "All notes off on all 16 channels (Ctrl+Shift+P)")
        self.clip = ClipHandle(mime)
        gl = QHBoxLayout(self)
        for label, w in (("Model", self.model_box), ("Bars", self.bars_box),
                         ("Temp", self.temp_spin),
                         ("Density", self.density_box), ("Instrument", self.inst_box),
                         ("Variations", self.var_spin), ("Take", self.take_box)):
            gl.addWidget(QLabel(label))
            gl.addWidget(w)
        gl.addStretch(1)
        for w in (self.continue_btn, self.add_btn, self.preview_btn, self.stop_btn,
                  self.panic_btn, self.clip):
            gl.addWidget(w)

    def set_instruments(self, groups: list[tuple[str, list[tuple[str, str]]]],
                        selected: str) -> None:
        """Fill the Instrument picker: with several entries in a group (a GM model's
        programs), the family name heads its group as a greyed, unselectable line; groups of
        one (the voices of a chorale model, a gm-family model's families) are separated by a
        line only."""
        box = self.inst_box
        box.blockSignals(True)
        box.clear()
        headed = any(len(items) > 1 for head, items in groups if head != "Voices")
        for head, items in groups:
            if box.count() and (headed or head in ("Drums", "Voices") or
                                box.itemData(box.count() - 1) == "DRUMS"):
                box.insertSeparator(box.count())
            if headed and head != "Voices":
                box.addItem(f"— {head} —", None)
                item = box.model().item(box.count() - 1)
                if item is not None:
                    item.setEnabled(False)
            for label, name in items:
                box.addItem(name, label)
        i = box.findData(selected)
        if i < 0:
            i = next((k for k in range(box.count()) if box.itemData(k)), 0)
        box.setCurrentIndex(i)
        box.blockSignals(False)

    def set_models(self, choices: list[tuple[str, str]], selected: str) -> None:
        """Fill the Model picker: (value, text) pairs, value a shipped name or a folder;
        "Other folder…" last (value OTHER_MODEL)."""
        box = self.model_box
        box.blockSignals(True)
        box.clear()
        for value, text in choices:
            box.addItem(text, value)
        box.insertSeparator(box.count())
        box.addItem("Other folder…", OTHER_MODEL)
        box.setCurrentIndex(max(0, box.findData(selected)))
        box.blockSignals(False)

    def set_density_bins(self, bins: int, selected: int) -> None:
        self.density_box.clear()
        self.density_box.addItem("Auto", -1)
        for d in range(bins):
            self.density_box.addItem(str(d + 1), d)
        self.density_box.setCurrentIndex(max(0, self.density_box.findData(selected)))
        self.density_box.setEnabled(bins > 0)

    def clear_takes(self) -> None:
        self.take_box.blockSignals(True)
        self.take_box.clear()
        self.take_box.blockSignals(False)


class StatusPanel(QWidget):
    """The status bar's widgets: the status line, the job's progress and its Cancel."""

    def __init__(self) -> None:
        super().__init__()
        self.label = QLabel()
        self.label.setToolTip("tempo · bar:beat · transport · model · ONNX provider")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setFormat("%v / %m bars")
        self.progress.hide()
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Cancel the generation (keeps finished takes)")
        self.cancel_btn.hide()

    def install(self, bar: QStatusBar) -> None:
        bar.addWidget(self.label, 1)
        bar.addPermanentWidget(self.progress)
        bar.addPermanentWidget(self.cancel_btn)

    def show_job(self, running: bool) -> None:
        self.progress.setVisible(running)
        self.cancel_btn.setVisible(running)
        if running:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)


def open_file_dialog(parent: QWidget, title: str, on_selected: Callable[[str], object],
                     directory: str = "", name_filter: str = "", folder: bool = False,
                     save_suffix: str = "") -> None:
    """A non-blocking file dialog (``open()``, so tests and the event loop go on):
    a folder, a file to open, or with ``save_suffix`` a file to save."""
    dlg = QFileDialog(parent, title, directory)
    if folder:
        dlg.setFileMode(QFileDialog.FileMode.Directory)
    if save_suffix:
        dlg.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dlg.setDefaultSuffix(save_suffix)
    if name_filter:
        dlg.setNameFilter(name_filter)
    dlg.fileSelected.connect(on_selected)
    dlg.open()
