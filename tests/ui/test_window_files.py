"""The app's files and first minute: Save and the drag clip keep the user's file, the empty
roll says what to do, the tempo box and status line describe the opened file, no chatter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mido
import pytest
from bandmate.ui.window import MainWindow

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
from midi_song import END, END_44, TPQ, assert_originals_kept, notes, song


@pytest.fixture
def window(make_window, store, model_dir) -> MainWindow:
    w = make_window(store, model_dir)
    assert w.ctl.session is not None, w.notices.items
    w.ctl.seed = 1
    return w


@pytest.fixture
def src(tmp_path) -> Path:
    return song(tmp_path / "song.mid")


def run_job(qtbot, w: MainWindow, kind: str):
    with qtbot.waitSignal(w.job_finished, timeout=120_000) as blocker:
        assert w.generate(kind), w.notices.items
    assert blocker.args[0] is not None, w.notices.items
    return blocker.args[0]


def test_empty_roll_says_what_to_do(window):
    w = window
    assert not w.roll.model.notes
    assert "Open a MIDI file" in w.roll.canvas.hint and "Connect" in w.roll.canvas.hint
    img = w.roll.canvas.grab().toImage()
    hint = {(154, 157, 171)}  # HINT's colour: the text is drawn
    found = any(
        (img.pixelColor(x, y).red(), img.pixelColor(x, y).green(), img.pixelColor(x, y).blue())
        in hint
        for x in range(0, img.width(), 2)
        for y in range(img.height() // 2 - 30, img.height() // 2 + 30)
    )
    assert found, "no hint text in the empty roll"


def test_opened_file_sets_tempo_and_says_it_was_partly_read(window, src):
    w = window
    w.midi.tempo_spin.setValue(120)
    assert w.open_midi(src)
    assert w.midi.tempo_spin.value() == pytest.approx(90.0)
    w.update_status()
    text = w.status.label.text()
    assert "90.0 BPM" in text and "bars 1-8 of 16 loaded" in text


def test_save_and_clip_keep_the_users_file(qtbot, window, src, tmp_path):
    w = window
    assert w.open_midi(src)
    before = src.read_bytes()
    alone = tmp_path / "alone.mid"
    assert w.save_midi(alone) and alone.read_bytes() == before  # no take: the file itself
    w.gen.bars_box.setCurrentIndex(w.gen.bars_box.findData(4))
    run_job(qtbot, w, "continue")
    out = tmp_path / "out.mid"
    assert w.save_midi(out)
    assert_originals_kept(src, out)
    new = [n for t in range(1, 5) for n in notes(out, t) if n not in notes(src, t)]
    assert new and all(END <= n[0] < END + 4 * 4 * TPQ for n in new), "after the file's end"
    assert {v for *_, v in new} != {80}
    # never over the opened file
    assert not w.save_midi(src)
    assert "is the input file" in w.notices.items[-1].text
    assert src.read_bytes() == before
    mime = w.clip_mime()
    clip = Path(mime.urls()[0].toLocalFile())
    m = mido.MidiFile(clip)
    assert m.ticks_per_beat == TPQ
    assert sum(len(notes(clip, t)) for t in range(1, len(m.tracks))) == len(new)
    # a new track over the 4/4 bars, the 3/4 bars left alone
    run_job(qtbot, w, "add")
    both = tmp_path / "bass.mid"
    assert w.save_midi(both)
    assert_originals_kept(src, both)
    bass = notes(both, len(mido.MidiFile(both).tracks) - 1)
    assert bass and all(t < END_44 for t, _, _ in bass)


def test_meter_assume_4_4(window, src, tmp_path):
    w = window
    waltz = tmp_path / "waltz.mid"
    m = mido.MidiFile(src)
    m.tracks[0] = mido.MidiTrack([mido.MetaMessage("time_signature", numerator=3, denominator=4)])
    m.save(waltz)
    assert not w.open_midi(waltz)
    assert "--meter assume-4/4" in w.notices.items[-1].text
    w.ctl.meter = "assume-4/4"
    assert w.open_midi(waltz)


def test_no_midi_library_chatter_unless_verbose(tmp_path, model_dir):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path),
           "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "JACK_NO_START_SERVER": "1",
           "JACK_DEFAULT_SERVER": "bandmate-test-no-such-server"}  # fmt: skip

    def start(*extra: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "bandmate", "app", "--model", str(model_dir),
             "--screenshot", str(tmp_path / "s.png"), *extra],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    quiet = start()
    for noise in ("ALSA lib", "Cannot connect to server", "jack server", "JackShm"):
        assert noise not in quiet, quiet
    loud = start("--verbose")
    assert "DEBUG" in loud
