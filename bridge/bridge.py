"""``Bridge``: ports + clock + capture + scheduler wired together, with a port watcher.

Why one object: the app and ``bandmate jam`` need the same wiring and the same safety (note-offs
on every exit path); keeping it here means neither can forget a step. The parts stay separate
objects (``bridge.clock``, ``bridge.capture``, ``bridge.scheduler``) for tests and for code
that needs more than the Bridge offers.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import mido
import rtmidi
from bandmate.bridge.capture import Capture, CaptureConfig
from bandmate.bridge.clock import InternalClock
from bandmate.bridge.follower import AutoClock, MidiClockFollower
from bandmate.bridge.ports import (
    API_CHOICES,
    InputPort,
    OutputPort,
    resolve_api,
)
from bandmate.bridge.scheduler import LATE_POLICIES, Scheduler, SchedulerConfig

log = logging.getLogger(__name__)

CLOCK_MODES = ("auto", "midi", "internal")
SWITCH_INTERVAL_S = 0.0005
MessageListener = Callable[[mido.Message, int], None]


@dataclass
class BridgeConfig:
    """Everything the bridge needs; embedded in logs so a session can be reproduced."""

    api: str = field(default="auto", metadata={"help": "MIDI system: " + ", ".join(API_CHOICES)})
    in_name: str = "bandmate in"
    out_name: str = "bandmate out"
    connect_in: str | None = field(default=None, metadata={"help": "existing port to read"})
    connect_out: str | None = field(default=None, metadata={"help": "existing port to write"})
    clock: str = field(default="auto", metadata={"help": "auto, midi or internal"})
    tempo: float = field(default=120.0, metadata={"help": "internal clock BPM"})
    ring_bars: int = 16
    late_policy: str = "drop"
    late_ms: float = 40.0
    out_latency_ms: float = 0.0
    realtime: bool = field(default=True, metadata={"help": "real-time priority for output"})
    velocity: int | None = field(default=None, metadata={"help": "None: the prompt's velocity"})
    thru: bool = field(default=False, metadata={"help": "echo input notes to the output"})
    channel_labels: dict[int, str] = field(default_factory=dict)
    watch_s: float = field(default=1.0, metadata={"help": "port check interval; 0 = off"})
    clock_timeout_ticks: int = field(default=12, metadata={
        "help": "DAW clock periods (24 a beat) without a clock before the DAW counts as gone "
                "and output is silenced; raise it for a DAW whose clock stutters"})

    def __post_init__(self) -> None:
        if self.api not in API_CHOICES:
            raise ValueError(f"api must be one of {API_CHOICES}, got {self.api!r}")
        if self.clock not in CLOCK_MODES:
            raise ValueError(f"clock must be one of {CLOCK_MODES}, got {self.clock!r}")
        if self.late_policy not in LATE_POLICIES:
            raise ValueError(f"late_policy must be one of {LATE_POLICIES}")
        if not 20.0 <= self.tempo <= 400.0:
            raise ValueError(f"tempo must be 20..400 BPM, got {self.tempo}")
        if self.velocity is not None and not 1 <= self.velocity <= 127:
            raise ValueError(f"velocity must be 1..127 or None, got {self.velocity}")
        if not 6 <= self.clock_timeout_ticks <= 384:
            raise ValueError("clock_timeout_ticks must be 6..384 (a 16th note to 4 bars), "
                             f"got {self.clock_timeout_ticks}")
        if not self.in_name or not self.out_name:
            raise ValueError("in_name and out_name must not be empty")
        self.channel_labels = {int(k): str(v) for k, v in self.channel_labels.items()}
        # validate the sub-configs now, not when the ports open
        self.scheduler_config()
        CaptureConfig(self.ring_bars, self.channel_labels)

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(self.late_policy, self.late_ms, self.out_latency_ms, self.realtime)

    def to_json(self) -> dict:
        d = asdict(self)
        d["channel_labels"] = {str(k): v for k, v in self.channel_labels.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> BridgeConfig:
        return cls(**d)

    def dumps(self) -> str:
        return json.dumps(self.to_json())


class Bridge:
    """Open with ``open()``; always ``close()`` (also done at interpreter exit)."""

    def __init__(self, config: BridgeConfig | None = None,
                 voices: tuple[str, ...] = ()) -> None:
        self.config = config or BridgeConfig()
        c = self.config
        if c.clock == "midi":
            self.clock: AutoClock | MidiClockFollower | InternalClock = MidiClockFollower(
                c.tempo, vanish_ticks=c.clock_timeout_ticks)
        elif c.clock == "internal":
            self.clock = InternalClock(c.tempo)
        else:
            self.clock = AutoClock(c.tempo, vanish_ticks=c.clock_timeout_ticks)
        follower = self.clock.follower if isinstance(self.clock, AutoClock) else self.clock
        if isinstance(follower, MidiClockFollower):
            follower.input_drained = self._input_drained_ns
        self.capture = Capture(self.clock, CaptureConfig(c.ring_bars, c.channel_labels, voices))
        self.api: int | None = None
        self.inp: InputPort | None = None
        self.out: OutputPort | None = None
        self.scheduler = Scheduler(self._send, self.clock, c.scheduler_config())
        self._listeners: list[MessageListener] = []
        self._jack_monitor = None
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.port_lost = 0
        self.reopened = 0
        self._closed = False

    def _input_drained_ns(self) -> int:
        """Until when every arrived input message has been handled (now without a port)."""
        inp = self.inp
        return inp.drained_ns if inp is not None else time.perf_counter_ns()

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> Bridge:
        c = self.config
        # Python hands the GIL to a waiting thread only after this interval (5 ms by
        # default): the scheduler would wait that long behind any busy Python thread.
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.api = resolve_api(c.api)
        self._open_ports()
        if isinstance(self.clock, InternalClock):
            self.clock.start()
        elif isinstance(self.clock, AutoClock):
            self.clock.internal.start()
        self.scheduler.start()
        atexit.register(self.close)
        if c.watch_s > 0:
            self._watcher = threading.Thread(target=self._watch, name="bandmate-port-watch",
                                             daemon=True)
            self._watcher.start()
        log.info("bridge open: in %r, out %r (%s), clock %s", c.in_name, c.out_name,
                 _api_label(self.api), c.clock)
        return self

    def _open_ports(self) -> None:
        c = self.config
        assert self.api is not None
        self.out = OutputPort(self.api, c.out_name, c.connect_out)
        try:
            self.inp = InputPort(self.api, c.in_name, self._on_message, c.connect_in)
        except Exception:
            self.out.close()
            self.out = None
            raise
        self.inp.start()
        if self.api == rtmidi.API_UNIX_JACK:
            from bandmate.bridge.jack_client import XrunCounter

            try:
                server = os.environ.get("JACK_DEFAULT_SERVER", "default")
                self._jack_monitor = XrunCounter(server, f"{c.out_name} watch")
            except Exception:
                log.debug("no JACK shutdown monitor", exc_info=True)
                self._jack_monitor = None

    def _close_ports(self, server_gone: bool = False) -> None:
        for p in (self.inp, self.out):
            if p is not None:
                with contextlib.suppress(Exception):
                    p.abandon() if server_gone else p.close()
        self.inp = self.out = None
        mon, self._jack_monitor = self._jack_monitor, None
        if mon is not None:
            with contextlib.suppress(Exception):
                mon.close()  # leaks (does not close) the client if its server is gone

    def close(self) -> None:
        """Stop output (note-offs), stop threads, close ports. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._watch_stop.set()
        self.scheduler.close()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(3.0)
        self._close_ports()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def __enter__(self) -> Bridge:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- output ----------------------------------------------------------------------------
    def _send(self, msg: mido.Message) -> None:
        out = self.out
        if out is not None:
            out.send(msg)

    def stop(self) -> int:
        return self.scheduler.stop_output("stop")

    def panic(self) -> int:
        return self.scheduler.panic()

    # -- input -----------------------------------------------------------------------------
    def add_message_listener(self, fn: MessageListener) -> None:
        self._listeners.append(fn)

    def _on_message(self, msg: mido.Message, t_ns: int) -> None:
        clk = self.clock
        if isinstance(clk, (AutoClock, MidiClockFollower)) and clk.feed(msg, t_ns):
            return
        self.capture.feed(msg, t_ns)
        if self.config.thru and msg.type in ("note_on", "note_off"):
            self._send(msg)
        for fn in list(self._listeners):
            fn(msg, t_ns)

    # -- port watcher ----------------------------------------------------------------------
    def _check_ports(self) -> str | None:
        """None when all is well, else "server" (the MIDI system is gone) or "port".

        No probe clients: opening a JACK client makes the server reorder its graph, which
        delayed MIDI by several periods and bent the clock. The server's death comes from a
        shutdown callback (JACK); port presence from our own open clients' port lists.
        """
        mon = self._jack_monitor
        if mon is not None and mon.shut_down.is_set():
            return "server"
        c = self.config
        if self.out is None or self.inp is None:
            return "port"
        if c.connect_out is None and c.connect_in is None:
            return None
        # our input client lists what can be read, our output client what can be written
        readable, writable = self.inp.list_ports(), self.out.list_ports()
        for name, names in ((c.connect_out, writable), (c.connect_in, readable)):
            if name is not None and not any(name.lower() in n.lower() for n in names):
                return "port"
        return None

    def _watch(self) -> None:
        lost = False
        while not self._watch_stop.wait(self.config.watch_s):
            if not lost:
                try:
                    problem = self._check_ports()
                except Exception as e:
                    problem = f"check failed: {e}"
                if problem is None:
                    continue
                lost = True
                log.warning("MIDI %s lost: output silenced; will reopen when it is back",
                            "server" if problem == "server" else "port")
                self.scheduler.stop_output("port lost")
                # Clients of a vanished JACK server are not closed: libjack frees them itself
                # when the next client connects, and closing them as well crashed.
                self._close_ports(server_gone=problem == "server")
                self.port_lost += 1
            try:
                self._open_ports()
            except Exception as e:
                log.debug("reopen failed: %s", e)
                self._close_ports()
                continue
            lost = False
            self.reopened += 1
            log.info("MIDI ports reopened")


def _api_label(api: int | None) -> str:
    from bandmate.bridge.ports import api_name

    return api_name(api) if api is not None else "?"


def install_signal_handlers(on_signal: Callable[[int], None]) -> None:
    """SIGINT / SIGTERM call ``on_signal(signum)`` (main thread only)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: on_signal(signum))


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    """Poll ``pred`` until true or ``timeout`` seconds pass (for tests and the CLI)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()
