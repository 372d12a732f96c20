"""INST label schemes: "program" (the chorale models, unchanged) and "gm-family" (band)."""

from __future__ import annotations

import json
from pathlib import Path

import mido
import pytest
import symusic
from bandmate.models.config import CodecConfig, gm_family_label
from bandmate.models.midi_io import MidiError, clip_data_bytes, read_midi

GM = CodecConfig(label_scheme="gm-family")


def _band(path: Path, bass_name: str = "Bass", program_byte: int | None = None) -> Path:
    """Drums (channel 10), a track named ``bass_name`` playing program 0 (piano!), and a
    fingered bass (program 33)."""
    mid = mido.MidiFile(type=1, ticks_per_beat=96)
    drums, named, bass = mido.MidiTrack(), mido.MidiTrack(), mido.MidiTrack()
    named.append(mido.MetaMessage("track_name", name=bass_name))
    named.append(mido.Message("program_change", program=0, channel=0))
    bass.append(mido.Message("program_change", program=33, channel=1))
    for i in range(4):
        drums += [mido.Message("note_on", channel=9, note=36, velocity=90),
                  mido.Message("note_off", channel=9, note=36, time=96)]  # fmt: skip
        named += [mido.Message("note_on", channel=0, note=60, velocity=70),
                  mido.Message("note_off", channel=0, note=60, time=96)]  # fmt: skip
        bass += [mido.Message("note_on", channel=1, note=36 + i, velocity=80),
                 mido.Message("note_off", channel=1, note=36 + i, time=96)]  # fmt: skip
    mid.tracks += [drums, named, bass]
    mid.save(path)
    if program_byte is not None:  # rewrite the bass's program byte 33 as an illegal value
        data = bytearray(path.read_bytes())
        i = data.index(bytes([0xC1, 33]))
        data[i + 1] = program_byte
        path.write_bytes(bytes(data))
    return path


def test_gm_family_labels(tmp_path):
    path = _band(tmp_path / "band.mid")
    assert [t.inst for t in read_midi(path, GM).tracks] == ["DRUMS", "0", "32"]
    # The default scheme is unchanged: a track named Bass is the chorale voice BASS.
    assert [t.inst for t in read_midi(path).tracks] == ["DRUMS", "BASS", "33"]
    assert [gm_family_label(p) for p in (0, 7, 8, 33, 39, 40, 127)] == [
        "0", "0", "8", "32", "32", "40", "120",
    ]  # fmt: skip


def test_config_round_trip_and_old_files():
    old = json.loads(CodecConfig(voices=("SOPRANO", "ALTO", "TENOR", "BASS")).dumps())
    del old["label_scheme"]  # a bandmate.json written before the field existed
    cfg = CodecConfig.from_json(old)
    assert cfg.label_scheme == "program" and "BASS" in cfg.labels
    assert CodecConfig.from_json(json.loads(GM.dumps())) == GM
    assert "BASS" not in GM.labels and {"DRUMS", "0", "32", "127"} <= set(GM.labels)
    with pytest.raises(ValueError, match="label_scheme"):
        CodecConfig(label_scheme="families")
    with pytest.raises(ValueError, match="voices"):
        CodecConfig(label_scheme="gm-family", voices=("SOPRANO",))


def test_model_label_maps_foreign_labels():
    assert [GM.model_label(x) for x in ("33", "DRUMS", "BASS", "SOPRANO", "32")] == [
        "32", "DRUMS", "32", "0", "32",
    ]  # fmt: skip
    assert CodecConfig().model_label("33") == "33"  # identity for the chorale scheme


def test_program_byte_over_127_is_clamped(tmp_path):
    path = _band(tmp_path / "bad.mid", program_byte=230)
    data = path.read_bytes()
    fixed = clip_data_bytes(data)
    assert fixed is not None and fixed.count(bytes([0xC1, 0x7F])) == 1
    assert clip_data_bytes(fixed) is None  # nothing left to clamp
    # symusic refuses the raw bytes; the reader clamps and reads the file.
    with pytest.raises(RuntimeError, match="program=230"):
        symusic.Score.from_midi(data)
    assert [t.inst for t in read_midi(path, GM).tracks] == ["DRUMS", "0", "120"]
    assert clip_data_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x00\x60MTrk\x00\x00\x00\x09"
                           b"\x00\x90\x3c") is None  # fmt: skip
    with pytest.raises(MidiError):
        read_midi(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x00\x60MTrk\x00\x00\x00\x04\x00\xc1")
