"""A stand-in DAW on real MIDI ports, for integration tests and the benchmark.

Why: the bridge's promises (capture on the grid, notes out on the right bar and step, no
hanging notes) can only be checked from the outside, the way a DAW sees them. ``DawSim``
connects its own ports to "bandmate in" / "bandmate out", sends MIDI clock at a tempo on
absolute ``perf_counter_ns`` targets (recording when each clock was sent), sends notes on
given ticks, and records everything that comes back with its arrival time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import mido
import rtmidi
from bandmate.bridge.clock import PPQN, TICKS_PER_STEP
from bandmate.bridge.ports import InputPort, OutputPort


@dataclass(frozen=True)
class Received:
    msg: mido.Message
    t_ns: int


class DawSim:
    """Connects to bandmate's ports (by name) on ``api`` (default JACK)."""

    def __init__(
        self,
        bandmate_in: str = "bandmate in",
        bandmate_out: str = "bandmate out",
        api: int = rtmidi.API_UNIX_JACK,
        name: str = "fake daw",
    ) -> None:
        self.out = OutputPort(api, f"{name} out", connect=bandmate_in)
        self.received: list[Received] = []
        self._rlock = threading.Lock()
        self.inp = InputPort(api, f"{name} in", self._on_msg, connect=bandmate_out)
        self.inp.start()
        self.tick_times: dict[int, int] = {}  # tick index -> perf_counter_ns when sent
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.tempo = 120.0

    def _on_msg(self, msg: mido.Message, t_ns: int) -> None:
        with self._rlock:
            self.received.append(Received(msg, t_ns))

    def messages(self, types: Iterable[str] | None = None) -> list[Received]:
        with self._rlock:
            got = list(self.received)
        if types is None:
            return got
        ts = set(types)
        return [r for r in got if r.msg.type in ts]

    def clear(self) -> None:
        with self._rlock:
            self.received.clear()

    def send(self, msg: mido.Message) -> None:
        self.out.send(msg)

    # -- transport ---------------------------------------------------------------------------
    def play(
        self,
        tempo: float,
        ticks: int,
        notes: dict[int, list[mido.Message]] | None = None,
        skip: Iterable[int] = (),
        start_tick: int = 0,
        send_start: bool = True,
        lead_s: float = 0.05,
        tempo_changes: dict[int, float] | None = None,
        locate: bool = False,
    ) -> None:
        """Start (or Continue from ``start_tick``) and send ``ticks`` clocks in a thread.

        ``notes[k]`` are sent right after clock ``k``; clocks in ``skip`` are not sent (a
        simulated JACK drop) but their time is still recorded as when they were due.
        ``tempo_changes[k]``: the tempo (BPM) from clock ``k`` on (steps; a ramp is many
        entries). ``locate``: send Song Position ``start_tick`` first (a DAW's locate or loop
        jump), then Continue; the recorded clock times of an earlier pass are forgotten.
        Stopping without ``stop_transport`` (the thread just ends) is a DAW that vanished.
        """
        self.tempo = tempo
        notes = notes or {}
        skip = set(skip)
        changes = dict(tempo_changes or {})
        self._stop.clear()
        if locate:
            self.tick_times.clear()

        def run() -> None:
            if locate:
                self.out.send(mido.Message("songpos", pos=start_tick // TICKS_PER_STEP))
            if send_start:
                self.out.send(mido.Message("start") if start_tick == 0 and not locate
                              else mido.Message("continue"))
            target = float(time.perf_counter_ns() + int(lead_s * 1e9))
            bpm = tempo
            for i in range(ticks):
                if self._stop.is_set():
                    return
                k = start_tick + i
                if i:
                    target += 60e9 / (bpm * PPQN)
                bpm = changes.get(k, bpm)
                self.tempo = bpm
                _sleep_until(int(target))
                self.tick_times[k] = int(target)
                if k not in skip:
                    self.out.send(mido.Message("clock"))
                for m in notes.get(k, ()):
                    self.out.send(m)

        self._thread = threading.Thread(target=run, name="dawsim-clock", daemon=True)
        self._thread.start()

    def wait(self, timeout: float = 60.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stop_transport(self) -> None:
        self._stop.set()
        self.wait()
        self.out.send(mido.Message("stop"))

    def tick_time(self, tick: float) -> float:
        """Time (ns) tick ``tick`` was (or would have been) sent, interpolating between clocks."""
        k = int(tick)
        t = self.tick_times[k]
        frac = tick - k
        if frac:
            t += frac * (self.tick_times[k + 1] - t)
        return t

    def step_of(self, t_ns: int) -> float:
        """The 16th step (fractional) at which ``t_ns`` falls on the sent clock grid (the
        clock period around it, so tempo changes are measured in the tempo of the moment)."""
        ks = sorted(self.tick_times)
        if not ks:
            raise ValueError("no clocks sent")
        # nearest recorded clock, then the fraction to it in the local period
        best = min(ks, key=lambda k: abs(self.tick_times[k] - t_ns))
        nb = best + 1 if best + 1 in self.tick_times else best - 1
        if nb not in self.tick_times:
            lo, hi = ks[0], ks[-1]
            period = (self.tick_times[hi] - self.tick_times[lo]) / max(hi - lo, 1)
        else:
            period = abs(self.tick_times[nb] - self.tick_times[best]) / abs(nb - best)
        return (best + (t_ns - self.tick_times[best]) / period) / TICKS_PER_STEP

    def close(self) -> None:
        self._stop.set()
        self.wait(5)
        self.inp.close()
        self.out.close()


def _sleep_until(target_ns: int) -> None:
    while True:
        d = target_ns - time.perf_counter_ns()
        if d <= 0:
            return
        time.sleep(min(d / 1e9, 0.005))


def pair_notes(received: Iterable[Received]) -> tuple[list[tuple[int, int, int, int]], list]:
    """Pair note-ons with note-offs per (channel, pitch).

    Returns ``(notes, hanging)``: notes as (channel, pitch, on_ns, off_ns); hanging as the
    (channel, pitch, on_ns) of note-ons that never got a note-off (CC 123 does not count:
    every note-on must have its own note-off).
    """
    open_: dict[tuple[int, int], list[int]] = {}
    notes = []
    for r in received:
        m = r.msg
        if m.type == "note_on" and m.velocity > 0:
            open_.setdefault((m.channel, m.note), []).append(r.t_ns)
        elif m.type in ("note_off", "note_on"):
            stack = open_.get((m.channel, m.note))
            if stack:
                notes.append((m.channel, m.note, stack.pop(0), r.t_ns))
    hanging = [(c, p, t) for (c, p), ts in open_.items() for t in ts]
    return notes, hanging
