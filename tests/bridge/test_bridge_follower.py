"""The MIDI clock follower under what a DAW session does: tempo steps both ways, ramps,
bursts of lost clocks, a late clock, a vanished clock (no ports: synthetic arrival times,
quantised to JACK periods the way JACK delivers them; exact, no wall clock)."""

from __future__ import annotations

import mido
import pytest
from bandmate.bridge.follower import MidiClockFollower

PERIOD_NS = 5_333_333  # a JACK period at 256 frames / 48 kHz
PHASES = range(0, PERIOD_NS, PERIOD_NS // 4)  # where the clocks fall within a period


def clock_times(segments, t0=10**12):
    """Send times of every clock: ``segments`` = [(clocks, bpm_from, bpm_to)], a linear ramp
    when the two differ."""
    ts, t = [], float(t0)
    for n, b0, b1 in segments:
        for i in range(n):
            ts.append(int(t))
            t += 60e9 / ((b0 + (b1 - b0) * i / n) * 24)
    return ts


def follow(segments, skip=(), phase=0):
    """Feed Start and the clocks (arrivals rounded up to the next JACK period); returns the
    follower and, per clock received, (index, position error in clocks at its arrival)."""
    f = MidiClockFollower(tempo=120.0)
    ts = clock_times(segments)
    f.feed(mido.Message("start"), ts[0] - 1000)
    errs = []
    for k, t in enumerate(ts):
        if k in skip:
            continue
        a = -(-(t + phase) // PERIOD_NS) * PERIOD_NS
        f.feed(mido.Message("clock"), a)
        errs.append((k, f.state().tick_at(a) - k))
    return f, errs


def worst(errs, after):
    return max(abs(e) for k, e in errs if k >= after)


@pytest.mark.parametrize("to_bpm", [95, 90, 80, 75, 70, 66, 60, 50, 105, 120, 140, 150])
@pytest.mark.parametrize("phase", PHASES)
def test_tempo_steps_are_followed_without_phantom_losses(to_bpm, phase):
    f, errs = follow([(200, 100, 100), (300, to_bpm, to_bpm)], phase=phase)
    assert f.lost_ticks == 0
    assert f.state().tempo == pytest.approx(to_bpm, rel=0.01)
    # a clock or two off while the step is being recognised, then on the new grid
    assert worst(errs, 200) <= 2.05
    assert worst(errs, 230) < 0.5


@pytest.mark.parametrize("ramp", [(200, 100, 70), (100, 100, 140), (300, 100, 60)])
def test_tempo_ramps_are_followed(ramp):
    for phase in PHASES:
        f, errs = follow([(200, 100, 100), ramp, (200, ramp[2], ramp[2])], phase=phase)
        assert f.lost_ticks == 0
        assert worst(errs, 0) < 1.0
        assert f.state().tempo == pytest.approx(ramp[2], rel=0.01)


BURSTS = {
    "1-in-50": set(range(60, 1000, 50)),
    "two-apart": {100, 102},
    "two-in-a-row": {100, 101},
    "three-close": {100, 103, 106},
    "every-5th": set(range(100, 200, 5)),
    "every-3rd": set(range(100, 130, 3)),
}


@pytest.mark.parametrize("tempo", [60, 100, 120, 160])
@pytest.mark.parametrize("name", sorted(BURSTS))
def test_every_lost_clock_is_counted_and_the_grid_does_not_shift(tempo, name):
    skip = BURSTS[name]
    for phase in PHASES:
        f, errs = follow([(1000, tempo, tempo)], skip=skip, phase=phase)
        assert f.lost_ticks == len(skip), phase
        assert worst(errs, 300) < 0.5  # no permanent shift


def test_a_lost_clock_just_after_a_slow_down_is_counted():
    f, errs = follow([(200, 100, 100), (300, 70, 70)], skip={203, 250})
    assert f.lost_ticks == 2 and worst(errs, 260) < 0.5


def test_silence_counts_only_up_to_what_the_input_reader_has_drained():
    """A reader thread held up by a busy machine (clocks still queued) is not a DAW gone."""
    f = MidiClockFollower()
    ts = clock_times([(100, 120, 120)])
    f.feed(mido.Message("start"), ts[0])
    for t in ts:
        f.feed(mido.Message("clock"), t)
    per = ts[1] - ts[0]
    drained = [ts[-1] + 2 * per]  # the reader last looked 2 clocks after the last clock
    f.input_drained = lambda: drained[0]
    assert not f.check(ts[-1] + 20 * per) and f.state().running
    drained[0] = ts[-1] + 20 * per  # it looked again and found nothing: gone
    assert f.check(ts[-1] + 20 * per) and not f.state().running


def test_a_reader_stuck_for_a_second_is_no_evidence():
    f = MidiClockFollower()
    ts = clock_times([(100, 120, 120)])
    f.feed(mido.Message("start"), ts[0])
    for t in ts:
        f.feed(mido.Message("clock"), t)
    f.input_drained = lambda: ts[-1]  # its port is gone and its thread never looks again
    assert f.check(ts[-1] + 1_100_000_000) and not f.state().running


def test_a_vanished_clock_stops_the_state_and_only_start_resumes():
    f = MidiClockFollower()
    events = []
    f.add_listener(lambda e, st: events.append(e))
    ts = clock_times([(100, 120, 120)])
    f.feed(mido.Message("start"), ts[0])
    for t in ts:
        f.feed(mido.Message("clock"), t)
    per = ts[1] - ts[0]
    assert not f.check(ts[-1] + 11 * per)  # 11 clocks of silence: still running
    assert f.state().running
    assert f.check(ts[-1] + 13 * per)  # an eighth note without clock: gone
    st = f.state()
    assert not st.running and st.tick == 100 and f.vanished == 1 and events[-1] == "lost"
    assert not f.check(ts[-1] + 50 * per)  # said once
    # the DAW comes back sending clock without Start: tempo only, nothing runs
    for i in range(20):
        f.feed(mido.Message("clock"), ts[-1] + (60 + i) * per)
    assert not f.state().running
    f.feed(mido.Message("start"), ts[-1] + 80 * per)
    f.feed(mido.Message("clock"), ts[-1] + 81 * per)
    assert f.state().running and f.state().tick == 0 and events[-1] == "start"


@pytest.mark.parametrize("tempo", [60, 100, 120, 160])
@pytest.mark.parametrize("late", [0.3, 0.5, 0.6, 0.7, 0.9])
def test_a_clock_delayed_by_an_xrun_is_not_counted_lost(tempo, late):
    """An xrun delays one clock by part of a period; the next comes on time (a short gap):
    nothing was lost, whatever JACK's quantisation makes of the two intervals."""
    for pos in range(100, 112):
        f = MidiClockFollower(tempo=120.0)
        ts = clock_times([(300, tempo, tempo)])
        f.feed(mido.Message("start"), ts[0] - 1000)
        per = ts[1] - ts[0]
        for k, t in enumerate(ts):
            a = -(-(t + (late * per if k == pos else 0)) // PERIOD_NS) * PERIOD_NS
            f.feed(mido.Message("clock"), int(a))
        assert f.lost_ticks == 0, pos
        assert f.state().tick_at(int(a)) == pytest.approx(299, abs=0.5)
