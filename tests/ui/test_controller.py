"""The window's Qt-free controller (bandmate.ui.controller): model, prompt, takes, save, clip
and preview plan, driven without Qt (a job's takes come from ui.jobs.run_job directly)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from bandmate.models.midi_io import read_midi
from bandmate.models.session import ModelSession
from bandmate.ui.controller import AppController, Refusal, clip_of
from bandmate.ui.jobs import run_job
from bandmate.ui.settings import AppSettings

CHORALE = Path(__file__).parents[1] / "data" / "jsfakes-0.mid"


def test_controller_and_connection_do_not_import_qt():
    code = ("import sys, bandmate.ui.controller, bandmate.ui.connection; "
            "print('PyQt6' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_prompt_takes_save_clip_and_preview(model_dir, tmp_path):
    ctl = AppController(seed=1)
    with pytest.raises(Refusal, match="No model"):
        ctl.check_ready()
    assert ctl.status_tail() == ["loading model…"]
    refusal = ctl.model_failed("broken", "")
    assert refusal.title == "No model" and "Ctrl+M" in refusal.text and ctl.model_error
    assert ctl.status_tail() == ["no model"]
    assert ctl.model_loaded(ModelSession.load(model_dir)) is False  # no prompt to re-read
    assert ctl.model_error == "" and ctl.status_tail()[0].startswith("model ")
    groups, selected = ctl.instruments("KAZOO")
    assert groups == [("Voices", [("SOPRANO", "Soprano"), ("ALTO", "Alto"),
                                  ("TENOR", "Tenor"), ("BASS", "Bass")])]
    assert selected == "BASS" and ctl.density_bins == 4

    with pytest.raises(Refusal) as r:
        ctl.start_job(ctl.job_spec("continue", AppSettings()))
    assert (r.value.title, r.value.level) == ("Nothing to continue", "info")
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd not a file")
    with pytest.raises(Refusal, match="Not a usable MIDI file"):
        ctl.open_file(bad)
    with pytest.raises(Refusal, match="Pick another file"):
        ctl.open_file(tmp_path / "missing.mid")
    assert ctl.prompt is None and ctl.source is None

    piece = ctl.open_file(CHORALE)
    assert ctl.prompt is piece and ctl.prompt_name == CHORALE.name
    assert ctl.source_path == CHORALE and ctl.source is not None
    assert ctl.idle_status(100.0)[0] == f"{piece.tempo:.1f} BPM"
    alone = tmp_path / "alone.mid"
    assert ctl.save(alone, 0) is piece and alone.read_bytes() == CHORALE.read_bytes()
    with pytest.raises(Refusal, match="is the input file"):
        ctl.save(CHORALE, 0)
    with pytest.raises(Refusal) as r:
        ctl.write_clip(0)
    assert (r.value.title, r.value.level) == ("No clip yet", "info")
    with pytest.raises(Refusal, match="Generate a take first"):
        ctl.preview_clip(0)

    spec = ctl.job_spec("continue", AppSettings(bars=4, variations=2))
    assert (spec.kind, spec.bars, spec.variations, spec.seed, spec.density) == (
        "continue", 4, 2, 1, None)
    prompt = ctl.start_job(spec)
    assert prompt is piece and ctl.job_prompt is piece and ctl.last_spec is spec
    assert ctl.job_source is ctl.source and ctl.takes == []
    assert ctl.session is not None
    result = run_job(ctl.session, prompt, spec, lambda ev: None, threading.Event())
    ctl.takes.extend(result.takes)
    assert len(ctl.takes) == 2
    assert ctl.current_piece(1) is result.takes[1] and ctl.current_piece(7) is piece
    clip, first = ctl.preview_clip(1)
    assert first == prompt.steps and clip == clip_of(prompt, result.takes[1], "continue")
    shown = ctl.take_names(0)
    assert shown is not None and shown[0] is prompt and shown[1] is result.takes[0]
    assert shown[2][:4] == ["Soprano", "Alto", "Tenor", "Bass"]
    out = tmp_path / "out.mid"
    ctl.save(out, 0)
    back = read_midi(out, ctl.session.config)
    assert back.bars >= piece.bars + 1  # the file plus the new bars
    path = ctl.write_clip(0)
    assert path.name == f"{CHORALE.stem}-continue-take1.mid" and path.stat().st_size > 0

    # A live capture replaces the file as the prompt: no source, nothing of the file saved.
    live = piece.slice_bars(0, 2)
    assert ctl.start_job(spec, live) is live
    assert (ctl.prompt, ctl.prompt_name, ctl.source, ctl.source_path) == (live, "live", None,
                                                                           None)
    assert ctl.job_source is None and ctl.take_parts(0) is None
