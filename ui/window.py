"""The main window: draws the app's state and sends the user's clicks on as commands.

The state and its rules are Qt-free: `bandmate.ui.controller.AppController` (model, prompt,
takes, save, clip, preview plan) and `bandmate.ui.connection.MidiConnection` (the bridge);
the widgets are built in `bandmate.ui.panels`; `bandmate.ui.job_view.JobView` draws a running
job (a worker's, or the live engine's through `bandmate.ui.live`). What the user can fix goes
to `self.notices` and the window keeps running.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from bandmate.models.session import ModelSession
from bandmate.models.types import Piece
from bandmate.ui import panels
from bandmate.ui.connection import MidiConnection, port_names
from bandmate.ui.controller import AppController, Refusal, track_names
from bandmate.ui.job_view import JobView
from bandmate.ui.jobs import Engine
from bandmate.ui.live import LiveLink
from bandmate.ui.names import add_button_text
from bandmate.ui.notices import Notices
from bandmate.ui.panels import VIRTUAL_PORT, GeneratePanel, MidiPanel, StatusPanel, add_menus
from bandmate.ui.roll import PianoRoll
from bandmate.ui.settings import AppSettings, load_settings, save_settings
from bandmate.ui.worker import BackgroundCall
from PyQt6.QtCore import QMimeData, QSettings, QTimer, QUrl, pyqtSignal
from PyQt6.QtGui import QIcon
from PyQt6.QtWidgets import QMainWindow, QVBoxLayout, QWidget

log = logging.getLogger(__name__)

ICON_PATH = Path(__file__).with_name("bandmate.svg")


class MainWindow(QMainWindow):
    """bandmate's window. Pass ``notices`` / ``store`` / ``engine`` to test it offscreen."""

    status_changed = pyqtSignal(str)
    job_finished = pyqtSignal(object)  # JobResult, or None when the job failed (JobView's)
    note_streamed = pyqtSignal(int, int, object)  # take, track, Note (after the roll has it)

    def __init__(self, store: QSettings | None = None, notices: Notices | None = None,
                 engine: Engine | None = None, model_path: str | None = None,
                 autoload_model: bool = True) -> None:
        super().__init__()
        # The worker runs Python between ONNX calls: a 1 ms GIL switch interval (default 5 ms)
        # keeps the UI responsive (measured in docs/app.md) at no visible cost to decoding.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        self.setWindowTitle("bandmate")
        if ICON_PATH.exists():
            self.setWindowIcon(QIcon(str(ICON_PATH)))
        self.setAcceptDrops(True)
        self.store = store if store is not None else QSettings("bandmate", "bandmate")
        self.notices = notices or Notices(self)
        self.engine = engine
        self.settings = load_settings(self.store)
        self.ctl = AppController()
        self.conn = MidiConnection()
        self.loader: BackgroundCall | None = None
        self.live_link: LiveLink | None = None
        self.playhead_origin: float | None = None  # clock step - this = roll step
        self._build()
        self._apply_settings(self.settings)
        self.status_timer = QTimer(self)
        self.status_timer.timeout.connect(self.update_status)
        self.status_timer.start(100)
        self.update_status()
        self._update_buttons()
        if autoload_model:
            self.load_model(model_path if model_path is not None else self.settings.model_dir)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        central = QWidget()
        root = QVBoxLayout(central)
        self.midi, self.gen, self.status = MidiPanel(), GeneratePanel(self.clip_mime), StatusPanel()
        self.roll = PianoRoll()
        self.jobs = JobView(self.ctl, self.roll, self.gen, self.status, self.notices, self)
        self.jobs.job_finished.connect(self.job_finished)
        self.jobs.note_streamed.connect(self.note_streamed)
        self.jobs.idle.connect(self._update_buttons)
        for w, stretch in ((self.midi, 0), (self.gen, 0), (self.roll, 1)):
            root.addWidget(w, stretch)
        self.setCentralWidget(central)
        m, g = self.midi, self.gen
        m.refresh_btn.clicked.connect(self.refresh_ports)
        m.connect_btn.clicked.connect(self._toggle_connect)
        g.inst_box.currentIndexChanged.connect(self._update_buttons)
        g.model_box.activated.connect(self._model_chosen)
        g.take_box.currentIndexChanged.connect(self.jobs.show_take)
        g.continue_btn.clicked.connect(lambda: self.generate("continue"))
        g.add_btn.clicked.connect(lambda: self.generate("add"))
        g.preview_btn.clicked.connect(self.preview)
        g.stop_btn.clicked.connect(self.stop)
        g.panic_btn.clicked.connect(self.panic)
        self.status.cancel_btn.clicked.connect(self.cancel)
        add_menus(self, {
            "&File": [("&Open MIDI…", "Ctrl+O", self.open_dialog, "Open a MIDI file as prompt"),
                      ("&Save MIDI…", "Ctrl+S", self.save_dialog, "Save prompt + take"),
                      ("Choose &model…", "Ctrl+M", self.model_dialog, "Load a model folder"),
                      None, ("&Quit", "Ctrl+Q", self.close, "Quit bandmate")],
            "&View": [("Zoom &in", "Ctrl+=", lambda: self.roll.zoom(1.25), "Zoom in"),
                      ("Zoom &out", "Ctrl+-", lambda: self.roll.zoom(0.8), "Zoom out"),
                      ("&Fit", "Ctrl+0", self.roll.fit_width, "Show the whole timeline")],
        })  # fmt: skip
        self.status.install(self.statusBar())
        self.resize(1100, 640)

    def refuse(self, r: Refusal) -> bool:
        self.notices.post(r.level, r.title, r.text)
        return False

    # ------------------------------------------------------------------ settings
    def _apply_settings(self, s: AppSettings) -> None:
        m, g = self.midi, self.gen
        m.api_box.setCurrentText(s.midi_api)
        self.refresh_ports()
        m.in_box.setCurrentText(s.in_port or VIRTUAL_PORT)
        m.out_box.setCurrentText(s.out_port or VIRTUAL_PORT)
        m.clock_box.setCurrentIndex(max(0, m.clock_box.findData(s.clock_source)))
        m.tempo_spin.setValue(s.tempo)
        g.bars_box.setCurrentIndex(max(0, g.bars_box.findData(s.bars)))
        g.temp_spin.setValue(s.temperature)
        g.var_spin.setValue(s.variations)
        self._fill_model_controls()

    def current_settings(self, **changes: str) -> AppSettings:
        m, g = self.midi, self.gen
        s = AppSettings(
            midi_api=m.api_box.currentText(), in_port=m.port(m.in_box),
            out_port=m.port(m.out_box), clock_source=m.clock_box.currentData() or "daw",
            tempo=m.tempo_spin.value(), model_dir=self.settings.model_dir,
            bars=g.bars_box.currentData() or 4, temperature=round(g.temp_spin.value(), 3),
            density=g.density_box.currentData() if g.density_box.count() else -1,
            instrument=g.inst_box.currentData() or self.settings.instrument,
            variations=g.var_spin.value(), last_dir=self.settings.last_dir,
        )  # fmt: skip
        return AppSettings.from_json({**s.to_json(), **changes}) if changes else s

    def save_settings(self, **changes: str) -> None:
        self.settings = self.current_settings(**changes)
        save_settings(self.store, self.settings)
        self.store.sync()

    def refresh_ports(self) -> None:
        """Fill the port pickers from the MIDI system (quietly empty when it is not running)."""
        self.midi.set_port_names(*port_names(self.midi.api_box.currentText()))

    # ------------------------------------------------------------------ model
    def model_dialog(self) -> None:
        panels.open_file_dialog(self, "Choose an exported model folder (with bandmate.json)",
                         self.load_model, folder=True)

    def _model_chosen(self, i: int) -> None:
        value = self.gen.model_box.itemData(i)
        if value == panels.OTHER_MODEL:  # back to the model in use until a folder is chosen
            self.gen.set_models(*self.ctl.model_choices(self.settings.model_dir))
            self.model_dialog()
        elif value != (self.settings.model_dir or "default"):
            self.load_model(value)

    def load_model(self, path: str | None = "") -> None:
        """Load a model folder on a worker ('' or None = the shipped model)."""
        if self.loader is not None and self.loader.thread.is_alive():
            return
        folder = path or None
        self.status.label.setText(f"loading model {folder or '(shipped)'}…")
        self.loader = BackgroundCall(lambda: ModelSession.load(folder), self)
        self.loader.done.connect(lambda s: self._model_loaded(s, path or ""))
        self.loader.failed.connect(lambda m: self._model_failed(m, path or ""))
        self.loader.start()

    def _model_loaded(self, session: ModelSession, path: str) -> None:
        if self.ctl.model_loaded(session) and self.ctl.prompt is not None:
            self._show_prompt(self.ctl.prompt)
        if path != (self.settings.model_dir or ""):  # a new model: its own temperature
            self.gen.temp_spin.setValue(session.default_sampling().temperature)
        self.save_settings(model_dir=path)
        self._fill_model_controls()
        log.info("model %s loaded (%s)", session.name, session.provider)
        self._update_buttons()
        self.update_status()

    def _model_failed(self, message: str, path: str) -> None:
        self.refuse(self.ctl.model_failed(message, path))
        self._update_buttons()
        self.update_status()

    def _fill_model_controls(self) -> None:
        g = self.gen
        g.set_models(*self.ctl.model_choices(self.settings.model_dir))
        want_d = g.density_box.currentData()
        g.set_instruments(*self.ctl.instruments(g.inst_box.currentData()
                                                or self.settings.instrument))
        g.set_density_bins(self.ctl.density_bins,
                           self.settings.density if want_d is None else want_d)
        self._update_buttons()

    # ------------------------------------------------------------------ files
    def open_dialog(self) -> None:
        panels.open_file_dialog(self, "Open a MIDI file as prompt", self.open_midi,
                         self.settings.last_dir,
                         "MIDI files (*.mid *.midi *.kar *.smf);;All files (*)")

    def open_midi(self, path: str | Path) -> bool:
        """Load a MIDI file as the prompt; a bad file is refused with a message."""
        try:
            piece = self.ctl.open_file(path)
        except Refusal as r:
            return self.refuse(r)
        if self.ctl.load_note:
            log.info("%s: %s", self.ctl.prompt_name, self.ctl.load_note)
        self._show_prompt(piece)
        self.save_settings(last_dir=str(Path(path).parent))
        return True

    def _show_prompt(self, piece: Piece) -> None:
        self.midi.tempo_spin.setValue(piece.tempo)  # the file's tempo, for previews
        self.gen.take_box.clear()
        self.roll.model.set_prompt(piece, track_names(piece, self.ctl.label_scheme))
        self.roll.model.playhead = None
        self.roll.refresh(fit_pitches=True)
        self.roll.center_pitches()
        self.setWindowTitle(f"bandmate — {self.ctl.prompt_name}")
        self._update_buttons()

    def save_dialog(self) -> None:
        if self.current_piece() is None:
            self.notices.info("Nothing to save", "Open a MIDI file or generate first.")
            return
        panels.open_file_dialog(self, "Save as MIDI", self.save_midi, self.settings.last_dir,
                         "MIDI files (*.mid)", save_suffix="mid")

    def current_piece(self) -> Piece | None:
        return self.ctl.current_piece(self.gen.take_box.currentIndex())

    def current_clip(self) -> Piece | None:
        return self.ctl.current_clip(self.gen.take_box.currentIndex())

    def save_midi(self, path: str | Path) -> bool:
        try:
            return self.ctl.save(path, self.gen.take_box.currentIndex()) is not None
        except Refusal as r:
            return self.refuse(r)

    def clip_mime(self) -> QMimeData | None:
        """Mime data holding a file URL of the current clip (a temporary .mid)."""
        try:
            path = self.ctl.write_clip(self.gen.take_box.currentIndex())
        except Refusal as r:
            self.refuse(r)
            return None
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
    def _live_prompt(self, bars: int, t_ns: int) -> Piece | None:
        """The live engine's prompt for a click at ``t_ns`` while the DAW plays (None: use
        the file)."""
        link = self.live_link
        return link.played_prompt(t_ns, bars) if link and self.conn.running() else None

    def generate(self, kind: str) -> bool:
        """Start Continue or Add track; False (with a message) when it cannot."""
        if self.jobs.busy:
            return False
        try:
            session = self.ctl.check_ready()
            spec = self.ctl.job_spec(kind, self.current_settings())
            t_click = time.perf_counter_ns()
            live_prompt = self._live_prompt(spec.bars, t_click)
            prompt = self.ctl.start_job(spec, live_prompt)
        except Refusal as r:
            return self.refuse(r)
        self.playhead_origin = None
        if live_prompt is not None and self.live_link is not None:
            self.jobs.start_live(self.live_link, t_click, session, prompt, spec, self.engine)
        else:
            self.jobs.start_worker(session, prompt, spec, self.engine)
        self._update_buttons()
        return True

    def cancel(self) -> None:
        self.jobs.cancel(self.live_link)

    # ------------------------------------------------------------------ MIDI out
    def _open_bridge(self) -> bool:
        if self.conn.bridge is not None:
            return True
        self.save_settings()
        try:
            bridge = self.conn.open(self.settings, self.ctl.session)
        except Refusal as r:
            return self.refuse(r)
        self.live_link = LiveLink(bridge, self)
        self.live_link.event.connect(self.jobs.on_live_event)
        return True

    def _toggle_connect(self, checked: bool) -> None:
        if checked:
            self.midi.connect_btn.setChecked(self._open_bridge())
        else:
            self.disconnect_midi()
        self._update_buttons()

    def disconnect_midi(self) -> None:
        if self.live_link is not None:
            self.live_link.shutdown()
            self.live_link = None
        self.conn.close()
        self.midi.connect_btn.setChecked(False)

    def preview(self) -> bool:
        """Play the selected take's clip on the output port at the internal/DAW tempo."""
        try:
            clip, first = self.ctl.preview_clip(self.gen.take_box.currentIndex())
        except Refusal as r:
            return self.refuse(r)
        if not self._open_bridge():
            return False
        self.midi.connect_btn.setChecked(True)
        if not self.conn.running() and not self.conn.start_internal_clock():
            self.notices.info("Waiting for the DAW", "The preview plays when your DAW's "
                               "transport runs. Press play there, or choose Clock: Internal "
                               "tempo.")  # fmt: skip
        _, self.playhead_origin = self.conn.preview(clip, first)
        return True

    def stop(self) -> None:
        """Cancel generation and end every sounding note."""
        self.cancel()
        self.playhead_origin = None
        if self.live_link is not None:
            self.live_link.stop()  # ends the live job and everything it would still play
        else:
            self.conn.stop()

    def panic(self) -> None:
        self.cancel()
        if self.live_link is not None:
            self.live_link.stop(panic=True)
        elif not self.conn.stop(panic=True):
            self.notices.info("Panic", "Not connected: no MIDI notes are sounding.")

    # ------------------------------------------------------------------ status
    def update_status(self) -> None:
        playhead = None
        if self.conn.bridge is not None:
            parts, step = self.conn.status()
            live = self.jobs.live
            if self.playhead_origin is None and live and live.origin_step is not None:
                self.playhead_origin = live.origin_step
            if self.playhead_origin is not None and step is not None:
                playhead = step - self.playhead_origin
        else:
            parts = self.ctl.idle_status(self.midi.tempo_spin.value())
        text = " · ".join(parts + self.ctl.status_tail())
        if text != self.status.label.text():
            self.status.label.setText(text)
            self.status_changed.emit(text)
        if playhead != self.roll.model.playhead:
            self.roll.model.playhead = playhead
            self.roll.canvas.update()

    def _update_buttons(self) -> None:
        g, busy, takes = self.gen, self.jobs.busy, bool(self.ctl.takes)
        ready = self.ctl.session is not None and not busy
        have = self.ctl.prompt is not None or self.conn.bridge is not None
        g.continue_btn.setEnabled(ready and have)
        g.add_btn.setEnabled(ready and have)
        g.add_btn.setText(add_button_text(g.inst_box.currentData() or "BASS",
                                          g.inst_box.currentText()))
        g.preview_btn.setEnabled(takes and not busy)
        g.clip.setEnabled(takes)

    def closeEvent(self, event) -> None:
        self.cancel()
        self.save_settings()
        self.disconnect_midi()
        if self.jobs.worker is not None:
            self.jobs.worker.thread.join(timeout=5)
        super().closeEvent(event)
