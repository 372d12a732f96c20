"""Benchmark of the MIDI bridge on a private JACK server (dummy backend, 48 kHz, 120 BPM).

    python bench/bridge.py [--period 256] [--notes 2048] [--flood-rate 5000] [--flood-s 10]

Phases, all through real JACK MIDI ports between bandmate's Bridge and a stand-in DAW
(tests/support/dawsim.py) that sends MIDI clock:
1. scheduled output of >= 2,000 notes (16 per 16th step on 4 channels) plus a thru path (a note
   every 50 ms echoed by the bridge), while another process keeps one CPU core busy;
2. an input flood (note on/off, each message unique) for ``--flood-s`` seconds;
3. a tempo-change run: the DAW starts again and steps its tempo both ways (120 -> 90 -> 126
   -> 120, a ramp 120 -> 80, then 80 -> 120) and drops a burst of clocks, while the
   scheduler plays a note on every 16th step; ``tempo_run`` in the JSON: on-grid ratio (note-ons
   within a quarter step of their step on the DAW's own clock), jitter as above, clocks
   dropped vs counted lost, tempo changes the follower recognised.
Jitter: each note-on's arrival at the DAW minus the time the DAW sent the clock of its step,
minus the median of that (the constant latency); figures in ms. Messages that did not arrive
are split into ``jack_dropped`` (an xrun was reported within a few periods of the send: JACK
discards the MIDI of a cycle it drops) and ``lost_notes`` (bandmate's fault). The baseline in
the same run is the thru path (input echoed straight to output: the port latency alone).
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import mido
from bandmate.bridge.bridge import Bridge, BridgeConfig, wait_until
from bandmate.bridge.clock import TICKS_PER_STEP
from bandmate.models.types import Note

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support
from support.dawsim import DawSim, pair_notes
from support.jackserver import JackServer

TEMPO = 120.0
CHANNELS = (0, 1, 2, 3)
THRU_CH = 15
#: the tempo run: clock index -> BPM from there on (steps both ways, then a ramp, a step up)
TEMPO_BARS = 14
TEMPO_MAP = {2 * 96: 90.0, 4 * 96: 126.0, 6 * 96: 120.0,
             **{8 * 96 + i * 8: 120.0 - 40.0 * i / 24 for i in range(1, 25)}, 11 * 96: 120.0}
TEMPO_SKIP = {7 * 96 + 5, 7 * 96 + 12, 7 * 96 + 19, 7 * 96 + 50}


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[i]


def near_xrun(t_ns: int, xruns: list[int], period_ns: float) -> bool:
    lo, hi = t_ns - 3 * period_ns - 5e6, t_ns + 3 * period_ns + 20e6
    return any(lo <= x <= hi for x in xruns)


def flood_messages(n: int) -> list[mido.Message]:
    """n unique note on/off messages on channels 4-13 (seq in channel, note, velocity)."""
    out = []
    for i in range(n):
        k = i // 2
        ch = 4 + (k // (128 * 127)) % 10
        note = (k // 127) % 128
        vel = 1 + k % 127
        out.append(mido.Message("note_on" if i % 2 == 0 else "note_off", channel=ch, note=note,
                                velocity=vel))
    return out


def tempo_run(br: Bridge, daw: DawSim) -> dict:
    """Phase 3: a note on every 16th step while the DAW changes tempo and drops clocks."""
    daw.clear()
    daw.tick_times.clear()
    clk = getattr(br.clock, "follower", br.clock)
    lost0, changes0 = getattr(clk, "lost_ticks", 0), getattr(clk, "tempo_changes", 0)
    daw.play(TEMPO, ticks=TEMPO_BARS * 96, tempo_changes=TEMPO_MAP, skip=TEMPO_SKIP)
    if not wait_until(lambda: br.clock.state().running and 0 in daw.tick_times, 10):
        raise RuntimeError("the bridge never saw the DAW's clock (tempo run)")
    plan = {s: 36 + s % 48 for s in range(16, (TEMPO_BARS - 1) * 16)}  # step -> pitch
    for step, pitch in plan.items():
        br.scheduler.add_note(step * TICKS_PER_STEP, step * TICKS_PER_STEP + 3, 0, pitch, 90)
    daw.wait(120)
    wait_until(lambda: br.scheduler.pending == 0, 5)
    time.sleep(0.2)
    heard = [r for r in daw.messages(["note_on"]) if r.msg.velocity > 0 and r.msg.channel == 0]
    by_pitch: dict[int, list[int]] = {}
    for s, p in plan.items():
        by_pitch.setdefault(p, []).append(s)
    errs, on_grid = [], 0
    for r in heard:
        at = daw.step_of(r.t_ns)
        step = min(by_pitch.get(r.msg.note, [-99]), key=lambda s: abs(s - at))
        on_grid += abs(at - step) <= 0.25
        t_exp = daw.tick_times.get(step * TICKS_PER_STEP)
        if t_exp is not None:
            errs.append((r.t_ns - t_exp) / 1e6)
    med = statistics.median(errs) if errs else float("nan")
    jit = [abs(e - med) for e in errs]
    daw.stop_transport()
    return {
        "tempo_map": "120 -> 90 -> 126 -> 120, ramp 120 -> 80, 80 -> 120",
        "notes_planned": len(plan),
        "notes_received": len(heard),
        "on_grid_ratio": round(on_grid / len(plan), 4),
        "jitter_p50_ms": round(pct(jit, 50), 3),
        "jitter_p99_ms": round(pct(jit, 99), 3),
        "jitter_max_ms": round(max(jit), 3) if jit else None,
        "latency_median_ms": round(med, 3),
        "clocks_dropped": len(TEMPO_SKIP),
        "clocks_counted_lost": getattr(clk, "lost_ticks", 0) - lost0,
        "tempo_changes_seen": getattr(clk, "tempo_changes", 0) - changes0,
        "final_tempo": round(br.clock.state().tempo, 2),
        "late_played": br.scheduler.stats.late_played,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--period", type=int, default=256, help="JACK period in frames")
    ap.add_argument("--notes", type=int, default=2048, help="scheduled notes (>= 2000)")
    ap.add_argument("--flood-rate", type=int, default=5000, help="flood messages per second")
    ap.add_argument("--flood-s", type=float, default=10.0, help="flood duration")
    ap.add_argument("--no-load", action="store_true", help="skip the CPU-loading process")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--no-tempo", action="store_true", help="skip the tempo-change run")
    args = ap.parse_args(argv)

    srv = JackServer(f"bm-bench-{os.getpid()}", period=args.period).start()
    load = None
    try:
        period_ns = srv.period_ms * 1e6
        cfg = BridgeConfig(api="jack", in_name="bandmate in", out_name="bandmate out",
                           clock="midi", thru=True, late_policy="play", late_ms=1000.0,
                           watch_s=1.0)
        br = Bridge(cfg).open()
        daw = DawSim(cfg.in_name, cfg.out_name)
        sent_on: list[tuple[int, int, int]] = []  # (channel, pitch, sent_ns) from the scheduler
        br.scheduler.on_sent.append(
            lambda m, tgt, sent: sent_on.append((m.channel, m.note, sent))
            if m.type == "note_on" else None)
        flood_keys: set[tuple] = set()
        flood_got: list[tuple] = []

        def on_in(msg: mido.Message, t_ns: int) -> None:
            if msg.type in ("note_on", "note_off") and 4 <= msg.channel <= 13:
                flood_got.append((msg.type, msg.channel, msg.note, msg.velocity))

        br.add_message_listener(on_in)
        if not args.no_load:
            load = subprocess.Popen([sys.executable, "-c", "while True: pass"])

        # -- phase 1: scheduled output + thru -------------------------------------------------
        per_step = 16
        steps = -(-args.notes // per_step)
        bars = -(-steps // 16)
        total_ticks = (2 + bars + 1) * 96
        daw.play(TEMPO, ticks=total_ticks + int(args.flood_s * 48) + 200)
        if not wait_until(lambda: br.clock.state().running, 10):
            raise RuntimeError("the bridge never saw the DAW's clock")
        start_bar = 2
        for ch in CHANNELS:
            pitches = [40 + 10 * ch + j for j in range(per_step // len(CHANNELS))]
            notes = [Note(s, p, s + 1) for s in range(steps) for p in pitches]
            br.scheduler.add_notes(notes, ch, 90, origin_step=start_bar * 16)
        thru_sent: list[int] = []
        stop_thru = threading.Event()

        def thru_pinger() -> None:
            i = 0
            while not stop_thru.is_set():
                p = 20 + i % 60
                thru_sent.append(time.perf_counter_ns())
                daw.send(mido.Message("note_on", channel=THRU_CH, note=p, velocity=64))
                time.sleep(0.025)
                daw.send(mido.Message("note_off", channel=THRU_CH, note=p))
                time.sleep(0.025)
                i += 1

        th = threading.Thread(target=thru_pinger, daemon=True)
        th.start()
        end_tick = (start_bar * 16 + steps + 2) * TICKS_PER_STEP
        wait_until(lambda: max(daw.tick_times, default=0) >= end_tick, 120, 0.05)
        stop_thru.set()
        th.join()
        wait_until(lambda: br.scheduler.pending == 0, 5)
        time.sleep(0.2)
        xr_phase1 = srv.xruns

        # -- phase 2: input flood -----------------------------------------------------------
        cfg.thru = False
        flood = flood_messages(int(args.flood_rate * args.flood_s))
        flood_keys = {(m.type, m.channel, m.note, m.velocity) for m in flood}
        flood_sent_ns: list[int] = []
        t0 = time.perf_counter_ns()
        per_ms = args.flood_rate / 1000.0
        for i, m in enumerate(flood):
            target = t0 + int(i / per_ms * 1e6)
            while time.perf_counter_ns() < target:
                time.sleep(0.0002)
            daw.send(m)
            flood_sent_ns.append(time.perf_counter_ns())
        time.sleep(0.5)
        daw.stop_transport()
        time.sleep(0.5)
        xruns = srv.xruns
        xr_times = srv.xrun_times
        got = daw.messages()
        steady_ticks = dict(daw.tick_times)
        late_played = br.scheduler.stats.late_played
        max_late = br.scheduler.stats.max_late_ms
        lost_ticks = getattr(br.clock, "lost_ticks", None)

        steady_sent = list(sent_on)  # phase 3's notes are counted on their own

        # -- phase 3: tempo changes -----------------------------------------------------------
        tempo = tempo_run(br, daw) if not args.no_tempo else None
        tempo_xruns = srv.xruns - xruns
        br.close()
        time.sleep(0.3)
        daw.tick_times = steady_ticks

        # -- analysis -----------------------------------------------------------------------
        sched = [r for r in got if r.msg.type == "note_on" and r.msg.velocity > 0
                 and r.msg.channel in CHANNELS]
        errs = []
        for r in sched:
            step = round(daw.step_of(r.t_ns))
            t_exp = daw.tick_times.get(step * TICKS_PER_STEP)
            if t_exp is not None:
                errs.append((r.t_ns - t_exp) / 1e6)
        med = statistics.median(errs) if errs else float("nan")
        jit = [abs(e - med) for e in errs]
        # which scheduled note-ons went missing, and why
        recv_keys: dict[tuple[int, int], int] = {}
        for r in sched:
            recv_keys[(r.msg.channel, r.msg.note)] = recv_keys.get((r.msg.channel, r.msg.note),
                                                                   0) + 1
        sent_count: dict[tuple[int, int], list[int]] = {}
        for ch, p, t in steady_sent:
            if ch in CHANNELS:
                sent_count.setdefault((ch, p), []).append(t)
        jack_dropped = lost = 0
        for key, times in sent_count.items():
            missing = len(times) - recv_keys.get(key, 0)
            for t in times[len(times) - max(missing, 0):]:
                if near_xrun(t, xr_times, period_ns):
                    jack_dropped += 1
                else:
                    lost += 1
        never_sent = args.notes // per_step * per_step - len(
            [1 for ch, _, _ in steady_sent if ch in CHANNELS])
        lost += max(never_sent, 0)
        notes_out = [r for r in got if r.msg.channel in CHANNELS]
        _, hanging = pair_notes(notes_out)
        thru_in = [r for r in got if r.msg.channel == THRU_CH and r.msg.type == "note_on"
                   and r.msg.velocity > 0]
        thru_lat = [(r.t_ns - s) / 1e6 for r, s in zip(thru_in, thru_sent, strict=False)]
        thru_med = statistics.median(thru_lat) if thru_lat else float("nan")
        thru_jit = [abs(x - thru_med) for x in thru_lat]
        flood_got_set = set(flood_got) & flood_keys
        flood_missing = [i for i, m in enumerate(flood)
                         if (m.type, m.channel, m.note, m.velocity) not in flood_got_set]
        flood_jack = sum(1 for i in flood_missing if near_xrun(flood_sent_ns[i], xr_times,
                                                               period_ns))
        res = {
            "period_frames": args.period,
            "period_ms": round(srv.period_ms, 3),
            "tempo": TEMPO,
            "load_process": not args.no_load,
            "xruns": xruns,
            "xruns_phase1": xr_phase1,
            "notes_scheduled": args.notes // per_step * per_step,
            "notes_received": len(sched),
            "jitter_p50_ms": round(pct(jit, 50), 3),
            "jitter_p99_ms": round(pct(jit, 99), 3),
            "jitter_max_ms": round(max(jit), 3) if jit else None,
            "latency_median_ms": round(med, 3),
            "lost_notes": lost,
            "jack_dropped": jack_dropped + flood_jack,
            "jack_dropped_notes": jack_dropped,
            "jack_dropped_flood": flood_jack,
            "hanging_notes": len(hanging),
            "late_played": late_played,
            "max_late_ms": round(max_late, 3),
            "clock_lost_ticks": lost_ticks,
            "thru_latency_median_ms": round(thru_med, 3),
            "thru_jitter_p99_ms": round(pct(thru_jit, 99), 3),
            "flood_msgs_in": len(flood),
            "flood_msgs_captured": len(flood_got_set),
            "flood_lost_by_bandmate": len(flood_missing) - flood_jack,
            "target_jitter_p99_ms": round(srv.period_ms + 0.5, 3),
            "tempo_run": tempo,
            "tempo_xruns": tempo_xruns,
        }
        daw.close()
    finally:
        if load is not None:
            load.terminate()
            load.wait(5)
        srv.stop()
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=1)
            fh.write("\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
