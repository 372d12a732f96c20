"""The window with a General MIDI band model (gm-family labels), offscreen, on a real
(random-weight) ONNX model and real MIDI files: GM instrument names, Add Drums, the model
picker."""

from __future__ import annotations

import mido
from bandmate.models.midi_io import write_midi
from bandmate.models.types import DRUM_CHANNEL, Note, Piece, Track
from bandmate.ui.notices import Notices
from bandmate.ui.window import MainWindow


def band_file(path) -> None:
    """4 bars of a band without drums: a clean guitar (program 27) and a finger bass (33)."""
    chords = [(60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62)]
    guitar = tuple(Note(b * 16 + q * 4, p, b * 16 + q * 4 + 3)
                   for b, ch in enumerate(chords) for q in range(4) for p in ch)
    bass = tuple(Note(b * 16 + q * 8, ch[0] - 24, b * 16 + q * 8 + 6)
                 for b, ch in enumerate(chords) for q in range(2))
    write_midi(Piece((Track("24", guitar, 27, 0, "Guitar", 80),
                      Track("32", bass, 33, 1, "Bass", 90)), 4, 110.0), path)


def test_add_drums_to_a_band_file(qtbot, make_window, store, band_model_dir, tmp_path):
    w = make_window(store, band_model_dir)
    assert w.ctl.session is not None, w.notices.items
    w.ctl.seed = 1
    box = w.gen.inst_box
    names = [box.itemText(i) for i in range(box.count()) if box.itemData(i)]
    # families by GM number after Drums, named as a composer knows them
    assert names == ["Drums", "Piano", "Guitar", "Bass", "Ensemble", "Synth Lead"]
    assert box.currentData() == "32" and w.gen.add_btn.text() == "Add Bass track"
    src = tmp_path / "band.mid"
    band_file(src)
    assert w.open_midi(src)
    assert w.roll.model.track_names == ["Guitar", "Bass"]
    box.setCurrentIndex(box.findData("DRUMS"))
    assert w.gen.add_btn.text() == "Add Drums"
    with qtbot.waitSignal(w.job_finished, timeout=120_000) as blocker:
        assert w.generate("add"), w.notices.items
    result = blocker.args[0]
    assert result is not None and not result.cancelled, w.notices.items
    take = result.takes[0]
    drums = take.tracks[2]
    assert drums.inst == "DRUMS" and drums.channel == DRUM_CHANNEL
    assert w.roll.model.track_names[2] == "Drums"
    out = tmp_path / "band-with-drums.mid"
    assert w.save_midi(out)
    mid = mido.MidiFile(out)
    on = [m for t in mid.tracks for m in t if m.type == "note_on" and m.velocity > 0]
    assert {m.channel for m in on} >= {0, 1}
    assert sum(m.channel == DRUM_CHANNEL for m in on) == len(drums.notes)
    assert drums.notes, "the model wrote no drum hit in 4 bars"


def test_the_model_picker_lists_shipped_models_and_remembers(qtbot, make_window, store,
                                                             band_model_dir):
    w = make_window(store, band_model_dir)
    box = w.gen.model_box
    values = [box.itemData(i) for i in range(box.count())]
    assert "default" in values and box.currentData() == str(band_model_dir)
    assert box.currentText() == "folder: band"
    w.gen.temp_spin.setValue(1.3)
    box.activated.emit(box.findData("default"))  # the user picks the chorale model
    qtbot.waitUntil(lambda: w.ctl.session is not None and w.ctl.label_scheme == "program"
                    and "BASS" in w.ctl.session.add_labels, timeout=60_000)
    assert box.currentData() == "default" and w.settings.model_dir == "default"
    assert w.gen.temp_spin.value() == 0.6  # another model: its default temperature
    assert [w.gen.inst_box.itemText(i) for i in range(w.gen.inst_box.count())] == [
        "Soprano", "Alto", "Tenor", "Bass"]
    w.close()
    w2 = MainWindow(store=store, notices=Notices(show_boxes=False), autoload_model=False)
    qtbot.addWidget(w2)
    assert w2.settings.model_dir == "default" and w2.gen.model_box.currentData() == "default"
    assert w2.gen.temp_spin.value() == 0.6


def test_a_model_with_its_own_sampling_sets_the_temperature(qtbot, make_window, store,
                                                            band_model_dir, tmp_path):
    """A model folder whose bandmate.json carries its own sampling defaults (a sweep on its
    tuning pieces picked them): choosing it sets the temperature box; reopening the app on
    the same model keeps what the user set."""
    import json
    import shutil

    own = shutil.copytree(band_model_dir, tmp_path / "tuned")
    meta = json.loads((own / "bandmate.json").read_text())
    meta["sampling"] = {"temperature": 0.45, "top_p": 0.9, "picked_by": "a test"}
    (own / "bandmate.json").write_text(json.dumps(meta))
    w = make_window(store, band_model_dir)
    w.load_model(str(own))
    qtbot.waitUntil(lambda: w.settings.model_dir == str(own), timeout=60_000)
    assert abs(w.gen.temp_spin.value() - 0.45) < 1e-9
    w.gen.temp_spin.setValue(0.8)
    w.save_settings()
    w.close()
    w2 = MainWindow(store=store, notices=Notices(show_boxes=False))
    qtbot.addWidget(w2)
    qtbot.waitUntil(lambda: w2.ctl.session is not None, timeout=60_000)
    assert w2.gen.temp_spin.value() == 0.8
    assert w2.ctl.session.path.resolve() == own.resolve()
