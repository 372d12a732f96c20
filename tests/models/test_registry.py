"""Shipped models by name (--model band / default, `bandmate models`) and GM instruments."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bandmate.models import generate as G
from bandmate.models import registry
from bandmate.models.instruments import GM_FAMILIES, GM_PROGRAMS, label_name, parse_instrument
from bandmate.models.midi_io import read_midi, write_midi
from bandmate.models.session import ModelError, ModelSession
from bandmate.models.types import DRUM_CHANNEL, Note, Piece, Track

from bandmate.cli import main


@pytest.fixture
def shipped(tmp_path, monkeypatch, band_model_dir):
    """A models/ root holding the real default model and the random band model."""
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(registry.shipped_dir("default"), root / "default")
    monkeypatch.setattr(registry, "models_root", lambda: root)
    monkeypatch.setattr("bandmate.models.session.default_model_dir", lambda: root / "default")
    return root


def _band_song(path: Path) -> Path:
    drums = Track("DRUMS", tuple(Note(s, 36, s + 1) for s in range(0, 64, 4)), 0, DRUM_CHANNEL)
    gtr = Track("29", tuple(Note(s, 64, s + 4) for s in range(0, 64, 4)), 29, 0, "Guitar")
    write_midi(Piece((drums, gtr), 4, 120.0), path)
    return path


def test_names_resolve_and_list(shipped, band_model_dir, capsys):
    assert registry.installed() == ["default"]
    with pytest.raises(registry.UnknownModel, match="not in this installation"):
        registry.resolve_model("band")
    with pytest.raises(ModelError, match="installed: default"):
        ModelSession.load("band")
    with pytest.raises(ModelError, match="no model 'bnad'"):
        ModelSession.load("bnad")
    shutil.copytree(band_model_dir, shipped / "band")
    assert registry.installed() == ["default", "band"]
    assert ModelSession.load("band").config.label_scheme == "gm-family"
    assert ModelSession.load("default").config.voices == ("SOPRANO", "ALTO", "TENOR", "BASS")
    assert registry.resolve_model(None) is None
    assert registry.resolve_model(str(band_model_dir)) == band_model_dir
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "band" in out and "gm-family" in out and "Drums" in out and "MB" in out
    assert "jsf-chorales-6x256" in out  # the default model card's title
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "band     General MIDI" in capsys.readouterr().out


def test_gm_names_and_families():
    assert len(GM_PROGRAMS) == 128 and len(GM_FAMILIES) == 16
    assert parse_instrument("Electric Bass (finger)") == 33
    assert parse_instrument("electric bass finger") == 33
    assert parse_instrument("GUITAR") == 24 and parse_instrument("strings") == 40
    assert parse_instrument("piano") == 0 and parse_instrument("Synth Lead") == 80
    assert parse_instrument("drums") == "DRUMS" and parse_instrument("35") == 35
    assert parse_instrument("128") is None and parse_instrument("kazoo") is None
    assert label_name("32", "gm-family") == "Bass" and label_name("33") == GM_PROGRAMS[33]


def test_add_track_by_instrument_name(shipped, band_model_dir, sess, tmp_path):
    shutil.copytree(band_model_dir, shipped / "band")
    band = ModelSession.load("band")
    assert G.resolve_instrument(band, "Electric Bass (finger)") == ("32", 33)
    assert G.resolve_instrument(band, "bass") == ("32", 32)
    assert G.resolve_instrument(band, "drums") == ("DRUMS", 0)
    assert G.resolve_instrument(band, "guitar") == ("24", 24)
    assert G.resolve_instrument(band, "29") == ("24", 29)
    with pytest.raises(G.GenerationError, match="General MIDI name"):
        G.resolve_instrument(band, "kazoo")
    # The chorale model is unchanged: bass is its voice BASS, numbers stay numbers.
    assert G.resolve_label(sess, "bass") == "BASS" and G.resolve_label(sess, "Tenor") == "TENOR"
    assert G.resolve_label(sess, "Electric Bass (finger)") == "33"
    song = _band_song(tmp_path / "song.mid")
    out = tmp_path / "out.mid"
    argv = ["generate", str(song), "-o", str(out), "--model", "band", "--seed", "3"]
    assert main([*argv, "--add-track", "Electric Bass (finger)"]) == 0
    got = read_midi(out)
    assert got.tracks[-1].program == 33 and len(got.tracks) == 3
    assert main([*argv, "--add-track", "drums"]) == 0


def test_the_shipped_band_model_plays_bass_and_drums():
    """The real models/band (no fixture): installed by name, held-out pieces verified left out
    of its data, its card crediting the data, and it adds an audible bass and drums."""
    assert "band" in registry.installed()
    folder = registry.shipped_dir("band")
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Contributors to the Freedoom project" in card and "CC BY 4.0" in card
    band = ModelSession.load("band")
    assert band.config.label_scheme == "gm-family"
    holdout = Path(__file__).resolve().parents[2] / "bench/holdout/band.txt"
    held = {ln.split()[0] for ln in holdout.read_text().splitlines() if ln and ln[0] != "#"}
    assert len(held) == 47
    assert held <= set(band.meta["training"]["manifest"]["config"]["exclude"])
    drums = Track("DRUMS", tuple(Note(s, 36 if s % 8 == 0 else 38, s + 1)
                                 for s in range(0, 64, 4)), 0, DRUM_CHANNEL)  # fmt: skip
    chords = [(48, 52, 55), (45, 48, 52), (41, 45, 48), (43, 47, 50)]  # C Am F G, a bar each
    gtr = Track("24", tuple(Note(b * 16 + k, p, b * 16 + k + 4)
                            for b, ch in enumerate(chords) for k in (0, 4, 8, 12) for p in ch),
                29, 0, "Guitar")  # fmt: skip
    piece = Piece((drums, gtr), 4, 120.0)
    sampling = G.SamplingConfig(seed=0)
    bass = G.add_track(band, piece, "bass", sampling=sampling).tracks[-1]
    assert bass.notes and all(24 <= n.pitch <= 64 for n in bass.notes)
    kit = G.add_track(band, Piece((gtr,), 4, 120.0), "drums", sampling=sampling).tracks[-1]
    assert kit.channel == DRUM_CHANNEL and kit.notes
