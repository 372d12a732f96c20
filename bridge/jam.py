"""Headless bandmate (``bandmate jam``): MIDI in, generated MIDI out, no window.

Generation is fired by MIDI Control Change on any channel, so a controller button or DAW
automation can trigger it (CC 20-31 are undefined in the MIDI spec, so no DAW sends them by
itself). Defaults: CC 20 Continue, CC 21 Add track (value v = the v-th label of the model's
``labels_seen``, from 1), CC 22 Stop, CC 23 Panic; value 0 fires nothing.

A Continue takes the ``bars`` complete bars before the trigger as its prompt. Its output starts
on the next bar line, or a later one if the first generated bar is not ready ``lead_ms`` before
it (the log says which). An Add track plays the new part from the next bar line, aligned with
the prompt's bar 0.

The trigger logic (:class:`JamController`) only talks to a clock, a capture, a scheduler and a
generator, all passed in, so it is unit-tested with a fake generator; ``run`` wires the real
bridge and the ONNX generation engine (docs/contracts.md).
"""

from __future__ import annotations

import argparse
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import mido
from bandmate.bridge.capture import Capture
from bandmate.bridge.clock import TICKS_PER_BAR, ClockSource
from bandmate.bridge.ports import API_CHOICES
from bandmate.bridge.scheduler import Scheduler
from bandmate.models.registry import MODEL_HELP
from bandmate.models.types import DRUM_CHANNEL, STEPS_PER_BAR, Note, Piece

log = logging.getLogger("bandmate.jam")

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


class Generator(Protocol):
    """What jam needs from the engine: event streams (NoteEvent / BarDone / Done)."""

    labels: tuple[str, ...]

    def continue_stream(self, piece: Piece, bars: int, cancel: threading.Event) -> Iterator[Any]:
        ...

    def add_stream(self, piece: Piece, label: str, cancel: threading.Event) -> Iterator[Any]:
        ...


class EngineGenerator:
    """The real engine (bandmate.models.generate) behind the Generator protocol."""

    def __init__(self, model: str | None = None, seed: int | None = None) -> None:
        from bandmate.models import generate
        from bandmate.models.session import ModelSession

        self._gen = generate
        self.session = ModelSession.load(model)
        self.sampling = generate.SamplingConfig(seed=seed)
        seen = tuple(getattr(self.session, "labels_seen", ()) or ())
        self.labels = seen or tuple(self.session.config.labels)

    def continue_stream(self, piece: Piece, bars: int, cancel: threading.Event) -> Iterator[Any]:
        return self._gen.stream_continue(self.session, piece, bars, sampling=self.sampling,
                                         cancel=cancel)

    def add_stream(self, piece: Piece, label: str, cancel: threading.Event) -> Iterator[Any]:
        return self._gen.stream_add_track(self.session, piece, label, sampling=self.sampling,
                                          cancel=cancel)


def _kind(ev: object) -> str:
    """Event type by class name (NoteEvent / BarDone / Done), so fakes need no import."""
    return type(ev).__name__


class JamController:
    """Turns trigger CCs into generation jobs and scheduled notes.

    ``on_message`` runs on the MIDI input thread: Stop and Panic act at once, Continue and Add
    go to a queue served by ``serve`` (a worker thread), so input is never blocked by the
    model. A new Continue/Add cancels the job in flight.
    """

    def __init__(
        self,
        clock: ClockSource,
        capture: Capture,
        scheduler: Scheduler,
        generator: Generator,
        config: JamConfig | None = None,
    ) -> None:
        self.clock, self.capture, self.scheduler = clock, capture, scheduler
        self.gen = generator
        self.config = config or JamConfig()
        self._q: queue.Queue[tuple[str, int, int] | None] = queue.Queue()
        self._cancel = threading.Event()
        self._job_lock = threading.Lock()
        self.jobs_done = 0
        self.last_result: dict[str, Any] = {}
        self._first_out: dict[str, Any] | None = None
        scheduler.on_sent.append(self._on_sent)

    # -- input thread -----------------------------------------------------------------------
    def on_message(self, msg: mido.Message, t_ns: int) -> None:
        act = self.config.action_for(msg)
        if act is None:
            return
        action, value = act
        log.info("trigger: %s (CC %d = %d, channel %d)", action, msg.control, value,
                 msg.channel + 1)
        if action in ("stop", "panic"):
            self._cancel.set()
            n = self.scheduler.panic() if action == "panic" else self.scheduler.stop_output(
                "stop trigger")
            log.info("%s: %d sounding note(s) ended", action, n)
            return
        self._cancel.set()  # a new job replaces the one in flight
        self._q.put((action, value, t_ns))

    def shutdown(self) -> None:
        self._cancel.set()
        self._q.put(None)

    # -- worker -----------------------------------------------------------------------------
    def serve(self, stop: threading.Event | None = None) -> None:
        """Serve queued jobs until ``shutdown`` (or ``stop`` is set)."""
        while stop is None or not stop.is_set():
            try:
                item = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                return
            # the latest trigger wins: drain what queued up behind it
            while True:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    return
                item = nxt
            self.run_job(*item)

    def run_queued(self) -> None:
        """Run what is queued now (the latest trigger wins) on this thread, then return."""
        item = None
        while True:
            try:
                nxt = self._q.get_nowait()
            except queue.Empty:
                break
            item = nxt if nxt is not None else item
        if item is not None:
            self.run_job(*item)

    def run_job(self, action: str, value: int, t_ns: int) -> dict[str, Any]:
        with self._job_lock:
            self._cancel = threading.Event()
            try:
                res = self._job(action, value, t_ns, self._cancel)
            except Exception as e:
                log.exception("generation failed: %s", e)
                res = {"action": action, "error": str(e)}
            self.last_result = res
            self.jobs_done += 1
            return res

    def _job(self, action: str, value: int, t_ns: int, cancel: threading.Event) -> dict:
        st = self.clock.state()
        trig_bar = int(st.tick_at(t_ns) // TICKS_PER_BAR)
        prompt = self.capture.current_bars(self.config.bars, before_bar=trig_bar)
        if not prompt.tracks:
            log.info("%s: no notes captured in the %d bar(s) before bar %d; play something "
                     "into 'bandmate in' while the DAW runs", action, prompt.bars, trig_bar + 1)
            return {"action": action, "skipped": "empty prompt"}
        if action == "add":
            labels = self.gen.labels
            if not 1 <= value <= len(labels):
                log.info("add: value %d picks no label (1..%d: %s)", value, len(labels),
                         ", ".join(labels))
                return {"action": action, "skipped": "bad label index"}
            label = labels[value - 1]
            events = self.gen.add_stream(prompt, label, cancel)
            gen_from_step = 0
            log.info("add %s over %d prompt bar(s) %d-%d", label, prompt.bars,
                     prompt.meta["start_bar"] + 1, trig_bar)
        else:
            label = None
            events = self.gen.continue_stream(prompt, self.config.bars, cancel)
            gen_from_step = prompt.bars * STEPS_PER_BAR
            log.info("continue: prompt bars %d-%d, %d track(s)", prompt.meta["start_bar"] + 1,
                     trig_bar, len(prompt.tracks))
        return self._play(action, prompt, events, trig_bar + 1, gen_from_step, label, cancel)

    def _channel_for(self, prompt: Piece, track: int, label: str | None,
                     extra: dict[int, int]) -> int:
        if track < len(prompt.tracks):
            return prompt.tracks[track].channel
        if track not in extra:
            used = {t.channel for t in prompt.tracks} | set(extra.values())
            if label == "DRUMS":
                extra[track] = DRUM_CHANNEL
            else:
                free = [c for c in range(16) if c not in used and c != DRUM_CHANNEL]
                extra[track] = free[0] if free else 15
        return extra[track]

    def _velocity_for(self, prompt: Piece, track: int) -> int:
        if self.config.velocity is not None:
            return self.config.velocity
        if track < len(prompt.tracks):
            return prompt.tracks[track].velocity
        return int(sum(t.velocity for t in prompt.tracks) / len(prompt.tracks))

    def _play(self, action: str, prompt: Piece, events: Iterable[Any], target_bar: int,
              gen_from_step: int, label: str | None, cancel: threading.Event) -> dict:
        t_start = time.perf_counter()
        buffered: list[tuple[int, Note]] = []
        origin: int | None = None  # step on the clock timeline of the result piece's step 0
        extra: dict[int, int] = {}
        scheduled = 0
        stats: dict = {}
        self._first_out = {"action": action, "logged": False, "sent": 0, "total": None}

        def place(track: int, note: Note) -> None:
            nonlocal scheduled
            if note.start < gen_from_step:
                return  # a prompt note echoed back: never replay the user's own notes
            assert origin is not None
            self.scheduler.add_notes([note], self._channel_for(prompt, track, label, extra),
                                     self._velocity_for(prompt, track), origin)
            scheduled += 1

        def fix_origin() -> None:
            nonlocal origin, target_bar
            st = self.clock.state()
            first = target_bar
            lead = self.config.lead_ms * 1e6
            while st.running and st.ns_at(target_bar * TICKS_PER_BAR) < (
                    time.perf_counter_ns() + lead):
                target_bar += 1
            if target_bar == first:
                log.info("%s: first bar ready in %.2f s; output starts at bar %d (next bar "
                         "line)", action, time.perf_counter() - t_start, target_bar + 1)
            else:
                log.info("%s: first bar ready in %.2f s, too late for bar %d; output starts at "
                         "bar %d (%d bar(s) later)", action, time.perf_counter() - t_start,
                         first + 1, target_bar + 1, target_bar - first)
            origin = target_bar * STEPS_PER_BAR - gen_from_step
            for tr, n in buffered:
                place(tr, n)
            buffered.clear()

        for ev in events:
            if cancel.is_set():
                log.info("%s: cancelled", action)
                return {"action": action, "cancelled": True, "notes": scheduled}
            k = _kind(ev)
            if k == "NoteEvent":
                if origin is None:
                    buffered.append((ev.track, ev.note))
                else:
                    place(ev.track, ev.note)
            elif k == "BarDone":
                if origin is None:
                    fix_origin()
            elif k == "Done":
                stats = dict(getattr(ev, "stats", {}) or {})
                if origin is None:
                    fix_origin()
        if origin is None:
            fix_origin()
        tokens = stats.get("sampled_tokens", "?")
        fo = self._first_out
        if fo is not None:
            fo["total"] = scheduled
        log.info("%s: generated %s tokens in %.2f s; %d note(s) scheduled from bar %d", action,
                 tokens, time.perf_counter() - t_start, scheduled, target_bar + 1)
        return {"action": action, "notes": scheduled, "start_bar": target_bar,
                "tokens": tokens, "label": label}

    def _on_sent(self, msg: mido.Message, target_ns: int, sent_ns: int) -> None:
        fo = self._first_out
        if fo is None or msg.type != "note_on":
            return
        fo["sent"] += 1
        if not fo["logged"]:
            fo["logged"] = True
            log.info("%s: first note out (%.1f ms after its time)", fo["action"],
                     (sent_ns - target_ns) / 1e6)
        if fo["total"] is not None and fo["sent"] >= fo["total"]:
            log.info("%s: all %d note(s) sent", fo["action"], fo["sent"])
            self._first_out = None


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
    parser.add_argument("--cc-continue", type=int, default=20)
    parser.add_argument("--cc-add", type=int, default=21)
    parser.add_argument("--cc-stop", type=int, default=22)
    parser.add_argument("--cc-panic", type=int, default=23)
    parser.add_argument("--velocity", type=int, default=None,
                        help="output velocity (default: the prompt track's)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")


def run(args: argparse.Namespace) -> int:
    import signal
    import sys

    from bandmate.bridge.capture import voice_labels
    from bandmate.bridge.facade import Bridge, BridgeConfig
    from bandmate.bridge.ports import PortError

    try:
        jcfg = JamConfig(args.bars, args.cc_continue, args.cc_add, args.cc_stop, args.cc_panic,
                         velocity=args.velocity)
        bcfg = BridgeConfig(api=args.api, in_name=args.in_name, out_name=args.out_name,
                            clock=args.clock, tempo=args.tempo, velocity=args.velocity)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        gen = EngineGenerator(args.model, args.seed)
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
    log.info("jam ready: model %s; CC %d continue, %d add (1..%d: %s), %d stop, %d panic",
             gen.session.name, jcfg.cc_continue, jcfg.cc_add, len(gen.labels),
             ",".join(gen.labels[:8]) + ("..." if len(gen.labels) > 8 else ""), jcfg.cc_stop,
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
