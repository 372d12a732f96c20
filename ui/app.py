"""Open the desktop app (the default command): ports, clock, piano roll, Continue / Add track."""

from __future__ import annotations

import argparse
import logging
import sys

from bandmate.models.config import METER_HELP, METERS
from bandmate.models.registry import MODEL_HELP

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("midi", nargs="?", help="a MIDI file to open as the prompt")
    parser.add_argument("--model", default=None, help=MODEL_HELP + " (default: the last one "
                        "used, else default)")  # fmt: skip
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "--screenshot", default=None, metavar="PNG",
        help="render the window to PNG (after generating when a MIDI file is given) and exit",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=None, help="fixed sampling seed (repeatable takes)"
    )
    parser.add_argument("--reset-settings", action="store_true", help="forget stored settings")
    parser.add_argument("--meter", choices=METERS, default=None, help=METER_HELP)
    parser.add_argument(
        "--verbose", action="store_true",
        help="log debug detail, and let the MIDI libraries (ALSA, JACK) print their messages",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from bandmate import __version__

    if args.version:
        print(f"bandmate {__version__}")
        return 0
    verbose = args.verbose or logging.getLogger().isEnabledFor(logging.DEBUG)
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    else:  # before any port is listed: their chatter on stderr only alarms a new user
        from bandmate.bridge.native_log import silence_midi_library_logs

        silence_midi_library_logs()
    log.debug("verbose: %s", verbose)
    from bandmate.ui.qt_check import platform_problem

    hint = platform_problem()
    if hint:  # Qt would abort with its own message; say what fixes it instead
        print(hint, file=sys.stderr)
        return 1
    from bandmate.ui.window import MainWindow
    from PyQt6.QtCore import QSettings, QTimer
    from PyQt6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("bandmate")
    app.setOrganizationName("bandmate")
    app.setDesktopFileName("bandmate")
    store = QSettings("bandmate", "bandmate")
    if args.reset_settings:
        store.clear()
    win = MainWindow(store=store, model_path=args.model)
    win.ctl.seed = args.seed
    win.ctl.meter = args.meter
    if args.midi:
        win.open_midi(args.midi)
    win.show()
    if args.screenshot:
        return _screenshot(app, win, args.screenshot, bool(args.midi))
    QTimer.singleShot(0, lambda: log.info("bandmate %s ready", __version__))
    return app.exec()


def _screenshot(app, win, path: str, generate: bool) -> int:
    """Wait for the model, generate once if a prompt is open, save the window as PNG."""
    from PyQt6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    state = {"started": False}

    def poll() -> None:
        if win.ctl.session is None and not win.ctl.model_error:
            return
        if generate and win.ctl.session is not None and not state["started"]:
            state["started"] = win.generate("continue")
            if not state["started"]:
                loop.quit()
            return
        if win.jobs.worker is not None and win.jobs.worker.is_running():
            return
        loop.quit()

    timer = QTimer()
    timer.timeout.connect(poll)
    timer.start(50)
    QTimer.singleShot(120_000, loop.quit)
    loop.exec()
    app.processEvents()
    win.roll.fit_width()
    app.processEvents()
    ok = win.grab().save(path)
    win.close()
    print(f"screenshot {'written to ' + path if ok else 'FAILED'}")
    return 0 if ok else 1
