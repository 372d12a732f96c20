"""The merge keeps the user's file: unit tests of `bandmate.models.midi_merge` on real files."""

from __future__ import annotations

import sys
from pathlib import Path

import mido
import pytest
from bandmate.models.config import CodecConfig
from bandmate.models.midi_io import MidiError
from bandmate.models.midi_merge import (
    NewPart,
    added_track,
    bar_ranges,
    clip,
    continuation,
    merge,
    open_source,
    summarise,
)
from bandmate.models.types import Note

sys.path.insert(0, str(Path(__file__).parent))
from midi_song import END, TPQ, assert_originals_kept, events, notes, song

CHORALE = CodecConfig(voices=("SOPRANO", "ALTO", "TENOR", "BASS"))


@pytest.fixture
def src_path(tmp_path) -> Path:
    return song(tmp_path / "song.mid")


def test_source_maps_sections_parts_and_bars(src_path):
    src = open_source(src_path.read_bytes(), CHORALE, "song.mid")
    assert src.tpq == TPQ
    assert [(s.start_step, s.bars) for s in src.sections] == [(0, 8)]
    assert [(p.track, p.channel, p.name) for p in src.parts] == [
        (1, 0, "Soprano"), (2, 1, "Alto"), (3, 2, "Tenor"), (4, 3, "Bass")
    ]  # fmt: skip
    assert src.end_tick == END and src.total_bars == 16
    assert src.section_bars(0) == (1, 8) and src.outside([0]) == [(9, 16)]
    assume = open_source(src_path.read_bytes(), CodecConfig(meter="assume-4/4"))
    assert assume.sections[0].bars == -(-END // (4 * TPQ))


def test_merge_with_nothing_new_keeps_every_event(src_path, tmp_path):
    src = open_source(src_path.read_bytes(), CHORALE)
    out = tmp_path / "same.mid"
    out.write_bytes(merge(src, []))
    assert events(out) == events(src_path)


def test_continuation_goes_after_the_end_in_4_4_with_recent_velocities(src_path, tmp_path):
    src = open_source(src_path.read_bytes(), CHORALE)
    piece, _ = src.section_piece(0)
    s = piece.steps
    new = {0: [Note(s, 70, s + 4), Note(s + 16, 72, s + 20)], 3: [Note(s, 43, s + 8)]}
    parts, at = continuation(src, 0, new, piece.steps)
    assert at == END
    out = tmp_path / "cont.mid"
    out.write_bytes(merge(src, parts, at))
    assert_originals_kept(src_path, out)
    sop = [n for n in notes(out, 1) if n[0] >= END]
    assert sop == [(END, 70, sop[0][2]), (END + 4 * TPQ, 72, sop[0][2])]
    recent = [v for t, _, v in notes(src_path, 1)][-8:]
    assert min(recent) <= sop[0][2] <= max(recent) and sop[0][2] != 80
    meta = [m for m in events(out)[0] if m[0] == END]
    assert any("numerator=4" in m[1] for m in meta), "4/4 announced where the new bars start"


def test_added_track_follows_the_dynamics_and_type_0_becomes_type_1(src_path, tmp_path):
    mid = mido.MidiFile(src_path)
    zero = tmp_path / "zero.mid"
    mido.MidiFile(type=0, ticks_per_beat=TPQ, tracks=[mido.merge_tracks(mid.tracks)]).save(zero)
    src = open_source(zero.read_bytes(), CHORALE)
    assert {p.track for p in src.parts} == {0}
    part = added_track(src, {0: [Note(0, 40, 4), Note(16 * 7, 41, 16 * 7 + 4)]}, "Bass 2", 33,
                       False)  # fmt: skip
    out = tmp_path / "added.mid"
    out.write_bytes(merge(src, [part]))
    m = mido.MidiFile(out)
    assert m.type == 1 and len(m.tracks) == 2
    assert_originals_kept(zero, out)
    new = notes(out, 1)
    assert [n[:2] for n in new] == [(0, 40), (7 * 4 * TPQ, 41)]
    assert all(40 <= v <= 120 for _, _, v in new) and len({v for *_, v in new}) == 2
    chans = {x.channel for x in m.tracks[1] if hasattr(x, "channel")}
    assert chans == {4}, "a channel the file does not use"


def test_clip_is_just_the_new_part_at_the_files_resolution(src_path, tmp_path):
    src = open_source(src_path.read_bytes(), CHORALE)
    part = NewPart(((END, END + TPQ, 60, 70),), part=0, name="Soprano", program=52)
    out = tmp_path / "clip.mid"
    out.write_bytes(clip(src, [part], END))
    m = mido.MidiFile(out)
    assert m.ticks_per_beat == TPQ
    assert notes(out, 1) == [(0, 60, 70)]
    meta = {str(x.copy(time=0)) for x in m.tracks[0]}
    assert any("tempo=600000" in x for x in meta), "the tempo in force at the clip's start"
    assert any("numerator=4" in x for x in meta)


def test_bad_files_are_midi_errors(tmp_path):
    with pytest.raises(MidiError, match="MThd"):
        open_source(b"not a midi file at all")
    waltz = tmp_path / "waltz.mid"
    mid = mido.MidiFile(ticks_per_beat=96)
    tr = mido.MidiTrack([mido.MetaMessage("time_signature", numerator=3, denominator=4),
                         mido.Message("note_on", note=60, velocity=64),
                         mido.Message("note_off", note=60, time=96)])  # fmt: skip
    mid.tracks.append(tr)
    mid.save(waltz)
    with pytest.raises(MidiError, match="--meter assume-4/4"):
        open_source(waltz.read_bytes(), CHORALE)
    assert open_source(waltz.read_bytes(), CodecConfig(meter="assume-4/4")).sections


def test_long_lists_are_summarised():
    words = [f"track {i}" for i in range(200)]
    text = summarise(words)
    assert len(text) < 120 and text.endswith("... and 194 more")
    assert bar_ranges([(1, 8), (17, 17)]) == "1-8, 17"


def test_unseen_label_names_a_shipped_model_that_has_it(tmp_path, monkeypatch):
    import json

    from bandmate.models import model_checks, session

    for name, labels in (("default", ["SOPRANO", "BASS"]), ("band", ["33", "DRUMS"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "bandmate.json").write_text(
            json.dumps({"name": f"m-{name}", "labels_seen": labels, "fills": False})
        )
    monkeypatch.setattr(session, "default_model_dir", lambda: tmp_path / "default")
    text = model_checks.unseen_label_message("m-default", "DRUMS", ["SOPRANO", "BASS"])
    assert "never trained on DRUMS" in text and "SOPRANO, BASS" in text and "m-band" in text
    assert model_checks.read_model_meta(None)["name"] == "m-default"
    with pytest.raises(ValueError, match="without fills"):
        model_checks.check_can_infill(model_checks.read_model_meta(None), "m-default")
