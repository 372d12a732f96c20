"""Pure logic of the bridge: clock following, capture, scheduler policy (no MIDI ports).

Times are synthetic ``perf_counter_ns`` values, or an InternalClock started so that "now" sits
at a chosen position; timing is checked on the clock's tick line, not against wall-clock limits.
"""

from __future__ import annotations

import time

import mido
import pytest
from bandmate.bridge.bridge import BridgeConfig, wait_until
from bandmate.bridge.capture import Capture, CaptureConfig, voice_labels
from bandmate.bridge.clock import InternalClock, ns_per_tick
from bandmate.bridge.follower import AutoClock, MidiClockFollower
from bandmate.bridge.scheduler import Scheduler, SchedulerConfig
from bandmate.models.config import CodecConfig
from bandmate.models.types import Note

PERIOD_NS = 5_333_333  # a JACK period at 256 frames / 48 kHz


def _feed_clock(f: MidiClockFollower, tempo: float, ticks: int, skip=(), t0=10**12,
                quantise=True, start=True):
    """Send Start + clocks; arrival quantised up to the next JACK period (as JACK does)."""
    if start:
        f.feed(mido.Message("start"), t0)
    p = ns_per_tick(tempo)
    times = {}
    for k in range(ticks):
        t = t0 + int(k * p)
        if quantise:
            t = -(-t // PERIOD_NS) * PERIOD_NS
        times[k] = t
        if k not in skip:
            f.feed(mido.Message("clock"), t)
    return times


@pytest.mark.parametrize("tempo", [60.0, 97.0, 120.0, 180.0])
def test_follower_tempo_and_position(tempo):
    f = MidiClockFollower(tempo=120.0)
    times = _feed_clock(f, tempo, 200)
    st = f.state()
    assert st.running
    assert st.tempo == pytest.approx(tempo, rel=0.005)
    # every clock's arrival maps back to its own index within a quarter of a step (1.5 ticks)
    for k in (100, 150, 199):
        assert st.tick_at(times[k]) == pytest.approx(k, abs=1.5)
    assert f.lost_ticks == 0


def test_lost_clocks_do_not_shift_the_grid():
    f = MidiClockFollower(tempo=120.0)
    times = _feed_clock(f, 120.0, 300, skip=(50, 120, 121, 250))
    st = f.state()
    assert f.lost_ticks == 4
    assert st.tick_at(times[299]) == pytest.approx(299, abs=1.0)


def test_a_late_clock_is_not_a_lost_one():
    f = MidiClockFollower(tempo=120.0)
    t = _feed_clock(f, 120.0, 60, quantise=False)
    p = ns_per_tick(120.0)
    # clock 60 comes 0.7 of a clock late (a stalled sender), 61 and on are on time
    f.feed(mido.Message("clock"), t[59] + int(1.7 * p))
    for k in range(61, 100):
        f.feed(mido.Message("clock"), t[0] + int(k * p))
    assert f.lost_ticks == 0
    assert f.state().tick_at(t[0] + int(99 * p)) == pytest.approx(99, abs=0.5)


def test_a_stalled_sender_bursting_clocks_does_not_swing_the_tempo():
    f = MidiClockFollower(tempo=120.0)
    t = _feed_clock(f, 160.0, 100)
    p = ns_per_tick(160.0)
    # the sender stalls for 4 clocks, then sends them in a burst, then is on time again
    burst_at = t[0] + int(104 * p)
    for k in range(100, 104):
        f.feed(mido.Message("clock"), burst_at + (k - 100) * 50_000)
    assert f.state().tempo == pytest.approx(160.0, rel=0.01)
    for k in range(104, 140):
        f.feed(mido.Message("clock"), t[0] + int(k * p))
    assert f.state().tempo == pytest.approx(160.0, rel=0.01)
    assert f.lost_ticks == 0
    assert f.state().tick_at(t[0] + int(139 * p)) == pytest.approx(139, abs=0.5)


def test_tempo_jump_is_not_read_as_lost_clocks():
    f = MidiClockFollower(tempo=120.0)
    t = _feed_clock(f, 120.0, 100, quantise=False)
    # the DAW halves its tempo abruptly: every gap is 2 clocks long, two in a row
    p = ns_per_tick(60.0)
    for i in range(1, 101):
        f.feed(mido.Message("clock"), t[99] + int(i * p))
    assert f.state().tempo == pytest.approx(60.0, rel=0.01)
    assert f.lost_ticks == 0
    assert f.state().tick_at(t[99] + int(100 * p)) == pytest.approx(199, abs=2)


def test_stop_continue_and_song_position():
    f = MidiClockFollower()
    events = []
    f.add_listener(lambda e, st: events.append((e, st.tick)))
    times = _feed_clock(f, 120.0, 50)
    f.feed(mido.Message("stop"), times[49] + 1000)
    assert not f.state().running and f.state().tick == 50
    f.feed(mido.Message("songpos", pos=32), times[49] + 2000)  # bar 3 (16ths)
    assert f.state().tick == 32 * 6
    f.feed(mido.Message("continue"), times[49] + 3000)
    f.feed(mido.Message("clock"), times[49] + 10**9)
    st = f.state()
    assert st.running and st.tick == 192 and st.t_ns == times[49] + 10**9
    assert [e for e, _ in events] == ["start", "stop", "position", "continue"]


def test_internal_clock_tempo_change_keeps_position():
    c = InternalClock(120.0)
    c.start(at_ns=time.perf_counter_ns() - 10**9)  # one second in: tick 48
    before = c.state().tick_at(time.perf_counter_ns())
    c.set_tempo(90.0)
    after = c.state().tick_at(time.perf_counter_ns())
    assert after == pytest.approx(before, abs=0.5)
    assert c.state().tempo == 90.0
    with pytest.raises(ValueError, match=r"20\.\.400"):
        c.set_tempo(1000)


# -- capture -------------------------------------------------------------------------------
def _running_clock(at_bar: float, tempo: float = 120.0) -> InternalClock:
    c = InternalClock(tempo)
    c.start(at_ns=time.perf_counter_ns() - int(at_bar * 96 * ns_per_tick(tempo)))
    return c


def _feed_notes(cap: Capture, clock: InternalClock, ch: int, notes, vel=90, jitter_ticks=1.4):
    st = clock.state()
    for i, n in enumerate(notes):
        j = jitter_ticks if i % 2 else -jitter_ticks
        cap.feed(mido.Message("note_on", channel=ch, note=n.pitch, velocity=vel),
                 st.ns_at(n.start * 6 + j))
        cap.feed(mido.Message("note_off", channel=ch, note=n.pitch), st.ns_at(n.end * 6 - j))


def test_capture_quantises_and_labels_voices():
    clock = _running_clock(at_bar=3.5)
    voices = voice_labels(CodecConfig(voices=("SOPRANO", "ALTO", "TENOR", "BASS")).labels,
                          ["SOPRANO", "ALTO", "TENOR", "BASS"])
    assert voices == ("SOPRANO", "ALTO", "TENOR", "BASS")
    cap = Capture(clock, CaptureConfig(ring_bars=8, voices=voices))
    sop = [Note(16, 72, 20), Note(20, 74, 32), Note(40, 76, 48)]
    bas = [Note(0, 48, 16), Note(16, 43, 48)]
    _feed_notes(cap, clock, 0, sop)
    _feed_notes(cap, clock, 3, bas, vel=60)
    p = cap.current_bars(2)  # bars 1 and 2 (bar 3 is playing)
    assert p.bars == 2 and p.meta["start_bar"] == 1
    assert [t.inst for t in p.tracks] == ["SOPRANO", "BASS"]
    assert list(p.tracks[0].notes) == [Note(0, 72, 4), Note(4, 74, 16), Note(24, 76, 32)]
    assert list(p.tracks[1].notes) == [Note(0, 43, 32)]
    assert p.tracks[1].velocity == 60
    assert cap.current_bars(8).bars == 3  # only 3 complete bars so far


def test_capture_never_places_a_note_before_the_last_clock():
    """After a burst of late clocks the fitted line can put the last clock's time later than
    it came; a note that arrives after clock k still belongs at k or later."""
    from bandmate.bridge.clock import ClockState

    class LineAhead:  # the follower's state after such a burst: anchored on clock 23
        def __init__(self) -> None:
            self.st = ClockState(True, 160.0, 23.0, 10**12, 1)

        def state(self) -> ClockState:
            return self.st

    clock = LineAhead()
    cap = Capture(clock, CaptureConfig())
    early = clock.st.t_ns - int(3 * ns_per_tick(160.0))  # the line says tick 20
    cap.feed(mido.Message("note_on", note=60, velocity=90), early)
    cap.feed(mido.Message("note_off", note=60), clock.st.t_ns + int(24 * ns_per_tick(160.0)))
    piece = cap.bars(0, 1, now_step=16)
    assert [n.start for t in piece.tracks for n in t.notes] == [4]  # tick 23 -> step 4, not 3


def test_capture_gm_programs_drums_and_explicit_map():
    clock = _running_clock(at_bar=2.2)
    cap = Capture(clock, CaptureConfig(channel_labels={5: "BASS"}))
    cap.feed(mido.Message("program_change", channel=1, program=33), 0)
    for ch in (0, 1, 9, 5):
        _feed_notes(cap, clock, ch, [Note(20, 40, 24)], jitter_ticks=0)
    labels = {t.channel: t.inst for t in cap.current_bars(1).tracks}
    assert labels == {0: "0", 1: "33", 9: "DRUMS", 5: "BASS"}


def test_capture_ring_forgets_old_bars_and_cuts_held_notes():
    clock = _running_clock(at_bar=20.5)
    cap = Capture(clock, CaptureConfig(ring_bars=4))
    _feed_notes(cap, clock, 0, [Note(16, 60, 18), Note(19 * 16, 62, 19 * 16 + 2)])
    st = clock.state()
    cap.feed(mido.Message("note_on", channel=0, note=64, velocity=80), st.ns_at(19 * 96 + 48))
    assert sum(len(v) for v in cap._notes.values()) == 1  # bar 1's note is gone
    p = cap.current_bars(1)
    assert list(p.tracks[0].notes) == [Note(0, 62, 2), Note(8, 64, 16)]  # held: cut at bar end


# -- scheduler -----------------------------------------------------------------------------
class Sink:
    def __init__(self, clock):
        self.clock = clock
        self.got: list[tuple[mido.Message, float]] = []

    def __call__(self, msg):
        self.got.append((msg, self.clock.state().tick_at(time.perf_counter_ns())))


def test_scheduler_order_retrigger_and_pairing():
    clock = _running_clock(at_bar=0.0)
    sink = Sink(clock)
    s = Scheduler(sink, clock, SchedulerConfig())
    s.start()
    base = 24  # one beat from now
    s.add_notes([Note(0, 60, 4), Note(2, 60, 3), Note(2, 64, 3)], 1, 90, origin_step=base // 6)
    assert wait_until(lambda: s.pending == 0, 5)
    s.close()
    kinds = [(m.type, m.note) for m, _ in sink.got if m.type.startswith("note")]
    # 60 struck at 0, re-struck at 2 (old one ended first), both pairs close once
    assert kinds == [("note_on", 60), ("note_off", 60), ("note_on", 60), ("note_on", 64),
                     ("note_off", 60), ("note_off", 64)]
    for m, tick in sink.got:
        if m.type == "note_on" and m.note == 64:
            assert tick == pytest.approx(base + 12, abs=2)  # within a third of a step
    assert s.stats.retriggered == 1


@pytest.mark.parametrize("policy", ["drop", "play"])
def test_scheduler_late_policy(policy):
    clock = _running_clock(at_bar=2.0)
    sink = Sink(clock)
    s = Scheduler(sink, clock, SchedulerConfig(late_policy=policy, late_ms=10))
    s.add_note(0, 300, 0, 60, 80)  # due 2 bars ago, ends 1 bar from now... well past 10 ms
    s.start()
    assert wait_until(lambda: s.stats.late_dropped + s.stats.late_played == 1, 5)
    s.stop_output()
    s.close()
    ons = [m for m, _ in sink.got if m.type == "note_on"]
    offs = [m for m, _ in sink.got if m.type == "note_off"]
    assert len(ons) == (1 if policy == "play" else 0) and len(offs) == len(ons)


def test_scheduler_tempo_change_moves_pending_notes():
    clock = _running_clock(at_bar=0.0, tempo=120.0)
    sink = Sink(clock)
    s = Scheduler(sink, clock)
    s.start()
    s.add_note(60, 66, 0, 70, 80)
    clock.set_tempo(200.0)
    assert wait_until(lambda: s.stats.notes_off == 1, 5)
    s.close()
    on_tick = next(t for m, t in sink.got if m.type == "note_on")
    assert on_tick == pytest.approx(60, abs=2)


def test_stop_output_ends_sounding_notes_and_clears_pending():
    clock = _running_clock(at_bar=0.0)
    sink = Sink(clock)
    s = Scheduler(sink, clock)
    s.start()
    s.add_note(1, 10_000, 2, 50, 80)
    s.add_note(1, 10_000, 2, 55, 80)
    s.add_note(5_000, 6_000, 2, 57, 80)
    assert wait_until(lambda: len(s.sounding()) == 2, 5)
    assert s.stop_output("test") == 2
    assert s.pending == 0 and not s.sounding()
    s.close()
    offs = {m.note for m, _ in sink.got if m.type == "note_off"}
    ccs = {(m.channel, m.control) for m, _ in sink.got if m.type == "control_change"}
    assert offs == {50, 55} and ccs == {(2, 123), (2, 64)}


def test_transport_stop_silences():
    f = MidiClockFollower()
    sink = Sink(f)
    s = Scheduler(sink, f)
    _feed_clock(f, 120.0, 5, t0=time.perf_counter_ns(), quantise=False)
    s._sounding[(0, 60)] = 99  # as if a note were playing
    f.feed(mido.Message("stop"), time.perf_counter_ns())
    assert sink.got[0][0] == mido.Message("note_off", channel=0, note=60, velocity=0)
    assert {m.control for m, _ in sink.got[1:]} == {123, 64}


def test_configs_validate_and_round_trip():
    c = BridgeConfig(api="jack", channel_labels={0: "SOPRANO"}, velocity=100)
    assert BridgeConfig.from_json(c.to_json()) == c
    for bad, match in [({"api": "oss"}, "api must be one of"),
                       ({"clock": "x"}, "clock must be one of"),
                       ({"late_policy": "skip"}, "late_policy must be one of"),
                       ({"channel_labels": {16: "X"}}, "channels 0..15")]:
        with pytest.raises(ValueError, match=match):
            BridgeConfig(**bad)
    sc = SchedulerConfig(late_policy="play", late_ms=5)
    assert SchedulerConfig.from_json(sc.to_json()) == sc
    cc = CaptureConfig(ring_bars=4, channel_labels={1: "BASS"}, voices=("A",))
    assert CaptureConfig.from_json(cc.to_json()) == cc


def test_exception_in_scheduler_thread_silences_output():
    clock = _running_clock(at_bar=0.0)
    got: list[mido.Message] = []

    def send(msg):
        if msg.type == "note_on" and msg.note == 99:
            raise RuntimeError("boom")
        got.append(msg)

    s = Scheduler(send, clock)
    s.add_note(1, 10_000, 0, 60, 80)
    s.add_note(3, 10_000, 0, 64, 80)
    s.add_note(6, 10_000, 0, 99, 80)
    s.start()
    assert wait_until(lambda: s.stats.stops == 1, 5)
    offs = {m.note for m in got if m.type == "note_off"}
    assert offs == {60, 64, 99}  # 99 may have reached the port before the error: end it too
    assert s.pending == 0
    # and it keeps serving
    now_tick = clock.state().tick_at(time.perf_counter_ns())
    s.add_note(now_tick + 3, now_tick + 6, 0, 70, 80)
    assert wait_until(lambda: any(m.type == "note_off" and m.note == 70 for m in got), 5)
    s.close()


def test_auto_clock_switches_to_the_daw_clock():
    c = AutoClock(tempo=100.0)
    c.internal.start()
    events = []
    c.add_listener(lambda e, st: events.append(e))
    assert c.state().running and c.state().tempo == 100.0 and not c.following
    _feed_clock(c.follower, 140.0, 40, t0=time.perf_counter_ns(), quantise=False)
    assert c.following and c.state().tempo == pytest.approx(140.0, rel=0.01)
    assert events == ["start"]
