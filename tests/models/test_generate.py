"""Generation tasks on a real tiny random-weight ONNX model: grammar, streaming, seeds, cancel,
context cuts, the CLI."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from bandmate.models import generate as G
from bandmate.models.codec import decode
from bandmate.models.midi_io import read_midi
from bandmate.models.sampler import SamplingConfig
from bandmate.models.session import ModelSession
from bandmate.models.vocab import BAR_END, DENSITY0, NOTE_ON0

CHORALE = Path(__file__).parents[1] / "data" / "jsfakes-0.mid"


@pytest.fixture(scope="session")
def prompt(sess):
    return read_midi(CHORALE, sess.config).slice_bars(0, 4)


def _no_repairs(sess, done):
    for w in done.stats["tokens"]:
        d = decode(w, sess.config)
        assert d.repairs == [], d.repairs[:3]


def test_thousand_seeded_generations_decode_without_repairs(sess, prompt):
    short = prompt.slice_bars(2, 2)
    cfg = dict(max_bar_tokens=16, top_p=1.0)
    n = 0
    for k in range(10):
        s = SamplingConfig(seed=k, temperature=[0.7, 1.0, 1.5][k % 3], **cfg)
        for d in G.generate_batch(sess, "continue", short, 50, s, bars=1):
            _no_repairs(sess, d)
            assert d.piece.bars == 3
            n += 1
        s = SamplingConfig(seed=100 + k, scale="G major" if k % 2 else None, **cfg)
        for d in G.generate_batch(sess, "add", short, 50, s, instrument="bass"):
            _no_repairs(sess, d)
            assert len(d.piece.tracks) == 5 and d.piece.tracks[4].inst == "BASS"
            n += 1
    assert n == 1000


def test_same_seed_same_notes(sess, prompt):
    s = SamplingConfig(seed=42)
    a = G.continue_piece(sess, prompt, 2, sampling=s)
    b = G.continue_piece(sess, prompt, 2, sampling=s)
    c = G.continue_piece(sess, prompt, 2, sampling=SamplingConfig(seed=43))
    assert a == b
    assert a != c


def test_stream_continue_events(sess, prompt):
    evs = list(G.stream_continue(sess, prompt, 2, sampling=SamplingConfig(seed=1)))
    done = evs[-1]
    assert isinstance(done, G.Done) and sum(isinstance(e, G.Done) for e in evs) == 1
    assert [e.bar for e in evs if isinstance(e, G.BarDone)] == [4, 5]
    notes = [e for e in evs if isinstance(e, G.NoteEvent)]
    piece = done.piece
    assert piece.bars == 6
    for i, t in enumerate(prompt.tracks):  # the prompt is kept, new notes follow it
        assert set(t.notes) <= set(piece.tracks[i].notes)
    new = {(i, n) for i, t in enumerate(piece.tracks) for n in t.notes if n.start >= 64}
    assert {(e.track, e.note) for e in notes} == new
    assert all(64 <= e.note.start < e.note.end <= 96 for e in notes)
    # Notes of bar 4 all come before BarDone(4).
    idx = next(i for i, e in enumerate(evs) if isinstance(e, G.BarDone))
    assert all(e.note.start >= 80 for e in evs[idx:] if isinstance(e, G.NoteEvent))
    _no_repairs(sess, done)


def test_continue_chosen_tracks_only(sess, prompt):
    piece = G.continue_piece(sess, prompt, 1, tracks=[3], sampling=SamplingConfig(seed=2))
    for i in range(3):
        assert all(n.start < 64 for n in piece.tracks[i].notes)
    with pytest.raises(G.GenerationError, match="indices"):
        G.continue_piece(sess, prompt, 1, tracks=[9])


def test_add_track_density_and_pitch_range(sess, prompt):
    s = SamplingConfig(seed=3, pitch_range=(36, 55))
    done = list(G.stream_add_track(sess, prompt, "BASS", density=1, sampling=s))[-1]
    new = done.piece.tracks[-1]
    assert new.inst == "BASS" and new.notes
    assert all(36 <= n.pitch <= 55 for n in new.notes)
    toks = done.stats["tokens"][0]
    assert DENSITY0 + 1 in toks
    ons = [t - NOTE_ON0 for t in toks[toks.index(DENSITY0 + 1):] if NOTE_ON0 <= t < NOTE_ON0 + 128]
    assert ons and all(36 <= p <= 55 for p in ons)
    with pytest.raises(G.GenerationError, match="unknown instrument"):
        G.add_track(sess, prompt, "kazoo")


def _silent_sampler(real):
    """A model that always wants silence: BAR_END whenever the mask allows it."""

    def pick(logits, mask, sampling, rng):
        if mask[BAR_END]:
            return BAR_END
        return real(logits, mask, sampling, rng)

    return pick


@pytest.mark.parametrize("bars", [4, 9])
def test_an_added_track_is_never_empty(sess, monkeypatch, bars):
    # A model that would leave every bar empty still plays in the requested track's last
    # bar (and only there): "Add bass" returning no bass is a failure, not a choice.
    piece = read_midi(CHORALE, sess.config)
    piece = piece.slice_bars(0, bars) if bars <= piece.bars else piece
    monkeypatch.setattr(G, "sample", _silent_sampler(G.sample))
    done = list(G.stream_add_track(sess, piece, "bass", sampling=SamplingConfig(seed=1)))[-1]
    new = done.piece.tracks[-1].notes
    last = (piece.bars - 1) * 16
    assert new and all(n.start >= last for n in new)
    _no_repairs(sess, done)
    # Continuing may leave bars empty: rests are music there.
    cont = G.continue_piece(sess, piece.slice_bars(0, 2), 2, sampling=SamplingConfig(seed=1))
    assert all(n.start < 32 for t in cont.tracks for n in t.notes)


def test_add_track_over_more_bars_than_the_window(sess):
    long = read_midi(CHORALE, sess.config)
    assert long.bars > sess.bars
    evs = list(G.stream_add_track(sess, long, "bass", sampling=SamplingConfig(seed=4)))
    assert [e.bar for e in evs if isinstance(e, G.BarDone)] == list(range(long.bars))
    done = evs[-1]
    assert done.stats["windows"] == long.bars - sess.bars + 1
    _no_repairs(sess, done)


def test_cancel_stops_within_one_step(sess, prompt):
    cancel = threading.Event()
    stream = G.stream_continue(sess, prompt, 4, sampling=SamplingConfig(seed=5), cancel=cancel)
    calls_at_cancel = None
    kinds = []
    for ev in stream:
        kinds.append(type(ev).__name__)
        if isinstance(ev, G.NoteEvent) and calls_at_cancel is None:
            cancel.set()
            calls_at_cancel = sess.calls
    assert calls_at_cancel is not None
    assert sess.calls == calls_at_cancel  # no model call after the cancel
    assert "Done" not in kinds
    with pytest.raises(G.GenerationError, match="cancelled"):
        G.continue_piece(sess, prompt, 1, cancel=cancel)


def test_infill_needs_a_fill_model(sess, prompt):
    with pytest.raises(G.GenerationError, match="without fills"):
        G.infill(sess, prompt, 0, [1])


def test_infill_on_a_fill_model(model_dir, prompt, tmp_path):
    dst = tmp_path / "fills"
    shutil.copytree(model_dir, dst)
    meta = json.loads((dst / "bandmate.json").read_text())
    meta["fills"] = True
    (dst / "bandmate.json").write_text(json.dumps(meta))
    s = ModelSession.load(dst)
    evs = list(G.stream_infill(s, prompt, 1, [1, 2], sampling=SamplingConfig(seed=6)))
    done = evs[-1]
    _no_repairs(s, done)
    for i, t in enumerate(prompt.tracks):
        out = done.piece.tracks[i]
        keep = [n for n in t.notes if not 16 <= n.start < 48] if i == 1 else list(t.notes)
        if i != 1:
            assert list(out.notes) == keep
        else:
            assert all(n in out.notes or n.end > 16 for n in keep)
            assert all(16 <= e.note.start < 48 for e in evs if isinstance(e, G.NoteEvent))
    with pytest.raises(G.GenerationError, match="neighbouring"):
        G.infill(s, read_midi(CHORALE, s.config), 0, [0, 5])


def test_prompt_plans_are_written_by_the_models_codec(sess, prompt, model_dir, tmp_path):
    """Every task's prompt is `Codec` output: the codec's sample of the window, its headers,
    its fill placeholders (no private copy of the layout in the plans)."""
    from bandmate.models.codec import EMPTY_BAR, FILL_BAR
    from bandmate.models.generate_jobs import AddJob, Bar, ContinueJob, Force, InfillJob, Row
    from bandmate.models.vocab import FILL_END, FILL_START, TRACK_END

    codec = sess.codec
    assert codec is sess.codec and codec.config == sess.config and codec.vocab == sess.vocab
    s = SamplingConfig(seed=0)
    row = Row(0, np.random.default_rng(0), None, {})  # type: ignore[arg-type]

    def forced(plan) -> list[int]:
        return [x for a in plan if isinstance(a, Force) for x in a.ids]

    assert prompt.bars == sess.bars == 4
    add = AddJob(sess, prompt, "bass", 1, s)
    plan = add.plan(row, add.windows[0])
    want = [*codec.sample(prompt, 0, 4).tolist(), *codec.header("BASS", 1), TRACK_END]
    assert forced(plan) == want
    assert [a.bar for a in plan if isinstance(a, Bar)] == [0, 1, 2, 3]

    cont = ContinueJob(sess, prompt, 1, None, s)
    plan = cont.plan(row, 4)
    dens = [cont.density[i] for i in range(len(prompt.tracks))]
    want = codec.sample(prompt, 1, 3, dens, keep_empty=True).tolist()
    assert [x for a in plan if isinstance(a, Force) and a.ids != EMPTY_BAR for x in a.ids] == want
    assert [a.track for a in plan if isinstance(a, Bar)] == [0, 1, 2, 3]

    dst = tmp_path / "fills"
    shutil.copytree(model_dir, dst)
    meta = json.loads((dst / "bandmate.json").read_text())
    (dst / "bandmate.json").write_text(json.dumps({**meta, "fills": True}))
    fs = ModelSession.load(dst)
    job = InfillJob(fs, prompt, 1, [1, 2], s)
    plan = job.plan(row, job.windows[0])
    got = forced(plan)
    k = next(i for i in range(len(got)) if tuple(got[i : i + 3]) == FILL_BAR)
    assert tuple(got[k + 3 : k + 6]) == FILL_BAR
    unfilled = [*got[:k], *EMPTY_BAR, *EMPTY_BAR, *got[k + 6 :]]
    assert unfilled == fs.codec.sample(job.result, 0, 4).tolist()
    fills = [(a.track, a.bar, a.start, a.end) for a in plan if isinstance(a, Bar)]
    assert fills == [(1, 1, FILL_START, FILL_END), (1, 2, FILL_START, FILL_END)]


@pytest.fixture(scope="session")
def small_ctx(tmp_path_factory):
    from support.models import export_random

    return ModelSession.load(
        export_random(tmp_path_factory.mktemp("small") / "m", n_positions=160, seed=1)
    )


def test_long_prompt_is_cut_by_tracks_and_bars_and_reported(small_ctx, prompt):
    done = list(G.stream_continue(small_ctx, prompt, 1, tracks=[0, 1],
                                  sampling=SamplingConfig(seed=7, max_bar_tokens=16)))[-1]
    assert done.stats["cut"] and any("left out" in c for c in done.stats["cut"])
    assert done.piece.bars == 5
    _no_repairs(small_ctx, done)
    for w in done.stats["tokens"]:
        assert len(w) <= small_ctx.n_positions + 2


def test_request_that_cannot_fit_is_a_clear_error(small_ctx, prompt):
    wide = prompt
    for _ in range(2):
        wide = wide.__class__(wide.tracks + wide.tracks, wide.bars, wide.tempo)
    with pytest.raises(G.GenerationError, match="does not fit"):
        G.continue_piece(small_ctx, wide, 1)


def test_cli_continue_add_and_errors(model_dir, tmp_path, capsys):
    from bandmate.cli import main

    out = tmp_path / "out.mid"
    assert main(["generate", str(CHORALE), "-o", str(out), "--continue", "2", "--model",
                 str(model_dir), "--seed", "1", "--tokens"]) == 0
    got = read_midi(out)
    assert got.bars >= 10
    printed = capsys.readouterr().out
    assert printed.startswith("PIECE_START TRACK_START INST=")
    assert main(["generate", str(CHORALE), "-o", str(out), "--add-track", "bass", "--model",
                 str(model_dir), "--variations", "2", "--seed", "2", "--scale", "C major"]) == 0
    for k in (1, 2):
        p = read_midi(tmp_path / f"out-{k}.mid")
        assert len(p.tracks) == 5
        assert all(n.pitch % 12 in (0, 2, 4, 5, 7, 9, 11) for n in p.tracks[4].notes)
    assert main(["generate", str(CHORALE), "-o", str(out), "--infill", "0:1", "--model",
                 str(model_dir)]) == 2
    assert "without fills" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "none.mid"), "-o", str(out), "--continue", "1",
                 "--model", str(model_dir)]) == 2


def test_batch_rows_differ_and_are_reproducible(sess, prompt):
    s = SamplingConfig(seed=9)
    a = G.generate_batch(sess, "continue", prompt, 3, s, bars=1)
    b = G.generate_batch(sess, "continue", prompt, 3, s, bars=1)
    assert [d.piece for d in a] == [d.piece for d in b]
    assert len({d.piece.tracks[0].notes for d in a}) > 1
    assert np.isfinite(a[0].stats["ms_per_token"])
