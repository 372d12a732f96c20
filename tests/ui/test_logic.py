"""The Qt-free parts of the app: names, settings, roll model and geometry, the job runner."""

from __future__ import annotations

import json
import threading

import pytest
from bandmate.models.generate import BarDone, Done, NoteEvent
from bandmate.models.types import Note, Piece, Track
from bandmate.ui.jobs import Engine, GapTracker, JobSpec, Progress, StreamNote, TakeDone, run_job
from bandmate.ui.names import GM_PROGRAMS, instrument_choices, instrument_name
from bandmate.ui.roll_model import RollGeometry, RollModel, track_color
from bandmate.ui.settings import AppSettings, load_settings, save_settings


def test_instrument_names():
    assert instrument_name("SOPRANO") == "Soprano"
    assert instrument_name("DRUMS") == "Drums"
    assert instrument_name("33") == "Electric Bass (finger)"
    assert instrument_name("0") == "Acoustic Grand Piano"
    assert instrument_name("127") == "Gunshot"
    assert len(set(GM_PROGRAMS)) == 128
    assert instrument_choices(["BASS", "33", "BASS", "DRUMS"]) == [
        ("BASS", "Bass"),
        ("33", "Electric Bass (finger)"),
        ("DRUMS", "Drums"),
    ]


class DictStore:
    def __init__(self):
        self.d = {}

    def value(self, key):
        return self.d.get(key)

    def setValue(self, key, value):
        self.d[key] = value


def test_settings_round_trip_and_bad_values():
    store = DictStore()
    assert load_settings(store) == AppSettings()
    s = AppSettings(in_port="DAW out", bars=8, temperature=0.7, clock_source="internal")
    save_settings(store, s)
    assert load_settings(store) == s
    assert AppSettings.from_json(json.loads(json.dumps(s.to_json()))) == s
    # a bad stored value falls back to its default, the rest survive
    store.d["settings/json"] = json.dumps({**s.to_json(), "bars": 5, "future_key": 1})
    got = load_settings(store)
    assert got.bars == 4 and got.in_port == "DAW out"
    store.d["settings/json"] = "{not json"
    assert load_settings(store) == AppSettings()
    with pytest.raises(ValueError, match="clock_source must be one of"):
        AppSettings(clock_source="wallclock")


def _piece():
    return Piece(
        (
            Track("SOPRANO", (Note(0, 72, 4), Note(4, 74, 8))),
            Track("BASS", (Note(0, 48, 16),)),
        ),
        bars=1,
    )


def test_roll_model_stream_and_clear():
    m = RollModel()
    m.set_prompt(_piece())
    assert m.track_names == ["SOPRANO", "BASS"] and m.bars == 1
    m.add_generated(0, Note(16, 71, 20))
    m.add_generated(2, Note(16, 40, 40), name="Drums")
    assert m.generated_count() == 2 and m.bars == 3
    assert m.track_names[2] == "Drums"
    lo, hi = m.pitch_span()
    assert lo <= 40 - 1 and hi >= 74
    m.clear_generated()
    assert m.generated_count() == 0 and m.bars == 1 and len(m.track_names) == 2


def test_roll_model_show_result_marks_only_new_notes():
    prompt = _piece()
    result = Piece(
        (
            prompt.tracks[0].with_notes([*prompt.tracks[0].notes, Note(16, 70, 20)]),
            prompt.tracks[1],
            Track("33", (Note(0, 36, 8),)),
        ),
        bars=2,
    )
    m = RollModel()
    m.show_result(prompt, result, ["S", "B", "Bass"])
    assert m.generated_count() == 2 and m.bars == 2 and m.track_names == ["S", "B", "Bass"]


def test_geometry_and_zoom():
    g = RollGeometry(px_per_step=8, px_per_key=6, pitch_lo=40, pitch_hi=80)
    x, y, w, h = g.note_rect(Note(4, 80, 8))
    assert (x, y, w, h) == (32, 0, 31, 5)
    assert g.pitch_at(g.y(60) + 1) == 60
    assert g.step_at(g.x(12)) == 12
    z, anchor = g.zoomed(2.0, anchor_x=80)  # step 10 stays under the mouse
    assert z.px_per_step == 16 and anchor == 160
    assert g.zoomed(1000)[0].px_per_step == RollGeometry.MAX_STEP_PX
    assert track_color(0) != track_color(1) and track_color(8) == track_color(0)



def _fake_engine(calls, block: threading.Event | None = None):
    def stream_continue(session, piece, bars, sampling=None, cancel=None):
        calls.append(("continue", bars, sampling))
        for b in range(bars):
            if cancel.is_set():
                return
            yield NoteEvent(0, Note(piece.steps + 16 * b, 60 + b, piece.steps + 16 * b + 4))
            yield BarDone(piece.bars + b)
            if block is not None:
                block.wait(5)
        yield Done(piece, {"tokens": 3})

    def stream_add_track(session, piece, instrument, density=None, sampling=None, cancel=None):
        calls.append(("add", instrument, density))
        yield NoteEvent(len(piece.tracks), Note(0, 40, 4))
        yield BarDone(0)
        yield Done(piece, {})

    return Engine(stream_continue, stream_add_track, lambda session, **kw: kw)


def test_run_job_reports_notes_progress_and_takes():
    calls, events = [], []
    spec = JobSpec(bars=4, variations=2, seed=7, temperature=0.5)
    res = run_job(None, _piece(), spec, events.append, threading.Event(), _fake_engine(calls))
    assert not res.cancelled and len(res.takes) == 2
    assert [c[2]["seed"] for c in calls] == [7, 8]
    assert sum(isinstance(e, StreamNote) for e in events) == 8
    assert [e.take for e in events if isinstance(e, TakeDone)] == [0, 1]
    prog = [e for e in events if isinstance(e, Progress)]
    assert prog[0] == Progress(0, 8) and prog[-1] == Progress(8, 8)
    assert [p.done for p in prog] == sorted(p.done for p in prog)

    res = run_job(
        None, _piece(), JobSpec(kind="add", instrument="33", density=2), events.append,
        threading.Event(), _fake_engine(calls),
    )  # fmt: skip
    assert calls[-1] == ("add", "33", 2) and len(res.takes) == 1


def test_run_job_cancel_stops_early():
    calls, events = [], []
    cancel = threading.Event()

    def emit(e):
        events.append(e)
        if isinstance(e, StreamNote):
            cancel.set()

    res = run_job(None, _piece(), JobSpec(variations=3), emit, cancel, _fake_engine(calls))
    assert res.cancelled and res.takes == [] and len(calls) == 1
    assert sum(isinstance(e, StreamNote) for e in events) == 1


def test_jobspec_validates():
    with pytest.raises(ValueError, match="kind must be one of"):
        JobSpec(kind="infill")
    assert JobSpec.from_json(JobSpec(bars=8).to_json()) == JobSpec(bars=8)


def test_gap_tracker():
    g = GapTracker(0.01)
    for t in (0.0, 0.01, 0.02, 0.09, 0.10):
        g.tick(t)
    assert g.max_gap == pytest.approx(0.07) and g.max_stall == pytest.approx(0.06)


def test_stream_placer_anchors_at_bar_line_and_channels():
    from bandmate.bridge.live import StreamPlacer, channel_for_track

    prompt = Piece(
        (Track("SOPRANO", (Note(0, 72, 4),), channel=0, velocity=90),
         Track("BASS", (Note(0, 48, 16),), channel=1)),
        bars=4,
    )  # fmt: skip
    sp = StreamPlacer(prompt, first_step=prompt.steps, target_bar=9)
    assert sp.note(0, Note(64, 70, 68)) == []  # held until the first bar is ready
    placed = sp.anchor(earliest_bar=9)
    assert len(placed) == 1 and placed[0].origin_step == 9 * 16 - 64
    assert placed[0].channel == 0 and placed[0].velocity == 90
    # the note at the prompt's end plays on bar 9's downbeat
    assert placed[0].origin_step + placed[0].note.start == 9 * 16
    assert sp.note(1, Note(80, 40, 84))[0].channel == 1
    late = StreamPlacer(prompt, first_step=0, target_bar=9)
    late.note(2, Note(0, 40, 4))
    assert late.anchor(earliest_bar=11)[0].origin_step == 11 * 16
    assert late.anchor(earliest_bar=20) == []
    assert channel_for_track(prompt, 2) == 2
    assert channel_for_track(prompt, 2, "DRUMS") == 9


def test_clip_of_continue_and_add():
    from bandmate.ui.controller import clip_of

    prompt = _piece()
    cont = Piece(
        (prompt.tracks[0].with_notes([*prompt.tracks[0].notes, Note(16, 70, 20)]),
         prompt.tracks[1]),
        bars=2,
    )  # fmt: skip
    clip = clip_of(prompt, cont, "continue")
    assert clip.bars == 1 and clip.tracks[0].notes == (Note(0, 70, 4),)
    added = Piece((*prompt.tracks, Track("33", (Note(0, 36, 8),))), bars=1)
    clip = clip_of(prompt, added, "add")
    assert [t.inst for t in clip.tracks] == ["33"]


def test_add_labels_have_one_fixed_order_and_family_groups():
    from bandmate.models.instruments import grouped_choices, ordered_labels
    from bandmate.ui.names import add_button_text, instrument_groups
    from support.models import BAND_CODEC, BAND_LABELS, CHORALE_CODEC

    # vocabulary order, whatever order the training data's counts gave
    assert ordered_labels(["BASS", "SOPRANO", "TENOR", "ALTO"], CHORALE_CODEC.labels) == (
        "SOPRANO", "ALTO", "TENOR", "BASS")
    band = ordered_labels(BAND_LABELS, BAND_CODEC.labels)
    assert band == ("DRUMS", "0", "24", "32", "48", "80")
    assert instrument_groups(band, "gm-family") == [
        ("Drums", [("DRUMS", "Drums")]), ("Piano", [("0", "Piano")]),
        ("Guitar", [("24", "Guitar")]), ("Bass", [("32", "Bass")]),
        ("Ensemble", [("48", "Ensemble")]), ("Synth Lead", [("80", "Synth Lead")])]
    # a program-scheme GM model: GM names under their family
    assert grouped_choices(["33", "34", "DRUMS", "0"]) == [
        ("Bass", [("33", "Electric Bass (finger)"), ("34", "Electric Bass (pick)")]),
        ("Drums", [("DRUMS", "Drums")]), ("Piano", [("0", "Acoustic Grand Piano")])]
    assert add_button_text("DRUMS", "Drums") == "Add Drums"
    assert add_button_text("32", "Bass") == "Add Bass track"
    assert instrument_name("32", "gm-family") == "Bass"


def test_model_choices_list_shipped_models_and_the_folder_in_use(tmp_path):
    from bandmate.models import registry
    from bandmate.ui.controller import AppController

    choices, want = AppController.model_choices("")
    assert want == "default" and choices[0] == ("default", "default: four-part chorales")
    assert [v for v, _ in choices] == registry.installed()
    folder = str(tmp_path / "my-model")
    choices, want = AppController.model_choices(folder)
    assert want == folder and choices[-1] == (folder, "folder: my-model")
