"""The live engine on a real JACK server, driven by the stand-in DAW (tests/support/dawsim.py)
the way a working session drives it: tempo steps both ways, bursts of lost clocks, a loop
back to bar 1, Stop during generation, a second trigger, a DAW that vanishes and comes back.

A fake generator (notes on every beat of every voice) keeps it fast and exact; the real
model runs in test_bridge_jam_cli.py. Timing is checked on the clocks the DAW sent (a
fraction of a step), never against wall-clock limits.
"""

from __future__ import annotations

import itertools
import threading

import mido
import pytest
from bandmate.bridge import Bridge, BridgeConfig
from bandmate.bridge.bridge import wait_until
from bandmate.bridge.jam import JamConfig, JamController
from bandmate.models.generate import BarDone, Done, NoteEvent
from bandmate.models.types import Note
from support.dawsim import DawSim, pair_notes

pytestmark = pytest.mark.jack

VOICES = ("SOPRANO", "ALTO", "TENOR", "BASS")
TOL_STEPS = 0.3


class BeatGen:
    """Continue: a note on every beat of every prompt voice, pitch 70 + bar (track 0) / 40 +
    bar (track 1); Add: a bass note per beat. Can be held at a gate before its first note."""

    labels = VOICES

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate
        self.started = threading.Event()
        self.prompts: list = []

    def _notes(self, piece, first_bar, bars, tracks):
        self.prompts.append(piece)
        self.started.set()
        if self.gate is not None:
            while not self.gate.wait(0.01):
                pass
        for b in range(first_bar, first_bar + bars):
            for beat in range(4):
                s = b * 16 + beat * 4
                for tr in tracks:
                    yield NoteEvent(tr, Note(s, (70 if tr == 0 else 40) + b % 12, s + 3))
            yield BarDone(b)
        yield Done(piece, {"sampled_tokens": 1})

    def continue_stream(self, piece, bars, cancel):
        return self._notes(piece, piece.bars, bars, range(len(piece.tracks)))

    def add_stream(self, piece, label, cancel):
        return self._notes(piece, 0, piece.bars, [len(piece.tracks)])


@pytest.fixture
def live(jack_server, request):
    n = request.node.name[-24:].replace("[", "").replace("]", "")
    cfg = BridgeConfig(api="jack", in_name=f"bl in {n}", out_name=f"bl out {n}", clock="midi",
                       watch_s=0)
    br = Bridge(cfg, voices=VOICES).open()
    daw = DawSim(cfg.in_name, cfg.out_name, name=f"dl {n}")
    made: list[JamController] = []

    def make(gen, bars=2):
        ctl = JamController(br.clock, br.capture, br.scheduler, gen, JamConfig(bars=bars))
        br.add_message_listener(ctl.on_message)
        ctl.engine.start()
        made.append(ctl)
        return ctl

    yield br, daw, make
    for ctl in made:
        ctl.shutdown()
    daw.close()
    br.close()


def chords(bars: int, first_bar: int = 0, base: int = 60) -> dict[int, list[mido.Message]]:
    """Half-note chords on channels 1 and 4 (soprano, bass), bar by bar."""
    out: dict[int, list[mido.Message]] = {}
    for b in range(first_bar, first_bar + bars):
        for half in (0, 48):
            for ch, p in ((0, base + 12 + b % 5), (3, base - 12 + b % 5)):
                out.setdefault(b * 96 + half, []).append(
                    mido.Message("note_on", channel=ch, note=p, velocity=80))
                out.setdefault(b * 96 + half + 46, []).append(
                    mido.Message("note_off", channel=ch, note=p))
    return out


def cc(control: int, value: int = 127) -> mido.Message:
    return mido.Message("control_change", channel=9, control=control, value=value)


def on_steps(daw, gen_notes, origin_bar):
    """(step heard, step planned) of every note-on heard, matched by pitch."""
    heard = [(daw.step_of(r.t_ns), r.msg.note) for r in daw.messages(["note_on"])
             if r.msg.velocity > 0]
    out = []
    for step, pitch in heard:
        planned = [s for p, s in gen_notes if p == pitch]
        assert planned, (pitch, step)
        out.append((step, min(planned, key=lambda s: abs(s - step))))
    return out


def planned_continue(prompt_bars: int, bars: int, origin_bar: int):
    """(pitch, absolute step) of what BeatGen's Continue plays from ``origin_bar``."""
    out = []
    for b in range(prompt_bars, prompt_bars + bars):
        for beat in range(4):
            s = (origin_bar + b - prompt_bars) * 16 + beat * 4
            out += [(70 + b % 12, s), (40 + b % 12, s)]
    return out


@pytest.mark.parametrize("to_bpm", [70, 90, 140])
def test_output_stays_on_the_daws_grid_through_a_tempo_step(live, to_bpm, assert_no_hanging):
    br, daw, make = live
    ctl = make(BeatGen())
    notes = chords(2)
    notes.setdefault(2 * 96, []).append(cc(20))  # Continue on the bar 3 downbeat
    # the tempo steps a beat before the output starts (bar 4) and stays there
    daw.play(100, ticks=6 * 96, notes=notes, tempo_changes={3 * 96 - 24: to_bpm})
    assert wait_until(lambda: ctl.engine.last is not None and ctl.engine.last.total, 15)
    job = ctl.engine.last
    assert job.prompt.bars == 2 and job.anchor_bar == 3
    daw.wait()
    assert wait_until(lambda: br.scheduler.pending == 0, 10)
    pairs = on_steps(daw, planned_continue(2, 2, 3), 3)
    assert len(pairs) >= 12
    for heard, planned in pairs:
        assert heard == pytest.approx(planned, abs=TOL_STEPS)
    assert br.clock.lost_ticks == 0
    assert br.clock.state().tempo == pytest.approx(to_bpm, rel=0.02)
    assert_no_hanging(pair_notes(daw.messages())[1])
    daw.stop_transport()


def test_a_burst_of_lost_clocks_does_not_shift_the_output(live, jack_server):
    br, daw, make = live
    ctl = make(BeatGen())
    notes = chords(2)
    notes.setdefault(2 * 96, []).append(cc(20))
    skip = set(range(2 * 96 + 40, 4 * 96, 7))  # one clock in 7 lost for a bar and a half
    xruns = jack_server.xruns
    daw.play(160, ticks=6 * 96, notes=notes, skip=skip)
    daw.wait()
    assert wait_until(lambda: br.scheduler.pending == 0, 10)
    if jack_server.xruns == xruns:
        assert br.clock.lost_ticks == len(skip)
    pairs = on_steps(daw, planned_continue(2, 2, ctl.engine.last.anchor_bar), 3)
    assert len(pairs) >= 12
    for heard, planned in pairs:
        assert heard == pytest.approx(planned, abs=TOL_STEPS)
    daw.stop_transport()


def test_a_loop_back_to_bar_1_prompts_with_the_bars_just_played(live):
    _br, daw, make = live
    gen = BeatGen()
    make(gen)
    daw.play(160, ticks=2 * 96 + 2, notes=chords(2, base=50))
    daw.wait()
    # the DAW loops: Song Position 0, Continue, and a Continue trigger on its first downbeat
    daw.play(160, ticks=3 * 96, notes={0: [cc(20)], **chords(1, 1, base=80)}, locate=True)
    assert wait_until(lambda: gen.prompts, 10)
    p = gen.prompts[0]
    assert p.meta.get("take") == "previous" and p.bars == 2
    assert {n.pitch for n in p.tracks[0].notes} == {62, 63}  # the first pass, only
    daw.wait()
    daw.stop_transport()


def test_stop_while_generating_plays_nothing(live, assert_no_hanging):
    br, daw, make = live
    gate = threading.Event()
    gen = BeatGen(gate)
    make(gen)
    notes = chords(2)
    notes.setdefault(2 * 96 + 10, []).append(cc(20))
    notes.setdefault(2 * 96 + 20, []).append(cc(22))  # Stop before any note was made
    daw.play(160, ticks=5 * 96, notes=notes)
    assert wait_until(gen.started.is_set, 10)
    assert wait_until(lambda: br.scheduler.stats.stops >= 1, 10)
    gate.set()  # the generator now yields all its notes: none may play
    daw.wait()
    assert not daw.messages(["note_on"])
    assert br.scheduler.pending == 0 and br.scheduler.stats.notes_on == 0
    daw.stop_transport()


def test_a_second_trigger_replaces_the_first_from_the_next_bar_line(live, assert_no_hanging):
    br, daw, make = live
    make(BeatGen(), bars=2)
    notes = chords(2)
    notes.setdefault(2 * 96 + 10, []).append(cc(20))  # job 1: bars 4-5
    notes.setdefault(3 * 96 + 10, []).append(cc(21, 4))  # job 2 (add BASS): from bar 5
    daw.play(160, ticks=7 * 96, notes=notes)
    daw.wait()
    assert wait_until(lambda: br.scheduler.pending == 0, 10)
    heard = [(daw.step_of(r.t_ns), r.msg.note) for r in daw.messages(["note_on"])
             if r.msg.velocity > 0]
    cont = [s for s, p in heard if p in (72, 73, 42, 43)]  # job 1: prompt bars 2, 3 -> +2, +3
    added = [s for s, p in heard if p in (40, 41)]  # job 2's bass over the prompt's 2 bars
    assert cont and max(cont) < 4 * 16 - TOL_STEPS  # job 1 stopped at the bar 5 line
    assert added and min(added) == pytest.approx(4 * 16, abs=TOL_STEPS)
    pairs, hanging = pair_notes(daw.messages())
    assert_no_hanging(hanging)
    # never two notes at once in one voice
    by_ch: dict[int, list] = {}
    for ch, _p, on, off in pairs:
        by_ch.setdefault(ch, []).append((on, off))
    for spans in by_ch.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    daw.stop_transport()


def test_a_vanishing_daw_silences_output_and_sends_nothing_stale(live, assert_no_hanging):
    br, daw, make = live
    ctl = make(BeatGen(), bars=2)
    notes = chords(2)
    notes.setdefault(2 * 96, []).append(cc(20))
    daw.play(160, ticks=3 * 96 + 48, notes=notes)  # dies in the middle of bar 4's output
    daw.wait()
    t_gone = max(daw.tick_times.values())
    assert wait_until(lambda: not br.clock.state().running, 5)
    assert ctl.engine.last.state in ("done", "cancelled")
    wait_until(lambda: not pair_notes(daw.messages())[1], 3)  # the note-offs on their way
    got = daw.messages()
    assert not [r for r in got if r.msg.type == "note_on" and r.msg.velocity > 0
                and r.t_ns > t_gone + 0.2e9]  # nothing on extrapolated time
    assert_no_hanging(pair_notes(got)[1])
    # the DAW comes back a moment later with clock, then Start: nothing stale before Start
    daw.clear()
    daw.play(160, ticks=96, send_start=False)
    daw.wait()
    assert not daw.messages(["note_on"]) and br.scheduler.pending == 0
    daw.stop_transport()
