"""The live engine without ports or Qt: a MIDI clock follower fed a scripted DAW session
(clocks, Start, Song Position, notes at exact ticks, ending "now"), the real capture and
scheduler (a list as the port), and fake generators, some held at a gate to act mid-job."""

from __future__ import annotations

import logging
import threading
import time

import mido
import pytest
from bandmate.bridge.bridge import wait_until
from bandmate.bridge.capture import Capture, CaptureConfig
from bandmate.bridge.clock import ns_per_tick
from bandmate.bridge.follower import MidiClockFollower
from bandmate.bridge.live import LiveConfig, LiveEngine, trigger_bar
from bandmate.bridge.scheduler import Scheduler
from bandmate.models.generate import BarDone, Done, NoteEvent
from bandmate.models.types import Note

VOICES = ("SOPRANO", "ALTO", "TENOR", "BASS")
TEMPO = 120.0


class FakeGen:
    labels = (*VOICES, "DRUMS")

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate
        self.calls: list[tuple] = []
        self.started = threading.Event()

    def _wait(self, cancel):
        self.started.set()
        if self.gate is not None:
            while not self.gate.wait(0.01):
                pass

    def continue_stream(self, piece, bars, cancel):
        self.calls.append(("continue", piece, bars))
        self._wait(cancel)
        p0 = piece.bars * 16
        for b in range(bars):
            for tr in range(len(piece.tracks)):
                yield NoteEvent(tr, Note(p0 + b * 16, 60 + tr, p0 + b * 16 + 4))
            yield BarDone(piece.bars + b)
        yield Done(piece, {"sampled_tokens": 9})

    def add_stream(self, piece, label, cancel):
        self.calls.append(("add", piece, label))
        self._wait(cancel)
        for b in range(piece.bars):
            yield NoteEvent(len(piece.tracks), Note(b * 16, 36, b * 16 + 2))
            yield BarDone(b)
        yield Done(piece, {"sampled_tokens": 5})


class Session:
    """A scripted DAW session on a virtual clock-tick timeline that ends now."""

    def __init__(self):
        self.f = MidiClockFollower(TEMPO)
        self.cap = Capture(self.f, CaptureConfig(voices=VOICES))
        self.sent: list[mido.Message] = []
        self.sched = Scheduler(self.sent.append, self.f)
        self.p = ns_per_tick(TEMPO)
        self.script: list[tuple[float, mido.Message]] = []
        self.vt = 0.0  # virtual time, in clock periods

    def start(self, spp: int | None = None):
        if spp is None:
            self.script.append((self.vt, mido.Message("start")))
        else:
            self.script.append((self.vt, mido.Message("songpos", pos=spp)))
        return self

    def clocks(self, n: int, notes: dict[int, list[mido.Message]] | None = None):
        """``n`` clocks; ``notes[i]`` right after the i-th of them."""
        for i in range(n):
            self.script.append((self.vt, mido.Message("clock")))
            for m in (notes or {}).get(i, ()):
                self.script.append((self.vt + 0.01, m))
            self.vt += 1
        return self

    def play(self, now_offset: float = 0.0) -> int:
        """Feed everything so that the last clock came ``1 - now_offset`` periods ago;
        returns "now"."""
        now = time.perf_counter_ns()
        end = self.vt - now_offset
        for vt, m in self.script:
            t = now - int((end - vt) * self.p)
            (self.f.feed(m, t) or self.cap.feed(m, t))
        self.script.clear()
        return now


def chorale(bars: int, channels=(0, 3), base=60) -> dict[int, list[mido.Message]]:
    """One half-note chord a half bar on each channel, pitch = base + bar (+12 per channel)."""
    out: dict[int, list[mido.Message]] = {}
    for b in range(bars):
        for half in (0, 48):
            for ch in channels:
                p = base + b + 12 * ch
                out.setdefault(b * 96 + half, []).append(
                    mido.Message("note_on", channel=ch, note=p, velocity=70 + ch))
                out.setdefault(b * 96 + half + 47, []).append(
                    mido.Message("note_off", channel=ch, note=p))
    return out


def engine(s: Session, gen, **cfg) -> LiveEngine:
    return LiveEngine(s.f, s.cap, s.sched, gen, LiveConfig(**{"bars": 2, **cfg}))


def test_trigger_on_the_downbeat_belongs_to_that_bar():
    """A trigger placed a hair before bar 5's line (the line is fitted) is bar 5's: 4 bars
    of prompt, output from bar 6; 1/8 beat is the tolerance, a 16th before is the bar before."""
    s = Session().start().clocks(4 * 96 + 1, chorale(4))
    now = s.play()
    st = s.f.state()
    line = st.ns_at(4 * 96)
    assert trigger_bar(st, line - int(2.9 * s.p)) == 4
    assert trigger_bar(st, line - int(6 * s.p)) == 3
    gen = FakeGen()
    eng = engine(s, gen, bars=4)
    job = eng.trigger("continue", line - int(s.p))
    eng.run_queued()
    assert job.prompt.bars == 4 and job.prompt.meta["start_bar"] == 0
    assert job.target_bar == 5 and job.anchor_bar == 5
    assert now > line


def test_stop_before_the_first_note_leaves_nothing_scheduled():
    s = Session().start().clocks(2 * 96 + 30, chorale(2))
    s.play()
    gate = threading.Event()
    gen = FakeGen(gate)
    eng = engine(s, gen)
    eng.start()
    job = eng.trigger("continue")
    assert gen.started.wait(5)
    eng.stop()  # the job is still generating: no note of it was placed yet
    gate.set()
    eng.shutdown()
    assert job.state == "cancelled" and job.result.get("cancelled")
    assert s.sched.pending == 0 and job.scheduled == 0
    # a late add with its id is refused where notes enter the scheduler
    assert s.sched.add_note(10_000, 10_006, 0, 60, 80, job=job.id) == 0
    assert s.sched.stats.refused == 1 and s.sched.pending == 0


def test_panic_mid_job_removes_its_notes_and_silences_all_channels():
    s = Session().start().clocks(2 * 96 + 30, chorale(2))
    s.play()
    gen = FakeGen()
    eng = engine(s, gen)
    job = eng.trigger("continue")
    eng.run_queued()
    assert job.scheduled == 4 and s.sched.pending == 8
    s.sent.clear()
    eng.panic()
    assert s.sched.pending == 0 and job.state == "done"
    assert {(m.channel, m.control) for m in s.sent} >= {(c, 123) for c in range(16)}


def test_a_new_trigger_replaces_the_old_jobs_notes_from_the_next_bar_line(caplog):
    s = Session().start().clocks(2 * 96 + 30, chorale(2))
    s.play()
    gen = FakeGen()
    eng = engine(s, gen)
    first = eng.trigger("continue")
    eng.run_queued()
    assert first.anchor_bar == 3  # bars 4-5 (index 3, 4)
    assert [p[0] for p in s.sched.pending_notes()] == [3 * 96] * 2 + [4 * 96] * 2
    # more clocks: now in bar index 3; the second trigger takes over at bar index 4
    s.clocks(96)
    s.play()
    with caplog.at_level(logging.INFO):
        second = eng.trigger("add", label="TENOR")
        eng.run_queued()
    pend = s.sched.pending_notes()
    firsts = [p for p in pend if p[3] in (60, 61)]
    assert [p[0] for p in firsts] == [3 * 96] * 2  # bar 4's notes stay, bar 5's are gone
    assert all(p[1] <= 4 * 96 for p in firsts)
    assert second.anchor_bar == 4 and {p[3] for p in pend if p[0] >= 4 * 96} == {36}
    assert any(f"add #{second.id} replaces continue #{first.id}" in r.message
               for r in caplog.records)
    assert first.total == 2 and second.total == 2  # counts are per job


def test_counts_in_the_log_belong_to_one_job(caplog):
    s = Session().start().clocks(2 * 96 + 30, chorale(2))
    s.play()
    eng = engine(s, FakeGen())
    a = eng.trigger("continue")
    eng.run_queued()
    b = eng.trigger("continue")
    eng.run_queued()
    with caplog.at_level(logging.INFO):
        for j in (a, b):  # what the scheduler thread reports as it sends
            for _ in range(j.total or 0):
                eng._on_job_sent(j.id, mido.Message("note_on"), 0, 0)
    msgs = [r.message for r in caplog.records]
    assert f"continue #{b.id}: first note out (0.0 ms after its time)" in msgs
    assert f"continue #{b.id}: all 4 note(s) sent" in msgs
    assert a.total == 0  # same bar: b replaced all of a, which sent nothing


def test_start_and_song_position_begin_a_new_take_and_a_loop_uses_the_bars_just_played():
    s = Session().start().clocks(4 * 96 + 10, chorale(4, base=40))
    s.start(spp=0)  # the DAW loops back to bar 1 (Song Position while running)
    s.clocks(3)
    now = s.play()
    eng = engine(s, FakeGen(), bars=4)
    job = eng.trigger("continue", now)
    eng.run_queued()
    p = job.prompt
    assert p.meta.get("take") == "previous" and p.bars == 4
    assert [n.pitch for n in p.tracks[0].notes][:2] == [40, 40]  # the take before, whole
    # the new take plays 2 bars of other notes: a trigger in bar 3 gets only them
    s.clocks(2 * 96 + 20, {i - 3: m for i, m in chorale(2, base=80).items() if i >= 3})
    now = s.play()
    job = eng.trigger("continue", now)
    eng.run_queued()
    p = job.prompt
    assert p.bars == 2 and p.meta["start_bar"] == 0 and "take" not in p.meta
    assert {n.pitch for t in p.tracks for n in t.notes} <= set(range(80, 82)) | set(
        range(116, 118))
    # Start again: the old bars are gone, never stacked with the new ones
    s.start().clocks(96 + 10, chorale(1, base=50))
    now = s.play()
    p, _ = eng.prompt_at(now, 4)
    assert p.bars == 1 and {n.pitch for n in p.tracks[0].notes} == {50}


def test_a_flood_on_a_channel_without_a_voice_is_not_captured():
    flood = {i: [mido.Message("note_on", channel=15, note=30 + i % 50, velocity=90),
                 mido.Message("note_off", channel=15, note=30 + i % 50)] for i in range(150)}
    s = Session().start().clocks(2 * 96 + 10, flood)
    now = s.play()
    p, _ = prompt_now(s, now)
    assert p.tracks == () and s.cap.ignored_channel == 150


def prompt_now(s, now):
    return engine(s, FakeGen()).prompt_at(now, 2)


@pytest.mark.parametrize("event", ["stop", "start", "lost"])
def test_transport_events_end_the_running_job(event):
    s = Session().start().clocks(2 * 96 + 30, chorale(2))
    s.play()
    gate = threading.Event()
    gen = FakeGen(gate)
    eng = engine(s, gen)
    seen = []
    eng.add_listener(lambda ev: seen.append(ev.kind))
    eng.start()
    job = eng.trigger("continue")
    assert gen.started.wait(5)
    if event == "lost":
        assert s.f.check(time.perf_counter_ns() + 10**9)
    else:
        s.f.feed(mido.Message(event), time.perf_counter_ns())
        if event == "start":
            s.f.feed(mido.Message("clock"), time.perf_counter_ns())
    gate.set()
    eng.shutdown()
    assert job.state == "cancelled" and s.sched.pending == 0 and job.scheduled == 0
    assert "cancelled" in seen and (event != "lost" or "clock_lost" in seen)


def test_a_job_note_dropped_as_late_still_completes_the_jobs_count(caplog):
    s = Session().start().clocks(2 * 96 + 30, chorale(2))
    s.play()
    eng = engine(s, FakeGen())
    job = eng.trigger("continue")
    eng.run_queued()
    s.sched.config.late_ms = 0.0
    s.sched.add_note(0, 6, 2, 90, 80, job=job.id)  # long past: dropped as late
    job.total += 1
    with caplog.at_level(logging.INFO):
        s.sched.start()
        assert wait_until(lambda: job.dropped == 1, 5)
        for _ in range(4):
            eng._on_job_sent(job.id, mido.Message("note_on"), 0, 0)
        s.sched.close()
    assert f"continue #{job.id}: all 5 note(s) sent (1 of them dropped as late)" in [
        r.message for r in caplog.records]
