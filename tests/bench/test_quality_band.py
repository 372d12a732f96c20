"""bench/quality_band.py on a random-weight gm-family model and a synthetic band file."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from bandmate.models.midi_io import write_midi
from bandmate.models.types import DRUM_CHANNEL, Note, Piece, Track

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("quality_band", ROOT / "bench/quality_band.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _band(bars: int = 12) -> Piece:
    """Drums (kick on 1 and 3, snare on 2 and 4), a C-major guitar riff, a bass on roots."""
    drums, gtr, bass = [], [], []
    for b in range(bars):
        o = 16 * b
        drums += [Note(o, 36, o + 1), Note(o + 8, 36, o + 9), Note(o + 4, 38, o + 5),
                  Note(o + 12, 38, o + 13)]  # fmt: skip
        root = (48, 53, 55, 48)[b % 4]
        gtr += [Note(o, root + 12, o + 8), Note(o, root + 16, o + 8),
                Note(o + 8, root + 19, o + 16)]  # fmt: skip
        bass += [Note(o, root - 12, o + 8), Note(o + 8, root - 5, o + 16)]
    return Piece(
        (
            Track("DRUMS", tuple(drums), 0, DRUM_CHANNEL, "Drums"),
            Track("29", tuple(sorted(gtr)), 29, 0, "Guitar"),
            Track("33", tuple(bass), 33, 1, "Bass"),
        ),
        bars,
        120.0,
    )


def test_band_quality_runs_on_any_model(band_model_dir, tmp_path):
    qb = _bench()
    data = tmp_path / "freedoom"
    (data / "current").mkdir(parents=True)
    path = data / "current/d_song.mid"
    write_midi(_band(), path)
    digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    holdout = tmp_path / "band.txt"
    holdout.write_text(f"# test\n# piece song\n{digest}  current/d_song.mid\n")
    assert qb.holdout_files(holdout, data) == [path]
    res = qb.band_quality(band_model_dir, n=2, seed=1, holdout=holdout, data=data)
    assert res["windows"] == 2 and res["label_scheme"] == "gm-family"
    # The real parts score as written: bass on chord tones, kick on 1, snare on 2 and 4.
    assert res["bass"]["own"]["chord_tones"] == 1.0
    assert res["drums"]["own"]["kick_on_1"] == 1.0 and res["drums"]["own"]["backbeat"] == 1.0
    assert res["continue"]["own"]["in_key"] == 1.0 and res["continue"]["own"]["copying"] == 1.0
    for task in ("bass", "drums", "continue"):
        m = res[task]["model"]
        assert m["repairs"] == 0 and 0.0 <= (m["success"] or 0.0) <= 1.0
    out = tmp_path / "q.json"
    argv = ["--model", str(band_model_dir), "--n", "1", "--holdout", str(holdout),
            "--data", str(data), "--out", str(out)]  # fmt: skip
    assert qb.main(argv) == 0
    got = json.loads(out.read_text())
    assert got["windows"] == 1 and got["holdout_verified"] is False  # a random model
    assert set(got["goals"]) == {"bass_chord_tones", "drums_kick_on_1", "drums_backbeat",
                                 "success", "repairs"}
    assert got["settings"]["temperature"] == 0.6  # the CLI's default sampling


def test_quality_py_hands_a_band_model_to_the_band_benchmark(band_model_dir):
    """bench/quality.py picks the band tasks by the model's labels, and refuses a model not
    recorded as trained without the held-out pieces (this random one)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "bench/quality.py"), "--model",
                        str(band_model_dir), "--n", "1"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2 and "bench/holdout/band.txt" in r.stderr, r.stderr[-2000:]


def test_metrics_by_hand():
    qb = _bench()
    others = [Track("0", (Note(0, 60, 16), Note(0, 64, 16)), 0, 0)]
    assert qb.chord_tone_rate([Note(0, 36, 4), Note(4, 38, 8), Note(16, 40, 20)], others) == (1, 2)
    figs = qb.drum_figures([Note(0, 36, 1), Note(4, 38, 5), Note(13, 42, 14)], 1)
    assert (figs["kick_on_1"], figs["backbeats"], figs["on_8th"], figs["hits"]) == (1, 1, 2, 3)
    cmaj = [Track("0", tuple(Note(i * 2, p, i * 2 + 2) for i, p in enumerate(
        [60, 62, 64, 65, 67, 69, 71, 72, 60, 64, 67])), 0, 0)]  # fmt: skip
    assert qb.estimate_key(cmaj) == (0, "major")


def test_tuning_pieces_are_the_validation_split_and_never_held_out(band_model_dir, tmp_path):
    """--files tune: pieces prepare's --split-by piece sends to validation (by the piece key's
    hash), one file each, never a held-out one; --sweep scores the grid there."""
    from bandmate.training.prepare import content_split, piece_key

    qb = _bench()
    data = tmp_path / "freedoom"
    (data / "current").mkdir(parents=True)
    (data / "history").mkdir()
    names = [f"d_map{i:02d}" for i in range(60)]
    val = [n for n in names if content_split(
        hashlib.blake2b(piece_key(n + ".mid").encode(), digest_size=16).digest(), 0.05) == "val"]
    assert len(val) >= 2
    for i, n in enumerate(names):
        write_midi(_band(8 + i), data / "current" / f"{n}.mid")  # each file its own content
    write_midi(_band(7), data / "history" / f"0123456789_{val[0]}.mid")  # a revision
    held = data / "current" / f"{val[1]}.mid"
    digest = hashlib.blake2b(held.read_bytes(), digest_size=16).hexdigest()
    holdout = tmp_path / "band.txt"
    holdout.write_text(f"# piece x\n{digest}  current/{held.name}\n")
    got = qb.tune_files(data, holdout)
    # one file per validation piece (the current/ one before its revision), the held-out
    # piece left out.
    assert got == [data / "current" / f"{n}.mid" for n in val if n != val[1]]
    import shutil

    from bandmate.models.session import ModelSession

    model = shutil.copytree(band_model_dir, tmp_path / "model")
    assert ModelSession.load(model).default_sampling().temperature == 0.6  # project default
    res = qb.run_cli(model, 1, 0, "tune", True, holdout=holdout, data=data, write=True)
    assert res["files"] == "tune" and len(res["sweep"]) == len(qb.SWEEP)
    assert res["best"] in res["sweep"]
    assert all(isinstance(r["score"], float) for r in res["sweep"])
    # --write-default: the best setting becomes the model's own default, with its provenance.
    session = ModelSession.load(model)
    got = session.default_sampling(seed=4)
    assert (got.temperature, got.top_p, got.seed) == (res["best"]["temperature"],
                                                      res["best"]["top_p"], 4)
    assert "tuning pieces" in session.description.sampling["picked_by"]
    assert session.default_sampling(temperature=1.0).temperature == 1.0  # the user's wins


def test_intervals_resample_whole_pieces():
    """ci95: a figure every piece agrees on has a point interval; pieces that disagree (one
    plays a backbeat, one half time) give a wide one around the pooled figure, and model/own
    is bootstrapped in pairs (the same pieces for both)."""
    qb = _bench()
    t = qb._Tally()
    for piece, model_back in (("a", 8), ("b", 0), ("c", 8), ("d", 0)):
        t.at(piece)
        t.add("drums", "model", bars=4, kick_on_1=4, backbeats=model_back)
        t.add("drums", "own", bars=4, kick_on_1=4, backbeats=8)
        t.add("bass", "model", hit=3, counted=4)
        t.add("bass", "own", hit=3, counted=4)
    ci = qb.intervals(t, resamples=500, seed=1)
    assert ci["drums_kick_on_1"] == {"model": [1.0, 1.0], "model_over_own": [1.0, 1.0]}
    assert ci["bass_chord_tones"]["model"] == [0.75, 0.75]
    lo, hi = ci["drums_backbeat"]["model"]
    assert lo <= 0.25 and hi >= 0.75 and lo < 0.5 < hi
    assert ci["drums_backbeat"]["model_over_own"] == [lo, hi]  # own is 1.0 in every piece
    assert ci["continue_in_key"]["model"] == [None, None]  # nothing counted
    assert t.get("drums", "model", "backbeats") == 16  # the pooled sums are unchanged
    assert qb.intervals(qb._Tally()) == {}


def test_drum_styles_scores_a_prepared_corpus(tmp_path):
    """bench/drum_styles.py decodes a real prepared folder and scores its drums as the band
    benchmark does: the synthetic band plays kick on 1 and snare on 2 and 4 in every bar."""
    import subprocess
    import sys

    from bandmate.cli import main

    write_midi(_band(8), tmp_path / "song.mid")
    data = tmp_path / "data"
    assert main(["prepare", str(tmp_path / "song.mid"), "-o", str(data), "--labels",
                 "gm-family", "--val-fraction", "0", "--transpose=0:0", "--workers", "1",
                 "--progress", "off"]) == 0  # fmt: skip
    r = subprocess.run([sys.executable, str(ROOT / "bench/drum_styles.py"), str(data)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["benchmark-like"]["windows"] == got["band"]["windows"] >= 2
    assert got["benchmark-like"]["backbeat"] == 1.0 and got["band"]["kick_on_1"] == 1.0
    assert "drums only" not in got
