"""`bandmate generate` through `main(argv)`: the user's file is sacred, errors are one line."""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path

import mido
import pytest
from bandmate.models import generate as G
from bandmate.models.session import ModelSession

from bandmate.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from midi_song import END, END_44, TPQ, assert_originals_kept, notes, song


@pytest.fixture
def src(tmp_path) -> Path:
    return song(tmp_path / "song.mid")


def gen(model_dir, *argv) -> int:
    return main(["generate", *map(str, argv), "--model", str(model_dir), "--seed", "1"])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_golden_continue_then_add_track_keep_every_original_event(model_dir, src, tmp_path,
                                                                    caplog):  # fmt: skip
    """A real 4/4 + 3/4 song continued, then given a bass: all original events unchanged."""
    cont = tmp_path / "cont.mid"
    with caplog.at_level(logging.INFO):
        assert gen(model_dir, src, "-o", cont, "--continue", 2) == 0
    said = [r.getMessage() for r in caplog.records if "prompt =" in r.getMessage()]
    assert len(said) == 1 and "bars 1-8 of song.mid" in said[0]
    assert "left alone: bars 9-16" in said[0] and "from bar 17" in said[0]
    assert_originals_kept(src, cont)
    new = [n for t in range(1, 5) for n in notes(cont, t) if n[0] >= END]
    assert new and all(END <= t < END + 2 * 4 * TPQ for t, _, _ in new)
    assert not [n for t in range(1, 5) for n in notes(cont, t) if END_44 <= n[0] < END
                and n not in notes(src, t)], "nothing new in the 3/4 bars"  # fmt: skip
    vels = {v for _, _, v in new}
    assert vels != {80} and all(40 <= v <= 120 for v in vels)
    # A bass over every 4/4 bar of the continued file: bars 1-8 and the two new ones.
    both = tmp_path / "both.mid"
    assert gen(model_dir, cont, "-o", both, "--add-track", "bass") == 0
    assert_originals_kept(src, both)
    assert_originals_kept(cont, both)
    bass = notes(both, len(mido.MidiFile(both).tracks) - 1)
    assert bass and not [n for n in bass if END_44 <= n[0] < END], "3/4 bars left alone"
    assert any(n[0] >= END for n in bass) and any(n[0] < END_44 for n in bass)
    assert len({v for *_, v in bass}) > 1, "velocities follow the piece's dynamics"


def test_output_equal_to_the_input_is_refused(model_dir, src, tmp_path, capsys):
    before = src.read_bytes()
    link = tmp_path / "hard.mid"
    os.link(src, link)
    sym = tmp_path / "sym.mid"
    sym.symlink_to(src)
    for out in (src, tmp_path / "." / "song.mid", link, sym):
        assert gen(model_dir, src, "-o", out, "--continue", 1) == 2
        assert "is the input file" in one_line_error(capsys)
    assert src.read_bytes() == before
    out = tmp_path / "out.mid"  # an existing other output is replaced: run it twice
    assert gen(model_dir, src, "-o", out, "--continue", 1) == 0
    assert gen(model_dir, src, "-o", out, "--continue", 1) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_location_is_checked_before_any_work(model_dir, src, tmp_path, capsys,
                                                    monkeypatch):  # fmt: skip
    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(ModelSession, "load", no_load)
    cases = [(tmp_path / "missing" / "o.mid", "does not exist"), (tmp_path, "is a folder")]
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        cases.append((ro / "o.mid", "cannot write in"))
    for out, words in cases:
        assert gen(model_dir, src, "-o", out, "--continue", 1) == 2
        assert words in one_line_error(capsys)
    assert gen(model_dir, tmp_path / "nope.mid", "-o", tmp_path / "o.mid", "--continue", 1) == 2
    assert "cannot read" in one_line_error(capsys)


def test_a_failed_write_leaves_no_half_file(model_dir, src, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.mid"
    out.write_bytes(b"the previous take")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    assert gen(model_dir, src, "-o", out, "--continue", 1) == 2
    assert "No space left" in one_line_error(capsys)
    assert out.read_bytes() == b"the previous take"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mid", "song.mid"]


def test_labels_the_model_never_trained_on(model_dir, src, tmp_path, capsys):
    out = tmp_path / "o.mid"
    assert gen(model_dir, src, "-o", out, "--add-track", "drums") == 2
    line = one_line_error(capsys)
    assert "never trained on DRUMS" in line and "SOPRANO, ALTO, TENOR, BASS" in line
    assert "--force" in line and not out.exists()
    assert gen(model_dir, src, "-o", out, "--add-track", "drums", "--force") == 0
    # A drums-only file is not "continued" with pitched notes.
    drums = tmp_path / "drums.mid"
    mid = mido.MidiFile(ticks_per_beat=96)
    mid.tracks.append(mido.MidiTrack(
        [m for b in range(8) for m in (mido.Message("note_on", channel=9, note=36, velocity=90),
                                       mido.Message("note_off", channel=9, note=36, time=96))]
    ))  # fmt: skip
    mid.save(drums)
    assert gen(model_dir, drums, "-o", out, "--continue", 1) == 2
    assert "never trained on DRUMS" in one_line_error(capsys)


def test_prompt_instruments_the_model_has_not_seen_are_reported(model_dir, src, tmp_path,
                                                                 caplog):  # fmt: skip
    mid = mido.MidiFile(src)
    extra = mido.MidiTrack([mido.MetaMessage("track_name", name="Kit")] + [
        m for b in range(8) for m in (mido.Message("note_on", channel=9, note=38, velocity=70),
                                      mido.Message("note_off", channel=9, note=38, time=TPQ))
    ])  # fmt: skip
    mid.tracks.append(extra)
    five = tmp_path / "five.mid"
    mid.save(five)
    with caplog.at_level(logging.INFO):
        assert gen(model_dir, five, "-o", tmp_path / "o.mid", "--continue", 1) == 0
    text = caplog.text
    assert "never trained on: Kit (DRUMS)" in text
    assert "not continued" in text


def test_tracks_by_name_or_index_and_meter(model_dir, src, tmp_path, capsys):
    out = tmp_path / "o.mid"
    assert gen(model_dir, src, "-o", out, "--continue", 1, "--tracks", "soprano,3") == 0
    got = {t for t in range(1, 5) if [n for n in notes(out, t) if n[0] >= END]}
    assert got <= {1, 4}
    assert gen(model_dir, src, "-o", out, "--continue", 1, "--tracks", "tuba") == 2
    assert "0 Soprano (SOPRANO)" in one_line_error(capsys)
    waltz = tmp_path / "waltz.mid"
    m = mido.MidiFile(src)
    m.tracks[0] = mido.MidiTrack(
        [mido.MetaMessage("time_signature", numerator=3, denominator=4)]
    )  # fmt: skip
    m.save(waltz)
    assert gen(model_dir, waltz, "-o", out, "--continue", 1) == 2
    assert "--meter assume-4/4" in one_line_error(capsys)
    assert gen(model_dir, waltz, "-o", out, "--continue", 1, "--meter", "assume-4/4") == 0


def test_infill_and_density_are_refused_before_loading(model_dir, src, tmp_path, capsys,
                                                       monkeypatch):  # fmt: skip
    monkeypatch.setattr(ModelSession, "load", lambda *a, **k: pytest.fail("loaded"))
    assert gen(model_dir, src, "-o", tmp_path / "o.mid", "--infill", "0:1") == 2
    assert "without fills" in one_line_error(capsys)


def test_infill_on_a_model_with_fills_adds_the_bars_as_a_new_track(model_dir, src, tmp_path):
    import json
    import shutil

    fills = tmp_path / "fills"
    shutil.copytree(model_dir, fills)
    meta = json.loads((fills / "bandmate.json").read_text())
    (fills / "bandmate.json").write_text(json.dumps({**meta, "fills": True}))
    out = tmp_path / "o.mid"
    assert gen(fills, src, "-o", out, "--infill", "soprano:1") == 0
    assert_originals_kept(src, out)
    m = mido.MidiFile(out)
    assert len(m.tracks) == 6 and m.tracks[5].name == "Soprano (infill)"
    assert all(4 * TPQ <= t < 8 * TPQ for t, _, _ in notes(out, 5))


def test_continue_has_a_documented_bound(model_dir, src, tmp_path, capsys):
    assert gen(model_dir, src, "-o", tmp_path / "o.mid", "--continue", 10000) == 2
    assert "1 to 256 bars" in one_line_error(capsys)


def test_ctrl_c_writes_the_finished_bars_and_exits_130(model_dir, src, tmp_path, capsys,
                                                       monkeypatch):  # fmt: skip
    real = G.stream_continue

    def interrupted(*a, **k):
        for ev in real(*a, **k):
            yield ev
            if isinstance(ev, G.BarDone) and ev.bar >= 9:  # two bars of 4 finished
                raise KeyboardInterrupt

    monkeypatch.setattr(G, "stream_continue", interrupted)
    out = tmp_path / "o.mid"
    assert gen(model_dir, src, "-o", out, "--continue", 4) == 130
    err = capsys.readouterr().err
    assert "interrupted: writing the 2 finished bar(s)" in err and "Traceback" not in err
    assert_originals_kept(src, out)
    new = [n for t in range(1, 5) for n in notes(out, t) if n[0] >= END]
    assert new and max(t for t, _, _ in new) < END + 2 * 4 * TPQ


def test_progress_bar_on_a_terminal_only(model_dir, src, tmp_path, capsys, monkeypatch):
    assert gen(model_dir, src, "-o", tmp_path / "a.mid", "--continue", 2) == 0
    assert "tokens/s" not in capsys.readouterr().err  # not a TTY: quiet

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert gen(model_dir, src, "-o", tmp_path / "b.mid", "--continue", 2) == 0
    shown = tty.getvalue()
    assert "2/2" in shown and "notes" in shown and "tokens/s" in shown


def test_a_200_track_prompt_prints_short_lines_once(tmp_path, capsys, caplog):
    from support.models import export_random

    small = export_random(tmp_path / "m", n_positions=160, seed=1)
    mid = mido.MidiFile(ticks_per_beat=96)
    for i in range(200):
        ch = i % 9
        mid.tracks.append(mido.MidiTrack(
            [mido.MetaMessage("track_name", name=f"part {i}")]
            + [m for b in range(4) for m in (
                mido.Message("note_on", channel=ch, note=50 + i % 30, velocity=60, time=0),
                mido.Message("note_off", channel=ch, note=50 + i % 30, time=4 * 96))]
        ))  # fmt: skip
    wide = tmp_path / "wide.mid"
    mid.save(wide)
    with caplog.at_level(logging.INFO):
        rc = main(["generate", str(wide), "-o", str(tmp_path / "o.mid"), "--continue", "1",
                   "--tracks", "0", "--model", str(small), "--seed", "1"])  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    for rec in caplog.records:
        assert len(rec.getMessage()) < 1000, rec.getMessage()[:200]
    assert sum("prompt cut" in r.getMessage() for r in caplog.records) == 1
    assert "prompt cut" not in err.replace(caplog.text, "")


def test_train_without_the_training_extra_says_how_to_get_it(monkeypatch, capsys):
    for name in list(sys.modules):
        if name.startswith("bandmate.training"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)
    for cmd in ("train", "export"):
        assert main([cmd, "--help"]) == 2
        err = capsys.readouterr().err
        assert 'pip install "bandmate[train]"' in err and "Traceback" not in err
