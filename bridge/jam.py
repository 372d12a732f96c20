"""Headless bandmate (``bandmate jam``): MIDI in, generated MIDI out, no window.

A thin command line over the live engine (``bandmate.bridge.live``), which does the work the
app's window does too: capture, prompt, generation job, scheduling, the job's life.

Generation is fired by MIDI Control Change on any channel, so a controller button or DAW
automation can trigger it (CC 20-31 are undefined in the MIDI spec, so no DAW sends them by
itself). Defaults: CC 20 Continue, CC 21 Add track (value v = the v-th of the model's
add-track labels, from 1, in vocabulary order: ``ModelDescription.add_labels``, listed by
``bandmate models``; chorale model 1 Soprano .. 4 Bass; band model 1 Drums, then the GM
families by program number: 2 Piano .. 6 Bass ..), CC 22 Stop, CC 23 Panic; value 0 fires
nothing.
"""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import mido
from bandmate.bridge.capture import Capture
from bandmate.bridge.clock import ClockSource
from bandmate.bridge.live import EngineGenerator, Generator, LiveConfig, LiveEngine
from bandmate.bridge.ports import API_CHOICES
from bandmate.bridge.scheduler import Scheduler
from bandmate.models.registry import MODEL_HELP

log = logging.getLogger("bandmate.jam")

__all__ = ["ACTIONS", "EngineGenerator", "JamConfig", "JamController", "configure", "run"]

ACTIONS = ("continue", "add", "stop", "panic")


@dataclass
class JamConfig:
    """Triggers and timing of headless jam mode."""

    bars: int = field(default=4, metadata={"help": "prompt bars (and bars to generate)"})
    cc_continue: int = 20
    cc_add: int = 21
    cc_stop: int = 22
    cc_panic: int = 23
    lead_ms: float = field(default=100.0, metadata={"help": "first bar must be ready this early"})
    velocity: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.bars <= 16:
            raise ValueError(f"bars must be 1..16, got {self.bars}")
        ccs = [self.cc_continue, self.cc_add, self.cc_stop, self.cc_panic]
        for c in ccs:
            if not 0 <= c <= 119:
                raise ValueError(f"trigger CCs must be 0..119 (120-127 are channel mode), got {c}")
        if len(set(ccs)) != 4:
            raise ValueError(f"trigger CCs must differ, got {ccs}")
        if not 0 <= self.lead_ms <= 5000:
            raise ValueError(f"lead_ms must be 0..5000, got {self.lead_ms}")
        if self.velocity is not None and not 1 <= self.velocity <= 127:
            raise ValueError(f"velocity must be 1..127 or None, got {self.velocity}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> JamConfig:
        return cls(**d)

    def action_for(self, msg: mido.Message) -> tuple[str, int] | None:
        """(action, value) for a trigger CC with value > 0, else None."""
        if msg.type != "control_change" or msg.value == 0:
            return None
        m = {self.cc_continue: "continue", self.cc_add: "add", self.cc_stop: "stop",
             self.cc_panic: "panic"}
        a = m.get(msg.control)
        return (a, msg.value) if a else None


class JamController:
    """Trigger CCs -> live engine commands.

    ``on_message`` runs on the MIDI input thread and only hands commands to the engine:
    Stop and Panic act at once; Continue and Add are queued for the engine's worker
    (``serve``), so input is never blocked by the model.
    """

    def __init__(self, clock: ClockSource, capture: Capture, scheduler: Scheduler,
                 generator: Generator, config: JamConfig | None = None) -> None:
        self.config = config or JamConfig()
        self.gen = generator
        self._skipped: dict[str, Any] | None = None
        c = self.config
        self.engine = LiveEngine(clock, capture, scheduler, generator,
                                 LiveConfig(c.bars, c.lead_ms, c.velocity))

    @property
    def jobs_done(self) -> int:
        return self.engine.jobs_done

    @property
    def last_result(self) -> dict[str, Any]:
        if self._skipped is not None:
            return self._skipped
        last = self.engine.last
        return last.result if last is not None else {}

    def on_message(self, msg: mido.Message, t_ns: int) -> None:
        act = self.config.action_for(msg)
        if act is None:
            return
        action, value = act
        log.info("trigger: %s (CC %d = %d, channel %d)", action, msg.control, value,
                 msg.channel + 1)
        if action in ("stop", "panic"):
            self.engine.stop(panic=action == "panic")
            return
        label = None
        if action == "add":
            labels = self.gen.labels
            if not 1 <= value <= len(labels):
                log.info("add: value %d picks no label (1..%d: %s)", value, len(labels),
                         ", ".join(labels))
                self._skipped = {"action": action, "skipped": "bad label index"}
                return
            label = labels[value - 1]
        self._skipped = None
        self.engine.trigger(action, t_ns, label=label)

    def serve(self, stop: threading.Event | None = None) -> None:
        self.engine.serve(stop)

    def run_queued(self) -> None:
        self.engine.run_queued()

    def shutdown(self) -> None:
        self.engine.shutdown()


# -- command line -------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", choices=API_CHOICES, default="auto", help="MIDI system")
    parser.add_argument("--in", dest="in_name", default="bandmate in", help="input port name")
    parser.add_argument("--out", dest="out_name", default="bandmate out",
                        help="output port name")
    parser.add_argument("--model", default=None, help=MODEL_HELP + " (default: default)")
    parser.add_argument("--bars", type=int, default=4, help="prompt bars / bars to generate")
    parser.add_argument("--tempo", type=float, default=120.0,
                        help="internal clock tempo until the DAW sends MIDI clock")
    parser.add_argument("--clock", choices=("auto", "midi", "internal"), default="auto")
    parser.add_argument("--clock-timeout", type=int, default=12, metavar="CLOCKS",
                        help="DAW clock periods (24 a beat) without a clock before the DAW "
                             "counts as gone and output is silenced; raise it if your DAW's "
                             "clock stutters on a busy machine (default: 12, an eighth note)")
    parser.add_argument("--cc-continue", type=int, default=20)
    parser.add_argument("--cc-add", type=int, default=21,
                        help="Add track; the value picks the instrument: v = the v-th of the "
                             "model's add-track labels ('bandmate models' numbers them: "
                             "chorale 1-4 = Soprano..Bass; band 1 = Drums, 6 = Bass)")
    parser.add_argument("--cc-stop", type=int, default=22)
    parser.add_argument("--cc-panic", type=int, default=23)
    parser.add_argument("--velocity", type=int, default=None,
                        help="output velocity (default: the prompt track's)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")


def run(args: argparse.Namespace) -> int:
    import signal
    import sys

    from bandmate.bridge.bridge import Bridge, BridgeConfig
    from bandmate.bridge.capture import voice_labels
    from bandmate.bridge.ports import PortError

    try:
        jcfg = JamConfig(args.bars, args.cc_continue, args.cc_add, args.cc_stop, args.cc_panic,
                         velocity=args.velocity)
        bcfg = BridgeConfig(api=args.api, in_name=args.in_name, out_name=args.out_name,
                            clock=args.clock, tempo=args.tempo, velocity=args.velocity,
                            clock_timeout_ticks=args.clock_timeout)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        gen = EngineGenerator.load(args.model, args.seed)
    except (ImportError, AttributeError) as e:
        print(f"error: the generation engine is not available ({e}); reinstall bandmate",
              file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: cannot load the model: {e} (pass --model with a shipped model, "
              "e.g. --model band, or a folder written by 'bandmate export')", file=sys.stderr)
        return 2
    cfg = gen.session.config
    voices = voice_labels(cfg.labels, gen.labels)
    br = Bridge(bcfg, voices=voices)
    try:
        br.open()
    except PortError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ctl = JamController(br.clock, br.capture, br.scheduler, gen, jcfg)
    br.add_message_listener(ctl.on_message)
    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, _frame: object = None) -> None:
        got.append(signum)
        stop.set()
        ctl.shutdown()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    worker = threading.Thread(target=ctl.serve, args=(stop,), name="bandmate-jam", daemon=True)
    worker.start()
    from bandmate.models.instruments import label_name

    scheme = gen.session.config.label_scheme
    table = ", ".join(f"{i}={label_name(lab, scheme)}" for i, lab in enumerate(gen.labels, 1))
    log.info("jam ready: model %s; CC %d continue, %d add (value %s), %d stop, %d panic",
             gen.session.name, jcfg.cc_continue, jcfg.cc_add, table, jcfg.cc_stop,
             jcfg.cc_panic)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        ctl.shutdown()
        worker.join(2.0)
        s = br.scheduler.stats
        br.close()  # note-offs for everything sounding, CC 123/64
        log.info("jam stopped (%s): %d note(s) on, %d note(s) off, %d late dropped",
                 signal.Signals(got[0]).name if got else "exit", s.notes_on, s.notes_off,
                 s.late_dropped)
    return 0
