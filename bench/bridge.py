"""Benchmark of the MIDI bridge on a private JACK server (dummy backend, 48 kHz, 120 BPM).

    python bench/bridge.py [--period 256] [--notes 2048] [--flood-rate 5000] [--flood-s 10]

Phases, all through real JACK MIDI ports between bandmate's Bridge and a stand-in DAW
(bandmate.bridge.dawsim) that sends MIDI clock:
1. scheduled output of >= 2,000 notes (16 per 16th step on 4 channels) plus a thru path (a note
   every 50 ms echoed by the bridge), while another process keeps one CPU core busy;
2. an input flood (note on/off, each message unique) for ``--flood-s`` seconds.
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

import mido
from bandmate.bridge.clock import TICKS_PER_STEP
from bandmate.bridge.dawsim import DawSim, pair_notes
from bandmate.bridge.facade import Bridge, BridgeConfig, wait_until
from bandmate.bridge.jackserver import JackServer
from bandmate.models.types import Note

TEMPO = 120.0
CHANNELS = (0, 1, 2, 3)
THRU_CH = 15


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--period", type=int, default=256, help="JACK period in frames")
    ap.add_argument("--notes", type=int, default=2048, help="scheduled notes (>= 2000)")
    ap.add_argument("--flood-rate", type=int, default=5000, help="flood messages per second")
    ap.add_argument("--flood-s", type=float, default=10.0, help="flood duration")
    ap.add_argument("--no-load", action="store_true", help="skip the CPU-loading process")
    ap.add_argument("--out", default=None, help="also write the JSON here")
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
        br.close()
        time.sleep(0.3)
        xruns = srv.xruns
        xr_times = srv.xrun_times

        # -- analysis -----------------------------------------------------------------------
        got = daw.messages()
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
        for ch, p, t in sent_on:
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
            [1 for ch, _, _ in sent_on if ch in CHANNELS])
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
            "late_played": br.scheduler.stats.late_played,
            "max_late_ms": round(br.scheduler.stats.max_late_ms, 3),
            "clock_lost_ticks": getattr(br.clock, "lost_ticks", None),
            "thru_latency_median_ms": round(thru_med, 3),
            "thru_jitter_p99_ms": round(pct(thru_jit, 99), 3),
            "flood_msgs_in": len(flood),
            "flood_msgs_captured": len(flood_got_set),
            "flood_lost_by_bandmate": len(flood_missing) - flood_jack,
            "target_jitter_p99_ms": round(srv.period_ms + 0.5, 3),
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
