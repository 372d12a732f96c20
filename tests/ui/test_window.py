"""The main window, offscreen, on a real (tiny, random-weight) ONNX model and real MIDI files."""

from __future__ import annotations

from pathlib import Path

import pytest
from bandmate.models.midi_io import read_midi, write_midi
from bandmate.models.types import Piece
from bandmate.ui.jobs import JobResult
from bandmate.ui.notices import Notices
from bandmate.ui.window import MainWindow

CHORALE = Path(__file__).parents[1] / "data" / "jsfakes-0.mid"


@pytest.fixture
def window(make_window, store, model_dir) -> MainWindow:
    w = make_window(store, model_dir)
    assert w.ctl.session is not None, w.notices.items
    w.ctl.seed = 1
    return w


def run_job(qtbot, w: MainWindow, kind: str) -> JobResult:
    with qtbot.waitSignal(w.job_finished, timeout=120_000) as blocker:
        assert w.generate(kind), w.notices.items
    assert blocker.args[0] is not None, w.notices.items
    return blocker.args[0]


def test_window_builds_with_model_controls(window):
    w = window
    assert w.ctl.session.name in w.status.label.text()
    assert str(w.ctl.session.provider) in w.status.label.text()
    names = [w.gen.inst_box.itemText(i) for i in range(w.gen.inst_box.count())]
    assert "Bass" in names and all(n == n.title() for n in names)
    assert w.gen.add_btn.text() == f"Add {w.gen.inst_box.currentText()} track"
    assert not w.gen.continue_btn.isEnabled()  # nothing to continue yet
    assert w.gen.continue_btn.toolTip() and w.gen.continue_btn.shortcut().toString()


def test_continue_streams_into_roll_and_saves_midi(qtbot, window, tmp_path):
    w = window
    assert w.open_midi(CHORALE)
    prompt = w.ctl.prompt
    assert w.gen.continue_btn.isEnabled()
    streamed = []
    w.gen.bars_box.setCurrentIndex(w.gen.bars_box.findData(4))
    with qtbot.waitSignal(w.job_finished, timeout=120_000) as blocker:
        w.note_streamed.connect(lambda take, track, note: streamed.append((track, note)))
        assert w.generate("continue")
    result = blocker.args[0]
    assert not result.cancelled and len(result.takes) == 1
    assert streamed, "no notes streamed"
    assert all(n.start >= prompt.steps for _, n in streamed)
    # the roll shows the prompt plus every generated note, marked as generated
    model = w.roll.model
    assert model.generated_count() == len({(t, n) for t, n in streamed})
    assert model.bars == prompt.bars + 4
    assert w.jobs.last_stall_ms is not None
    print(f"longest UI stall during generation: {w.jobs.last_stall_ms:.1f} ms")

    out = tmp_path / "out.mid"
    assert w.save_midi(out)
    back = read_midi(out, w.ctl.session.config)
    assert back.bars == prompt.bars + 4
    assert len(back.tracks) == len(prompt.tracks)
    assert sum(len(t.notes) for t in back.tracks) >= sum(len(t.notes) for t in prompt.tracks)

    mime = w.clip_mime()
    assert mime is not None and mime.hasUrls()
    clip = read_midi(mime.urls()[0].toLocalFile(), w.ctl.session.config)
    assert 1 <= clip.bars <= 4
    assert sum(len(t.notes) for t in clip.tracks) == model.generated_count()


def test_add_track(qtbot, window, tmp_path):
    w = window
    full = read_midi(CHORALE, w.ctl.session.config)
    three = Piece(full.tracks[:3], full.bars, full.tempo)
    src = tmp_path / "satb-without-bass.mid"
    write_midi(three, src)
    assert w.open_midi(src)
    w.gen.inst_box.setCurrentIndex(w.gen.inst_box.findData("BASS"))
    assert w.gen.add_btn.text() == "Add Bass track"
    result = run_job(qtbot, w, "add")
    take = result.takes[0]
    assert len(take.tracks) == 4 and take.tracks[3].inst == "BASS"
    model = w.roll.model
    assert model.track_names[3] == "Bass"
    assert all(n.track == 3 for n in model.notes if n.generated)
    assert model.generated_count() == len(take.tracks[3].notes)
    clip = w.current_clip()
    assert [t.inst for t in clip.tracks] == ["BASS"]


def test_variations_and_cancel(qtbot, window):
    w = window
    assert w.open_midi(CHORALE)
    w.gen.var_spin.setValue(4)
    w.gen.bars_box.setCurrentIndex(w.gen.bars_box.findData(8))
    with qtbot.waitSignal(w.job_finished, timeout=120_000) as blocker:
        assert w.generate("continue")
        assert not w.gen.continue_btn.isEnabled() and w.status.cancel_btn.isVisible()
        w.note_streamed.connect(w.cancel)
    w.note_streamed.disconnect(w.cancel)
    result = blocker.args[0]
    assert result.cancelled and len(result.takes) < 4
    assert not w.status.cancel_btn.isVisible() and w.gen.continue_btn.isEnabled()
    # the window is usable again: one more full take
    w.gen.var_spin.setValue(2)
    w.gen.bars_box.setCurrentIndex(w.gen.bars_box.findData(4))
    result = run_job(qtbot, w, "continue")
    assert len(result.takes) == 2 and w.gen.take_box.count() == 2
    w.gen.take_box.setCurrentIndex(1)
    assert w.current_piece() is result.takes[1]


def test_corrupt_and_missing_files_are_refused(qtbot, window, tmp_path):
    w = window
    assert w.open_midi(CHORALE)
    before = w.ctl.prompt
    bad = tmp_path / "broken.mid"
    bad.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\xff\xff\xff\xffgarbage")
    assert not w.open_midi(bad)
    msg = w.notices.last()
    assert msg.level == "error" and "broken.mid" in msg.text and "Open another file" in msg.text
    assert w.ctl.prompt is before
    assert not w.open_midi(tmp_path / "missing.mid")
    assert "Pick another file" in w.notices.last().text
    text = tmp_path / "notes.mid"
    text.write_text("this is not MIDI")
    assert not w.open_midi(text)
    assert w.ctl.prompt is before and w.isVisible()
    run_job(qtbot, w, "continue")  # still works


def test_no_model_is_explained(make_window, store, tmp_path):
    w = make_window(store, tmp_path / "no-such-model")
    assert w.ctl.session is None
    assert w.notices.last().title == "No model" and "Ctrl+M" in w.notices.last().text
    assert w.open_midi(CHORALE)
    assert not w.generate("continue")
    assert "Choose model" in w.notices.last().text
    assert "no model" in w.status.label.text()


def test_settings_persist(qtbot, make_window, store, model_dir):
    w = make_window(store, model_dir)
    w.gen.bars_box.setCurrentIndex(w.gen.bars_box.findData(8))
    w.gen.temp_spin.setValue(0.7)
    w.gen.var_spin.setValue(3)
    w.midi.clock_box.setCurrentIndex(w.midi.clock_box.findData("internal"))
    w.midi.tempo_spin.setValue(96)
    w.gen.inst_box.setCurrentIndex(w.gen.inst_box.findData("TENOR"))
    w.close()
    w2 = MainWindow(store=store, notices=Notices(show_boxes=False), autoload_model=False)
    qtbot.addWidget(w2)
    s = w2.settings
    assert (s.bars, s.temperature, s.variations, s.clock_source, s.tempo) == (
        8, 0.7, 3, "internal", 96.0,
    )  # fmt: skip
    assert s.model_dir == str(model_dir) and s.instrument == "TENOR"
    assert w2.gen.bars_box.currentData() == 8 and w2.midi.clock_box.currentData() == "internal"


def test_port_failure_is_explained(qtbot, window, monkeypatch):
    w = window
    monkeypatch.setenv("JACK_DEFAULT_SERVER", "bandmate-no-such-server")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    w.midi.api_box.setCurrentText("jack")
    w.midi.connect_btn.click()
    assert w.conn.bridge is None and not w.midi.connect_btn.isChecked()
    msg = w.notices.last()
    assert msg.title == "MIDI port failed" and "press Connect again" in msg.text
    assert w.open_midi(CHORALE)  # still usable


def test_dropping_a_midi_file_opens_it(window):
    from PyQt6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PyQt6.QtGui import QDropEvent

    w = window
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(CHORALE))])
    ev = QDropEvent(
        QPointF(10, 10), Qt.DropAction.CopyAction, mime,
        Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
    )  # fmt: skip
    w.dropEvent(ev)
    assert w.ctl.prompt is not None and w.ctl.prompt_name == CHORALE.name
    assert [t.inst for t in w.ctl.prompt.tracks] == ["SOPRANO", "ALTO", "TENOR", "BASS"]
    assert w.roll.model.track_names == ["Soprano", "Alto", "Tenor", "Bass"]
