"""The main window: a thin Qt layer over the app's state, the job runner and the bridge.

It owns the widgets and the objects the widgets drive (model session, prompt piece, takes,
bridge); everything slow runs on a worker (`bandmate.ui.worker`) that gets its inputs at the
start and reports by signal. Failures the user can fix go to `self.messages` and the window
keeps running.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bandmate.models.types import STEPS_PER_BAR, STEPS_PER_BEAT, Note, Piece
from bandmate.ui.jobs import Engine, GapTracker, JobResult, JobSpec, SpecGenerator
from bandmate.ui.live import LiveLink
from bandmate.ui.messages import MessageSink
from bandmate.ui.names import instrument_choices, instrument_name
from bandmate.ui.roll import PianoRoll
from bandmate.ui.settings import MIDI_APIS, AppSettings, load_settings, save_settings
from bandmate.ui.worker import BackgroundCall, GenerationWorker
from PyQt6.QtCore import QMimeData, QObject, QPoint, QSettings, Qt, QTimer, QUrl, pyqtSignal
from PyQt6.QtGui import QAction, QDrag, QIcon, QKeySequence
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
    QToolButton,
    QVBoxLayout,
    QWidget,
)

log = logging.getLogger(__name__)

ICON_PATH = Path(__file__).with_name("bandmate.svg")
VIRTUAL_PORT = "(virtual port)"


def clip_of(prompt: Piece, result: Piece, kind: str) -> Piece:
    """What a DAW wants dropped in: the new bars of a continuation, or just the new track."""
    if kind == "continue":
        return result.slice_bars(prompt.bars, max(1, result.bars - prompt.bars))
    new = result.tracks[len(prompt.tracks) :]
    return Piece(new or result.tracks, result.bars, result.tempo, dict(result.meta))


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
    """Press and drag to drop the generated clip into a DAW as a .mid file."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__("⇲ Drag clip")
        self.window_ = window
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
        mime = self.window_.clip_mime()
        if mime is None:
            return
        drag = QDrag(self)
        drag.setMimeData(mime)
        drag.exec(Qt.DropAction.CopyAction)


class MainWindow(QMainWindow):
    """bandmate's window. Pass ``messages`` / ``store`` / ``engine`` to test it offscreen."""

    status_changed = pyqtSignal(str)
    job_finished = pyqtSignal(object)  # JobResult, or None when the job failed
    note_streamed = pyqtSignal(int, int, object)  # take, track, Note (after the roll has it)

    def __init__(
        self,
        store: Any | None = None,
        messages: MessageSink | None = None,
        engine: Engine | None = None,
        model_path: str | None = None,
        autoload_model: bool = True,
    ) -> None:
        super().__init__()
        # The generation worker runs Python between ONNX calls; with the default 5 ms GIL
        # switch interval the UI thread waits up to that long per wake-up behind it. 1 ms
        # keeps the UI responsive (measured in docs/app.md) at no visible cost to decoding.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        self.setWindowTitle("bandmate")
        if ICON_PATH.exists():
            self.setWindowIcon(QIcon(str(ICON_PATH)))
        self.setAcceptDrops(True)
        self.store = store if store is not None else QSettings("bandmate", "bandmate")
        self.messages = messages or MessageSink(self)
        self.engine = engine
        self.settings = load_settings(self.store)
        self.session: Any = None
        self.model_error = ""
        self.prompt: Piece | None = None
        self.prompt_bytes: bytes | None = None
        self.prompt_name = ""
        # The opened file (bandmate.models.midi_merge.Source): Save and the drag clip write
        # into it, so the user's events stay as they were; None for a live capture.
        self.source: Any = None
        self.source_path: Path | None = None
        self.source_section = 0
        self.job_source: Any = None  # the source of the prompt the takes were made from
        self.load_note = ""  # status-line note when only part of the file was read
        self.meter: str | None = None  # --meter: None = as the model reads; or "assume-4/4"
        self.takes: list[Piece] = []
        self.last_spec: JobSpec | None = None
        self.last_result: JobResult | None = None
        self.job_prompt: Piece | None = None
        self.worker: GenerationWorker | None = None
        self.loader: BackgroundCall | None = None
        self.bridge: Any = None
        self.live: Any = None  # the live engine's job (bandmate.bridge.live.LiveJob)
        self.live_link: LiveLink | None = None
        self.last_stall_ms: float | None = None
        self.playhead_origin: int | None = None  # clock step - this = roll step
        self.busy = False  # a job is running (from the click until its result is shown)
        self.seed: int | None = None  # fixed seed for reproducible takes (tests, screenshots)
        self.stall = StallMeter(parent=self)
        self._roll_follow_step = 0
        self.repaint_timer = QTimer(self)
        self.repaint_timer.setSingleShot(True)
        self.repaint_timer.setInterval(33)
        self.repaint_timer.timeout.connect(self._repaint_roll)
        self._build()
        self._apply_settings(self.settings)
        self.status_timer = QTimer(self)
        self.status_timer.setInterval(100)
        self.status_timer.timeout.connect(self.update_status)
        self.status_timer.start()
        self.update_status()
        self._update_buttons()
        if autoload_model:
            self.load_model(model_path if model_path is not None else self.settings.model_dir)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        central = QWidget()
        root = QVBoxLayout(central)

        # connection row: API, ports, clock
        conn = QGroupBox("MIDI")
        cl = QHBoxLayout(conn)
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
        self.refresh_btn.clicked.connect(self.refresh_ports)
        self.connect_btn = QPushButton("Connect")
        self.connect_btn.setCheckable(True)
        self.connect_btn.setToolTip("Open the MIDI ports and follow the clock (Ctrl+L)")
        self.connect_btn.setShortcut(QKeySequence("Ctrl+L"))
        self.connect_btn.clicked.connect(self._toggle_connect)
        self.clock_box = QComboBox()
        self.clock_box.addItem("DAW clock", "daw")
        self.clock_box.addItem("Internal tempo", "internal")
        self.clock_box.setToolTip("Follow the DAW's MIDI clock, or run at the tempo set here")
        self.tempo_spin = QDoubleSpinBox()
        self.tempo_spin.setRange(20, 300)
        self.tempo_spin.setDecimals(1)
        self.tempo_spin.setSuffix(" BPM")
        self.tempo_spin.setToolTip("Tempo of the internal clock (previews and no-DAW use)")
        for label, w in (
            ("API", self.api_box),
            ("In", self.in_box),
            ("Out", self.out_box),
        ):
            cl.addWidget(QLabel(label))
            cl.addWidget(w, 1 if w is not self.api_box else 0)
        cl.addWidget(self.refresh_btn)
        cl.addWidget(QLabel("Clock"))
        cl.addWidget(self.clock_box)
        cl.addWidget(self.tempo_spin)
        cl.addWidget(self.connect_btn)
        root.addWidget(conn)

        # controls row
        ctl = QGroupBox("Generate")
        gl = QHBoxLayout(ctl)
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
        self.inst_box = QComboBox()
        self.inst_box.setToolTip("The instrument 'Add track' writes")
        self.inst_box.currentIndexChanged.connect(self._update_buttons)
        self.var_spin = QSpinBox()
        self.var_spin.setRange(1, 4)
        self.var_spin.setToolTip("Variations: how many takes one click writes")
        self.take_box = QComboBox()
        self.take_box.setToolTip("Which take to show, preview, save and drag")
        self.take_box.currentIndexChanged.connect(self._show_take)
        self.continue_btn = QPushButton("Continue")
        self.continue_btn.setShortcut(QKeySequence("Ctrl+Return"))
        self.continue_btn.setToolTip("Write the next bars after the prompt (Ctrl+Enter)")
        self.continue_btn.clicked.connect(lambda: self.generate("continue"))
        self.add_btn = QPushButton("Add track")
        self.add_btn.setShortcut(QKeySequence("Ctrl+T"))
        self.add_btn.setToolTip("Write a new part for the prompt's bars (Ctrl+T)")
        self.add_btn.clicked.connect(lambda: self.generate("add"))
        self.preview_btn = QPushButton("Preview")
        self.preview_btn.setShortcut(QKeySequence("Ctrl+P"))
        self.preview_btn.setToolTip("Play the selected take on the output port (Ctrl+P)")
        self.preview_btn.clicked.connect(self.preview)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setShortcut(QKeySequence("Esc"))
        self.stop_btn.setToolTip("Stop generating and playing; every sounding note ends (Esc)")
        self.stop_btn.clicked.connect(self.stop)
        self.panic_btn = QPushButton("Panic")
        self.panic_btn.setShortcut(QKeySequence("Ctrl+Shift+P"))
        self.panic_btn.setToolTip("All notes off on all 16 channels (Ctrl+Shift+P)")
        self.panic_btn.clicked.connect(self.panic)
        self.clip = ClipHandle(self)
        for label, w in (
            ("Bars", self.bars_box),
            ("Temp", self.temp_spin),
            ("Density", self.density_box),
            ("Instrument", self.inst_box),
            ("Variations", self.var_spin),
            ("Take", self.take_box),
        ):
            gl.addWidget(QLabel(label))
            gl.addWidget(w)
        gl.addStretch(1)
        for w in (
            self.continue_btn,
            self.add_btn,
            self.preview_btn,
            self.stop_btn,
            self.panic_btn,
            self.clip,
        ):
            gl.addWidget(w)
        root.addWidget(ctl)

        self.roll = PianoRoll()
        root.addWidget(self.roll, 1)
        self.setCentralWidget(central)

        # menu + shortcuts
        fm = self.menuBar().addMenu("&File")
        self._action(fm, "&Open MIDI…", "Ctrl+O", self.open_dialog, "Open a MIDI file as prompt")
        self._action(fm, "&Save MIDI…", "Ctrl+S", self.save_dialog, "Save prompt + take")
        self._action(fm, "Choose &model…", "Ctrl+M", self.model_dialog, "Load a model folder")
        fm.addSeparator()
        self._action(fm, "&Quit", "Ctrl+Q", self.close, "Quit bandmate")
        vm = self.menuBar().addMenu("&View")
        self._action(vm, "Zoom &in", "Ctrl+=", lambda: self.roll.zoom(1.25), "Zoom in")
        self._action(vm, "Zoom &out", "Ctrl+-", lambda: self.roll.zoom(0.8), "Zoom out")
        self._action(vm, "&Fit", "Ctrl+0", self.roll.fit_width, "Show the whole timeline")

        # status bar: labels + progress + cancel
        sb = self.statusBar()
        self.status_label = QLabel()
        self.status_label.setToolTip("tempo · bar:beat · transport · model · ONNX provider")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setFormat("%v / %m bars")
        self.progress.hide()
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Cancel the generation (keeps finished takes)")
        self.cancel_btn.clicked.connect(self.cancel)
        self.cancel_btn.hide()
        sb.addWidget(self.status_label, 1)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.cancel_btn)
        self.resize(1100, 640)

    def _action(self, menu, text: str, keys: str, slot, tip: str) -> QAction:
        a = QAction(text, self)
        a.setShortcut(QKeySequence(keys))
        a.setStatusTip(tip)
        a.setToolTip(tip)
        a.triggered.connect(slot)
        menu.addAction(a)
        self.addAction(a)
        return a

    # ------------------------------------------------------------------ settings
    def _apply_settings(self, s: AppSettings) -> None:
        self.api_box.setCurrentText(s.midi_api)
        self.refresh_ports()
        self.in_box.setCurrentText(s.in_port or VIRTUAL_PORT)
        self.out_box.setCurrentText(s.out_port or VIRTUAL_PORT)
        self.clock_box.setCurrentIndex(max(0, self.clock_box.findData(s.clock_source)))
        self.tempo_spin.setValue(s.tempo)
        self.bars_box.setCurrentIndex(max(0, self.bars_box.findData(s.bars)))
        self.temp_spin.setValue(s.temperature)
        self.var_spin.setValue(s.variations)
        self._fill_model_controls()

    def current_settings(self) -> AppSettings:
        def port(box: QComboBox) -> str:
            t = box.currentText().strip()
            return "" if t in ("", VIRTUAL_PORT) else t

        return AppSettings(
            midi_api=self.api_box.currentText(),
            in_port=port(self.in_box),
            out_port=port(self.out_box),
            clock_source=self.clock_box.currentData() or "daw",
            tempo=self.tempo_spin.value(),
            model_dir=self.settings.model_dir,
            bars=self.bars_box.currentData() or 4,
            temperature=round(self.temp_spin.value(), 3),
            density=self.density_box.currentData() if self.density_box.count() else -1,
            instrument=self.inst_box.currentData() or self.settings.instrument,
            variations=self.var_spin.value(),
            last_dir=self.settings.last_dir,
        )

    def save_settings(self) -> None:
        self.settings = self.current_settings()
        save_settings(self.store, self.settings)
        if hasattr(self.store, "sync"):
            self.store.sync()

    def refresh_ports(self) -> None:
        """Fill the port pickers from the MIDI system (quietly empty when it is not running)."""
        ins, outs = [VIRTUAL_PORT], [VIRTUAL_PORT]
        try:
            from bandmate.bridge import ports

            api = ports.resolve_api(self.api_box.currentText() or "auto")
            pl = ports.list_ports(api)
            ins += [p for p in pl.inputs if not p.startswith("bandmate")]
            outs += [p for p in pl.outputs if not p.startswith("bandmate")]
        except Exception as e:  # no MIDI system: virtual port only, say so in the tooltip
            log.debug("no port list: %s", e)
        for box, names in ((self.in_box, ins), (self.out_box, outs)):
            keep = box.currentText()
            box.blockSignals(True)
            box.clear()
            box.addItems(names)
            box.setCurrentText(keep or VIRTUAL_PORT)
            box.blockSignals(False)

    # ------------------------------------------------------------------ model
    def model_dialog(self) -> None:
        dlg = QFileDialog(self, "Choose an exported model folder (with bandmate.json)")
        dlg.setFileMode(QFileDialog.FileMode.Directory)
        dlg.fileSelected.connect(self.load_model)
        dlg.open()

    def load_model(self, path: str | None = "") -> None:
        """Load a model folder on a worker ('' or None = the shipped model)."""
        if self.loader is not None and self.loader.thread.is_alive():
            return
        folder = path or None

        def load() -> Any:
            from bandmate.models.session import ModelSession

            return ModelSession.load(folder)

        self.status_label.setText(f"loading model {folder or '(shipped)'}…")
        self.loader = BackgroundCall(load, self)
        self.loader.done.connect(lambda s: self._model_loaded(s, path or ""))
        self.loader.failed.connect(lambda m: self._model_failed(m, path or ""))
        self.loader.start()

    def _model_loaded(self, session: Any, path: str) -> None:
        self.session = session
        self.model_error = ""
        self.settings = AppSettings.from_json({**self.current_settings().to_json(),
                                               "model_dir": path})  # fmt: skip
        self._fill_model_controls()
        if self.prompt_bytes is not None and not self.takes:
            self._read_prompt(self.prompt_bytes, self.prompt_name, quiet=True)
        log.info("model %s loaded (%s)", session.name, session.provider)
        self.save_settings()
        self._update_buttons()
        self.update_status()

    def _model_failed(self, message: str, path: str) -> None:
        self.model_error = message
        where = path or "the shipped model"
        self.messages.error(
            "No model",
            f"bandmate could not load {where}: {message}\n\nChoose an exported model folder "
            "(File > Choose model…, Ctrl+M): it holds model.onnx, tokenizer.json and "
            "bandmate.json. 'bandmate export' writes one.",
        )
        self._update_buttons()
        self.update_status()

    def _fill_model_controls(self) -> None:
        s = self.session
        want_inst = self.inst_box.currentData() or self.settings.instrument
        self.inst_box.blockSignals(True)
        self.inst_box.clear()
        labels = list(getattr(s, "labels_seen", ()) or ())
        if s is not None and not labels:
            labels = [lab for lab in s.config.labels if not lab.isdigit()] + ["0", "33"]
        for label, name in instrument_choices(labels):
            self.inst_box.addItem(name, label)
        if s is not None and want_inst not in labels:
            want_inst = getattr(s, "bass_label", None) or (labels[0] if labels else "")
        self.inst_box.setCurrentIndex(max(0, self.inst_box.findData(want_inst)))
        self.inst_box.blockSignals(False)
        want_d = self.density_box.currentData()
        if want_d is None:
            want_d = self.settings.density
        self.density_box.clear()
        self.density_box.addItem("Auto", -1)
        bins = s.config.density_bins if s is not None else 0
        for d in range(bins):
            self.density_box.addItem(str(d + 1), d)
        self.density_box.setCurrentIndex(max(0, self.density_box.findData(want_d)))
        self.density_box.setEnabled(bins > 0)
        self._update_buttons()

    # ------------------------------------------------------------------ files
    def open_dialog(self) -> None:
        dlg = QFileDialog(self, "Open a MIDI file as prompt", self.settings.last_dir)
        dlg.setNameFilter("MIDI files (*.mid *.midi *.kar *.smf);;All files (*)")
        dlg.fileSelected.connect(self.open_midi)
        dlg.open()

    def open_midi(self, path: str | Path) -> bool:
        """Load a MIDI file as the prompt; a bad file is refused with a message."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as e:
            self.messages.error("Cannot open file", f"{p}: {e.strerror or e}. Pick another file.")
            return False
        ok = self._read_prompt(data, p.name)
        if ok:
            self.source_path = p
            self.settings = AppSettings.from_json({**self.current_settings().to_json(),
                                                   "last_dir": str(p.parent)})  # fmt: skip
            self.save_settings()
        return ok

    def _read_prompt(self, data: bytes, name: str, quiet: bool = False) -> bool:
        from dataclasses import replace

        from bandmate.models.config import CodecConfig
        from bandmate.models.midi_io import MidiError
        from bandmate.models.midi_merge import open_source

        config = self.session.config if self.session is not None else CodecConfig()
        if self.meter:
            config = replace(config, meter=self.meter)
        try:
            # The prompt is the file's last 4/4 stretch: Continue writes after the file's end.
            source = open_source(data, config, name)
            section = len(source.sections) - 1
            piece, _ = source.section_piece(section)
        except MidiError as e:
            if not quiet:
                self.messages.error(
                    "Not a usable MIDI file",
                    f"{name}: {e}\n\nThe current prompt is unchanged. Open another file, "
                    "or export the part from your DAW as a standard MIDI file in 4/4.",
                )
            return False
        except Exception as e:  # symusic or mido on a badly broken file
            if not quiet:
                self.messages.error(
                    "Not a usable MIDI file",
                    f"{name} could not be read ({type(e).__name__}: {e}). The current prompt "
                    "is unchanged; open another file.",
                )
            return False
        self.prompt, self.prompt_bytes, self.prompt_name = piece, data, name
        self.source, self.source_section = source, section
        self.load_note = source.partial_note(section)
        if self.load_note and not quiet:
            log.info("%s: %s", name, self.load_note)
        self.tempo_spin.setValue(piece.tempo)  # the file's tempo, for previews
        self.takes = []
        self.last_result = None
        self.take_box.clear()
        self.roll.model.set_prompt(piece, self._track_names(piece))
        self.roll.model.playhead = None
        self.roll.refresh(fit_pitches=True)
        self.roll.center_pitches()
        self.setWindowTitle(f"bandmate — {name}")
        self._update_buttons()
        return True

    def _track_names(self, piece: Piece) -> list[str]:
        return [t.name or instrument_name(t.inst) for t in piece.tracks]

    def save_dialog(self) -> None:
        if self.current_piece() is None:
            self.messages.info("Nothing to save", "Open a MIDI file or generate first.")
            return
        dlg = QFileDialog(self, "Save as MIDI", self.settings.last_dir)
        dlg.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dlg.setDefaultSuffix("mid")
        dlg.setNameFilter("MIDI files (*.mid)")
        dlg.fileSelected.connect(self.save_midi)
        dlg.open()

    def current_piece(self) -> Piece | None:
        """The prompt with the selected take (what Save writes), or the prompt alone."""
        i = self.take_box.currentIndex()
        if 0 <= i < len(self.takes):
            return self.takes[i]
        return self.prompt

    def current_clip(self) -> Piece | None:
        i = self.take_box.currentIndex()
        if not (0 <= i < len(self.takes)) or self.job_prompt is None or self.last_spec is None:
            return None
        return clip_of(self.job_prompt, self.takes[i], self.last_spec.kind)

    def _take_parts(self) -> tuple[list, int] | None:
        """The selected take as new parts of the opened file (None: no take, or live)."""
        from bandmate.models.midi_merge import take_parts

        i = self.take_box.currentIndex()
        src = self.job_source
        if src is None or not (0 <= i < len(self.takes)) or self.last_spec is None:
            return None
        return take_parts(src, self.source_section, self.job_prompt, self.takes[i],
                          self.last_spec.kind)  # fmt: skip

    def save_midi(self, path: str | Path) -> bool:
        """Write the opened file, every event unchanged, plus the selected take (or the
        piece itself for a live capture); never over the opened file, never half a file."""
        from bandmate.models.midi_io import write_midi
        from bandmate.models.midi_merge import merge
        from bandmate.models.outfile import check_output, write_atomic

        piece = self.current_piece()
        if piece is None:
            self.messages.info("Nothing to save", "Open a MIDI file or generate first.")
            return False
        path = Path(path)
        try:
            check_output(path, [self.source_path] if self.source_path else [])
            take = self._take_parts()
            if take is not None:
                parts, at = take
                kind = self.last_spec.kind if self.last_spec else ""
                data = merge(self.job_source, parts, at if kind == "continue" else None)
            elif self.source is not None and not self.takes:
                data = self.source.data  # the prompt alone: the file as it is
            else:
                data = write_midi(piece)
            write_atomic(path, data)
        except ValueError as e:  # OutputError (the opened file, a folder...) or MidiError
            self.messages.error("Cannot save", str(e))
            return False
        except OSError as e:
            self.messages.error("Cannot save", f"{path}: {e.strerror or e}. Pick another folder.")
            return False
        log.info("saved %s (%d bars, %d tracks)", path, piece.bars, len(piece.tracks))
        return True

    def clip_mime(self) -> QMimeData | None:
        """Mime data holding a file URL of the current clip written to a temporary .mid:
        the new part only, at the opened file's resolution and tempo."""
        from bandmate.models.midi_io import write_midi
        from bandmate.models.midi_merge import clip as clip_bytes

        clip = self.current_clip()
        if clip is None:
            self.messages.info("No clip yet", "Generate first, then drag the clip.")
            return None
        folder = Path(tempfile.mkdtemp(prefix="bandmate-clip-"))
        stem = Path(self.prompt_name or "bandmate").stem
        kind = self.last_spec.kind if self.last_spec else "clip"
        path = folder / f"{stem}-{kind}-take{self.take_box.currentIndex() + 1}.mid"
        take = self._take_parts()
        if take is not None:
            path.write_bytes(clip_bytes(self.job_source, *take))
        else:
            write_midi(clip, path)
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(path))])
        return mime

    def dragEnterEvent(self, event) -> None:
        if any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        for u in event.mimeData().urls():
            if u.isLocalFile():
                self.open_midi(u.toLocalFile())
                event.acceptProposedAction()
                return

    # ------------------------------------------------------------------ generation
    def job_spec(self, kind: str) -> JobSpec:
        s = self.current_settings()
        return JobSpec(
            kind=kind,
            bars=s.bars,
            instrument=s.instrument,
            temperature=s.temperature,
            density=None if s.density < 0 else s.density,
            variations=s.variations,
            seed=self.seed,
        )

    def _live_prompt(self, bars: int, t_ns: int) -> Piece | None:
        """The live engine's prompt for a click at ``t_ns``, when connected and the DAW is
        playing (None: use the file)."""
        if self.bridge is None or self.live_link is None:
            return None
        try:
            if not self.bridge.clock.state().running:
                return None
            piece = self.live_link.prompt_at(t_ns, bars)
        except Exception as e:
            log.warning("no live capture: %s", e)
            return None
        return piece if any(t.notes for t in piece.tracks) else None

    def generate(self, kind: str) -> bool:
        """Start Continue or Add track on a worker; False (with a message) when it cannot."""
        if self.busy:
            return False
        if self.session is None:
            self.messages.error(
                "No model",
                "No model is loaded yet. Choose an exported model folder with File > Choose "
                "model… (Ctrl+M)"
                + (f"; the last attempt failed: {self.model_error}" if self.model_error else "."),
            )
            return False
        spec = self.job_spec(kind)
        t_click = time.perf_counter_ns()
        prompt = self._live_prompt(4 if spec.bars == 4 else 8, t_click)
        live = prompt is not None
        if prompt is None:
            prompt = self.prompt
        if prompt is None or not any(t.notes for t in prompt.tracks):
            self.messages.info(
                "Nothing to continue",
                "Open a MIDI file (Ctrl+O, or drop one on the window), or connect and play "
                "your DAW into 'bandmate in'.",
            )
            return False
        if live:
            self.prompt = prompt
            self.prompt_bytes = None
            self.prompt_name = "live"
            self.source = self.source_path = None
            self.load_note = ""
        self.job_source = self.source
        self.job_prompt = prompt
        self.last_spec = spec
        self.takes = []
        self.take_box.blockSignals(True)
        self.take_box.clear()
        self.take_box.blockSignals(False)
        self.roll.model.set_prompt(prompt, self._track_names(prompt))
        self.roll.refresh()
        self._streaming_take = 0
        self._stream_count = 0
        self._roll_follow_step = 0
        self.live = None
        self.playhead_origin = None
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.show()
        self.cancel_btn.show()
        self._job_t0 = time.perf_counter()
        self.stall.start()
        self.busy = True
        if live and self.live_link is not None:
            # the live engine plays one take: notes go from its generation thread straight
            # to the scheduler; the window only draws what it reports (_on_live_event)
            self.worker = None
            self.live = self.live_link.trigger(
                kind, t_click, prompt, spec.instrument, spec.bars,
                SpecGenerator(self.session, spec, self.engine))
            log.info("%s: %s on %d live bars (%s)", kind, spec, prompt.bars, self.live.name)
            self._update_buttons()
            return True
        self.worker = GenerationWorker(self.session, prompt, spec, self.engine, self)
        self.worker.note.connect(self._on_note)
        self.worker.progress.connect(self._on_progress)
        self.worker.take_done.connect(self._on_take)
        self.worker.finished.connect(self._on_finished)
        self.worker.failed.connect(self._on_failed)
        self.worker.start()
        log.info("%s: %s on %d bars", kind, spec, prompt.bars)
        self._update_buttons()
        return True

    def _on_note(self, take: int, track: int, note: Note) -> None:
        if take != self._streaming_take:
            self._streaming_take = take
            self._roll_follow_step = 0
            self.roll.model.clear_generated()
        name = ""
        if self.last_spec is not None and self.last_spec.kind == "add":
            name = instrument_name(self.last_spec.instrument)
        self.roll.model.add_generated(track, note, name)
        self._stream_count += 1
        # repaint at most ~30 times a second, however fast notes stream
        self._roll_follow_step = max(self._roll_follow_step, note.end)
        if not self.repaint_timer.isActive():
            self.repaint_timer.start()
        self.note_streamed.emit(take, track, note)

    def _repaint_roll(self) -> None:
        self.roll.refresh()
        if self.roll.follow and self._roll_follow_step:
            self.roll.show_step(self._roll_follow_step)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)

    def _on_take(self, take: int, piece: Piece, stats: dict) -> None:
        self.takes.append(piece)
        self.take_box.addItem(f"Take {take + 1}")

    def _finish_job(self) -> None:
        self.last_stall_ms = self.stall.stop()
        self.busy = False
        self.repaint_timer.stop()
        self.progress.hide()
        self.cancel_btn.hide()
        self._update_buttons()

    def _on_finished(self, result: JobResult) -> None:
        self._finish_job()
        self.last_result = result
        if self.takes:
            self.take_box.setCurrentIndex(0)
            self._show_take(0)
        else:
            self.roll.model.clear_generated()
            self.roll.refresh()
        log.info(
            "%s %s: %d take(s), %d notes streamed in %.2f s; longest UI stall %.1f ms",
            result.spec.kind,
            "cancelled" if result.cancelled else "done",
            len(result.takes),
            self._stream_count,
            result.seconds,
            self.last_stall_ms or 0.0,
        )
        self.job_finished.emit(result)

    def _on_failed(self, message: str) -> None:
        self._finish_job()
        self.roll.model.clear_generated()
        self.roll.refresh()
        self.messages.error(
            "Generation failed",
            f"{message}\n\nThe prompt is unchanged. Try again, or pick another model "
            "(Ctrl+M) if this keeps happening.",
        )
        self.job_finished.emit(None)

    def _show_take(self, i: int) -> None:
        if not (0 <= i < len(self.takes)) or self.job_prompt is None:
            return
        names = self._track_names(self.job_prompt)
        result = self.takes[i]
        names += [instrument_name(t.inst) for t in result.tracks[len(names) :]]
        self.roll.model.show_result(self.job_prompt, result, names)
        self.roll.refresh()

    def cancel(self) -> None:
        if self.worker is not None and self.worker.is_running():
            log.info("cancelling generation")
            self.worker.cancel()
        live = self.live
        if live is not None and live.state in ("queued", "running") and self.live_link:
            self.live_link.stop(why="cancel")

    # ------------------------------------------------------------------ live engine
    def _on_live_event(self, ev: Any) -> None:
        """Draw what the live engine reports (UI thread, queued from engine threads)."""
        job = ev.job
        if job is None or job is not self.live:
            return  # another job's report (an older one, replaced), or the clock's
        kind, info = ev.kind, ev.info
        spec = self.last_spec
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

    # ------------------------------------------------------------------ MIDI out
    def _open_bridge(self) -> bool:
        if self.bridge is not None:
            return True
        from bandmate.bridge import Bridge, BridgeConfig, PortError, voice_labels

        s = self.current_settings()
        self.save_settings()
        cfg_kw: dict[str, Any] = {
            "api": s.midi_api,
            # DAW clock = the internal clock until the DAW sends Start/clock, then the DAW's
            "clock": "auto" if s.clock_source == "daw" else "internal",
            "tempo": s.tempo,
            "connect_in": s.in_port or None,
            "connect_out": s.out_port or None,
        }
        voices: tuple[str, ...] = ()
        if self.session is not None:
            voices = voice_labels(self.session.config.labels, self.session.labels_seen)
        try:
            br = Bridge(BridgeConfig(**cfg_kw), voices=voices)
            br.open()
        except (PortError, OSError, RuntimeError, ValueError) as e:
            self.messages.error(
                "MIDI port failed",
                f"{e}\n\nPick another port or MIDI system (API) and press Connect again; "
                "files can still be opened, generated and saved without MIDI.",
            )
            return False
        self.bridge = br
        self.live_link = LiveLink(br, self)
        self.live_link.event.connect(self._on_live_event)
        log.info("connected: %s", cfg_kw)
        return True

    def _toggle_connect(self, checked: bool) -> None:
        if checked:
            self.connect_btn.setChecked(self._open_bridge())
        else:
            self.disconnect_midi()
        self._update_buttons()

    def disconnect_midi(self) -> None:
        if self.live_link is not None:
            self.live_link.shutdown()
            self.live_link = None
        if self.bridge is not None:
            try:
                self.bridge.close()
            except Exception as e:
                log.warning("closing MIDI: %s", e)
            self.bridge = None
        self.connect_btn.setChecked(False)

    def preview(self) -> bool:
        """Play the selected take's clip on the output port at the internal/DAW tempo."""
        clip = self.current_clip()
        if clip is None:
            self.messages.info("Nothing to preview", "Generate a take first.")
            return False
        if not self._open_bridge():
            return False
        self.connect_btn.setChecked(True)
        sched = self.bridge.scheduler
        clock = self.bridge.clock
        if not clock.state().running:
            internal = getattr(clock, "internal", clock)
            if hasattr(internal, "start"):
                internal.start()
            else:
                self.messages.info(
                    "Waiting for the DAW",
                    "The preview plays when your DAW's transport runs. Press play there, "
                    "or choose Clock: Internal tempo.",
                )
        bar = sched.next_bar_line(lead_ms=100)
        n = 0
        for t in clip.tracks:
            n += sched.add_notes(list(t.notes), channel=t.channel, velocity=t.velocity,
                                 origin_step=bar * STEPS_PER_BAR)  # fmt: skip
        # roll step of the clip's step 0: after the prompt for a continuation, 0 for a track
        first = self.job_prompt.steps if self.last_spec and self.last_spec.kind == "continue" else 0
        self.playhead_origin = bar * STEPS_PER_BAR - first
        log.info("preview: %d notes from bar %d", n, bar + 1)
        return True

    def stop(self) -> None:
        """Cancel generation and end every sounding note."""
        self.cancel()
        self.playhead_origin = None
        if self.live_link is not None:
            self.live_link.stop()  # ends the live job and everything it would still play
        elif self.bridge is not None:
            self.bridge.stop()

    def panic(self) -> None:
        self.cancel()
        if self.live_link is not None:
            self.live_link.stop(panic=True)
        elif self.bridge is not None:
            self.bridge.panic()
        else:
            self.messages.info("Panic", "Not connected: no MIDI notes are sounding.")

    # ------------------------------------------------------------------ status
    def update_status(self) -> None:
        parts: list[str] = []
        playhead = None
        if self.bridge is not None:
            try:
                st = self.bridge.clock.state()
                now = time.perf_counter_ns()
                step = st.step_at(now) if st.running else st.tick / 6
                bar, beat = int(step // STEPS_PER_BAR), int(step % STEPS_PER_BAR) // STEPS_PER_BEAT
                parts += [f"{st.tempo:.1f} BPM", f"{bar + 1}:{beat + 1}",
                          "playing" if st.running else "stopped"]  # fmt: skip
                live = self.live
                if self.playhead_origin is None and live and live.origin_step is not None:
                    self.playhead_origin = live.origin_step
                if self.playhead_origin is not None and st.running:
                    playhead = step - self.playhead_origin
            except Exception as e:
                parts += [f"clock error: {e}"]
        else:
            tempo = self.prompt.tempo if self.prompt is not None else self.tempo_spin.value()
            parts += [f"{tempo:.1f} BPM", "–:–", "not connected"]
        if self.load_note:
            parts.append(self.load_note)
        if self.session is not None:
            parts += [f"model {self.session.name}", str(self.session.provider)]
        else:
            parts += ["no model" if self.model_error else "loading model…"]
        text = " · ".join(parts)
        if text != self.status_label.text():
            self.status_label.setText(text)
            self.status_changed.emit(text)
        if playhead != self.roll.model.playhead:
            self.roll.model.playhead = playhead
            self.roll.canvas.update()

    def _update_buttons(self) -> None:
        busy = self.busy
        have = self.prompt is not None or self.bridge is not None
        ready = self.session is not None and not busy
        self.continue_btn.setEnabled(ready and have)
        self.add_btn.setEnabled(ready and have)
        inst = self.inst_box.currentText() or "bass"
        self.add_btn.setText(f"Add {inst} track")
        self.preview_btn.setEnabled(bool(self.takes) and not busy)
        self.clip.setEnabled(bool(self.takes))

    # ------------------------------------------------------------------ exit
    def closeEvent(self, event) -> None:
        self.cancel()
        self.save_settings()
        self.disconnect_midi()
        if self.worker is not None:
            self.worker.thread.join(timeout=5)
        super().closeEvent(event)
