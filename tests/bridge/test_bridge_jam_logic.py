"""Jam trigger logic with a fake generator (the real engine runs in test_bridge_jam_cli.py).

Real clock (InternalClock placed so "now" is at a chosen bar), real capture, real scheduler
(its thread not started: the test reads what is pending).
"""

from __future__ import annotations

import threading
import time

import mido
import pytest
from bandmate.bridge.capture import Capture, CaptureConfig
from bandmate.bridge.clock import InternalClock, ns_per_tick
from bandmate.bridge.jam import JamConfig, JamController
from bandmate.bridge.scheduler import Scheduler
from bandmate.models.generate import BarDone, Done, NoteEvent
from bandmate.models.types import Note


class FakeGen:
    labels = ("SOPRANO", "ALTO", "TENOR", "BASS", "DRUMS")

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.calls: list[tuple] = []

    def continue_stream(self, piece, bars, cancel):
        self.calls.append(("continue", piece, bars))
        p0 = piece.bars * 16
        # echo one prompt note (engines may), then two bars for each track
        yield NoteEvent(0, piece.tracks[0].notes[0])
        for b in range(bars):
            for tr in range(len(piece.tracks)):
                yield NoteEvent(tr, Note(p0 + b * 16, 60 + tr, p0 + b * 16 + 4))
            if b == 0:
                time.sleep(self.delay_s)
            yield BarDone(piece.bars + b)
        yield Done(piece, {"sampled_tokens": 42})

    def add_stream(self, piece, label, cancel):
        self.calls.append(("add", piece, label))
        yield NoteEvent(len(piece.tracks), Note(0, 36, 2))
        yield BarDone(0)
        yield NoteEvent(len(piece.tracks), Note(16, 38, 18))
        yield Done(piece, {"sampled_tokens": 7})


def _rig(at_bar: float, gen: FakeGen, **cfg):
    tempo = 120.0
    clock = InternalClock(tempo)
    clock.start(at_ns=time.perf_counter_ns() - int(at_bar * 96 * ns_per_tick(tempo)))
    cap = Capture(clock, CaptureConfig(voices=("SOPRANO", "ALTO", "TENOR", "BASS")))
    sent: list[mido.Message] = []
    sched = Scheduler(sent.append, clock)
    st = clock.state()
    for bar in range(int(at_bar)):
        for ch, pitch, vel in ((0, 72, 100), (3, 48, 50)):
            cap.feed(mido.Message("note_on", channel=ch, note=pitch + bar, velocity=vel),
                     st.ns_at(bar * 96))
            cap.feed(mido.Message("note_off", channel=ch, note=pitch + bar),
                     st.ns_at(bar * 96 + 48))
    ctl = JamController(clock, cap, sched, gen, JamConfig(bars=2, **cfg))
    return clock, ctl, sched, sent


def _cc(control, value, channel=4):
    return mido.Message("control_change", channel=channel, control=control, value=value)


def test_continue_prompt_is_bars_before_trigger_and_starts_on_next_bar():
    gen = FakeGen()
    _, ctl, sched, _ = _rig(3.4, gen)
    ctl.on_message(_cc(20, 127), time.perf_counter_ns())
    ctl.run_queued()
    kind, prompt, bars = gen.calls[0]
    assert (kind, bars, prompt.bars, prompt.meta["start_bar"]) == ("continue", 2, 2, 1)
    assert [list(t.notes) for t in prompt.tracks] == [[Note(0, 73, 8), Note(16, 74, 24)],
                                                     [Note(0, 49, 8), Note(16, 50, 24)]]
    pend = sched.pending_notes()
    # the echoed prompt note is not replayed; 2 bars x 2 tracks from bar 4 (index 4), on the
    # prompt tracks' channels and velocities
    assert len(pend) == 4
    assert pend[0][:5] == (4 * 96, 4 * 96 + 24, 0, 60, 100)
    assert pend[1][:5] == (4 * 96, 4 * 96 + 24, 3, 61, 50)
    assert pend[2][0] == 5 * 96
    assert ctl.last_result["start_bar"] == 4 and ctl.last_result["tokens"] == 42


def test_first_bar_late_moves_output_one_bar_later(caplog):
    gen = FakeGen()
    # 0.3 s before the next bar line with 0.5 s lead: not ready in time for bar index 4
    _, ctl, sched, _ = _rig(3.85, gen, lead_ms=500)
    ctl.on_message(_cc(20, 1), time.perf_counter_ns())
    with caplog.at_level("INFO"):  # the engine logs as bandmate.live
        ctl.run_queued()
    assert ctl.last_result["start_bar"] == 5
    assert sched.pending_notes()[0][0] == 5 * 96
    assert any("too late for bar 5" in r.message for r in caplog.records)


def test_value_zero_fires_nothing_and_other_ccs_are_ignored():
    gen = FakeGen()
    _, ctl, _, _ = _rig(3.4, gen)
    for m in (_cc(20, 0), _cc(21, 0), _cc(7, 100), mido.Message("note_on", note=60)):
        ctl.on_message(m, time.perf_counter_ns())
    ctl.run_queued()
    assert gen.calls == [] and ctl.jobs_done == 0


@pytest.mark.parametrize(("value", "label", "channel"), [(4, "BASS", 1), (5, "DRUMS", 9)])
def test_add_track_picks_label_by_value_and_a_free_channel(value, label, channel):
    gen = FakeGen()
    _, ctl, sched, _ = _rig(3.4, gen)
    ctl.on_message(_cc(21, value), time.perf_counter_ns())
    ctl.run_queued()
    assert gen.calls[0][0] == "add" and gen.calls[0][2] == label
    pend = sched.pending_notes()
    assert [(p[0], p[2], p[3], p[4]) for p in pend] == [(4 * 96, channel, 36, 75),
                                                        (5 * 96, channel, 38, 75)]


def test_add_track_value_out_of_range_is_logged_not_run():
    gen = FakeGen()
    _, ctl, _, _ = _rig(3.4, gen)
    ctl.on_message(_cc(21, 99), time.perf_counter_ns())
    ctl.run_queued()
    assert gen.calls == [] and ctl.last_result["skipped"] == "bad label index"


def test_remapped_ccs_and_stop_panic_act_at_once():
    gen = FakeGen()
    _, ctl, sched, sent = _rig(3.4, gen, cc_continue=30, cc_stop=31, cc_panic=29, cc_add=28)
    sched.add_note(10_000, 10_100, 2, 60, 80)
    ctl.on_message(_cc(22, 127), time.perf_counter_ns())  # default Stop CC: now unmapped
    assert sched.pending == 2
    ctl.on_message(_cc(31, 127), time.perf_counter_ns())
    assert sched.pending == 0
    sent.clear()
    ctl.on_message(_cc(29, 127), time.perf_counter_ns())
    assert {(m.channel, m.control) for m in sent} >= {(c, 123) for c in range(16)}


def test_new_trigger_cancels_the_job_in_flight():
    started = threading.Event()

    class SlowGen(FakeGen):
        def continue_stream(self, piece, bars, cancel):
            self.calls.append(("continue", piece, bars))
            started.set()
            for _ in range(500):
                if cancel.is_set():
                    break
                time.sleep(0.01)
                yield BarDone(0)
            yield Done(piece)

    gen = SlowGen()
    _, ctl, _, _ = _rig(3.4, gen)
    th = threading.Thread(target=ctl.serve)
    th.start()
    ctl.on_message(_cc(20, 1), time.perf_counter_ns())
    assert started.wait(5)
    ctl.on_message(_cc(22, 1), time.perf_counter_ns())  # Stop cancels
    ctl.shutdown()
    th.join(5)
    assert not th.is_alive() and ctl.last_result.get("cancelled")


def test_jam_config_validates():
    with pytest.raises(ValueError, match="must differ"):
        JamConfig(cc_continue=21)
    with pytest.raises(ValueError, match="channel mode"):
        JamConfig(cc_panic=123)
    c = JamConfig(bars=8, cc_add=25)
    assert JamConfig.from_json(c.to_json()) == c
