"""Qt runs offscreen in these tests (without a display Qt would abort)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("JACK_NO_START_SERVER", "1")

from pathlib import Path

import pytest

CHORALE = Path(__file__).parents[1] / "data" / "jsfakes-0.mid"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight model folder (real ONNX, real tokenizer.json), made once."""
    from support.models import export_random

    return export_random(tmp_path_factory.mktemp("model") / "random", seed=0)


@pytest.fixture
def store(tmp_path):
    """A private settings file, so tests never touch the user's QSettings."""
    from PyQt6.QtCore import QSettings

    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def make_window(qtbot):
    """Build a window offscreen (message boxes off) and wait until its model has loaded."""
    from bandmate.ui.notices import Notices
    from bandmate.ui.window import MainWindow

    def make(store, model) -> MainWindow:
        w = MainWindow(store=store, notices=Notices(show_boxes=False), model_path=str(model))
        qtbot.addWidget(w)
        w.show()
        qtbot.waitUntil(lambda: w.ctl.session is not None or bool(w.ctl.model_error),
                        timeout=60_000)
        return w

    return make


@pytest.fixture(scope="session")
def ui_jack_server(jack_server):
    """The session's private JACK server (tests/conftest.py), shared with the bridge tests."""
    return jack_server
