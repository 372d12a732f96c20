"""Capture: what the DAW plays into "bandmate in" becomes tracks of quantised notes.

Why quantise against the clock and not wall time: the prompt must sit on the DAW's grid, and
that grid is the clock's (tempo changes and clock drift included). A note's start and end are
rounded to the nearest 16th step of the clock's tick line at the message's arrival time. A ring
keeps only the last ``ring_bars`` bars so memory stays flat in a jam that lasts hours.

Takes: the capture follows the transport. Start, Song Position (a locate, a loop jump) and a
vanished clock begin a new take, because the bars before them belong to another timeline: a
prompt is always one take's bars, never two takes stacked. The take before is kept, so a
trigger at the very start of a take (a loop back to bar 1) still gets the bars just played.

With a voice model (``voices``), channels beyond the model's voices are not captured: they
are not a voice the model knows (a flood on channel 16 must not become the BASS).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import mido
from bandmate.bridge.clock import TICKS_PER_STEP, ClockSource, ClockState
from bandmate.models.types import DRUM_CHANNEL, STEPS_PER_BAR, Note, Piece, Track

GM_DRUMS = "DRUMS"


def voice_labels(codec_labels: tuple[str, ...] | list[str],
                 labels_seen: tuple[str, ...] | list[str] | None = None) -> tuple[str, ...]:
    """The model's voice labels (not DRUMS, not a GM program number), in label order.

    With ``labels_seen`` only the voices the model was trained on count (every vocabulary
    carries the default voice table, so the codec labels alone do not make a voice model).
    """
    seen = set(labels_seen) if labels_seen is not None else None
    return tuple(
        lab for lab in codec_labels
        if lab != GM_DRUMS and not lab.isdigit() and (seen is None or lab in seen)
    )


@dataclass
class CaptureConfig:
    """Channel -> label mapping and the ring size."""

    ring_bars: int = field(default=16, metadata={"help": "bars kept (K)"})
    channel_labels: dict[int, str] = field(
        default_factory=dict, metadata={"help": "fixed {channel 0-15: INST label}"}
    )
    voices: tuple[str, ...] = field(
        default=(), metadata={"help": "voice labels for channels 1, 2, 3... (voice models)"}
    )

    def __post_init__(self) -> None:
        if not 1 <= self.ring_bars <= 1024:
            raise ValueError(f"ring_bars must be 1..1024, got {self.ring_bars}")
        self.channel_labels = {int(k): str(v) for k, v in self.channel_labels.items()}
        for ch in self.channel_labels:
            if not 0 <= ch <= 15:
                raise ValueError(f"channel_labels keys must be channels 0..15, got {ch}")
        self.voices = tuple(self.voices)

    def to_json(self) -> dict:
        d = asdict(self)
        d["channel_labels"] = {str(k): v for k, v in self.channel_labels.items()}
        d["voices"] = list(self.voices)
        return d

    @classmethod
    def from_json(cls, d: dict) -> CaptureConfig:
        return cls(**d)

    def label_for(self, channel: int, program: int | None) -> str | None:
        """Fixed map, then voices by channel order, then GM (program / DRUMS). None: a
        channel a voice model has no voice for (not captured)."""
        if channel in self.channel_labels:
            return self.channel_labels[channel]
        if self.voices:
            return self.voices[channel] if channel < len(self.voices) else None
        if channel == DRUM_CHANNEL:
            return GM_DRUMS
        return str(program or 0)


@dataclass
class _Held:
    start: int
    velocity: int


@dataclass
class _Take:
    """The notes of one pass of the transport, from ``start_bar`` to ``end_bar``."""

    start_bar: int
    notes: dict[int, list[Note]]
    end_bar: int = 0  # first bar not complete when the take ended


class Capture:
    """Feed it every input message; ask ``current_bars(n)`` for a prompt."""

    def __init__(self, clock: ClockSource, config: CaptureConfig | None = None) -> None:
        self.clock = clock
        self.config = config or CaptureConfig()
        self._lock = threading.Lock()
        self._notes: dict[int, list[Note]] = {}
        self._held: dict[tuple[int, int], _Held] = {}
        self._programs: dict[int, int] = {}
        self._vel: dict[int, deque[int]] = {}
        self._take_start = 0  # bar the current take starts in
        self._last_step = 0  # the latest step a message came at in this take
        self._prev: _Take | None = None
        self.takes = 0  # takes begun (Start / Song Position / vanished clock)
        self.ignored = 0  # notes that came while the clock was stopped
        self.ignored_channel = 0  # note-ons on a channel the model has no voice for
        self.captured = 0  # note-ons taken
        add = getattr(clock, "add_listener", None)
        if add is not None:
            add(self._on_clock_event)

    def _on_clock_event(self, event: str, st: ClockState) -> None:
        if event in ("start", "position", "lost"):
            self.new_take(int(st.tick // (TICKS_PER_STEP * STEPS_PER_BAR)))

    def new_take(self, start_bar: int = 0) -> None:
        """End the current take (held notes end where it stopped) and begin one at bar
        ``start_bar``; the ended take stays available as the one "just played"."""
        with self._lock:
            for key in list(self._held):
                self._end(key, self._last_step)
            if any(self._notes.values()):
                # the take reached the bar of its last message (a bar with notes in it was
                # played; the transport's own position is gone by the time of the event)
                end_bar = -(-self._last_step // STEPS_PER_BAR)
                self._prev = _Take(self._take_start, dict(self._notes), end_bar)
            self._notes = {}
            self._take_start = start_bar
            self._last_step = start_bar * STEPS_PER_BAR
            self.takes += 1

    def feed(self, msg: mido.Message, t_ns: int) -> bool:
        kind = msg.type
        if kind == "program_change":
            with self._lock:
                self._programs[msg.channel] = msg.program
            return True
        if kind not in ("note_on", "note_off"):
            return False
        st = self.clock.state()
        if not st.running:
            self.ignored += 1
            return True
        if self.config.label_for(msg.channel, None) is None:
            if kind == "note_on" and msg.velocity > 0:
                self.ignored_channel += 1
            return True
        # Never before the last clock received: the fitted line can put that clock's time
        # later than it came (after a burst of late clocks), but a message that came after
        # clock k was sent after it.
        step = round(max(st.tick_at(t_ns), st.tick) / TICKS_PER_STEP)
        key = (msg.channel, msg.note)
        with self._lock:
            self._last_step = max(self._last_step, step)
            if kind == "note_on" and msg.velocity > 0:
                if key in self._held:  # re-struck without an off: end the old one here
                    self._end(key, step)
                self._held[key] = _Held(max(step, 0), msg.velocity)
                self._vel.setdefault(msg.channel, deque(maxlen=64)).append(msg.velocity)
                self.captured += 1
            elif key in self._held:
                self._end(key, step)
            self._prune(step)
        return True

    def _end(self, key: tuple[int, int], step: int) -> None:
        h = self._held.pop(key)
        end = max(step, h.start + 1)
        self._notes.setdefault(key[0], []).append(Note(h.start, key[1], end))

    def _prune(self, step: int) -> None:
        lo = (step // STEPS_PER_BAR - self.config.ring_bars) * STEPS_PER_BAR
        for ch, notes in self._notes.items():
            if notes and notes[0].end <= lo:
                self._notes[ch] = [n for n in notes if n.end > lo]

    def clear(self) -> None:
        with self._lock:
            self._notes.clear()
            self._held.clear()
            self._prev = None

    def label_for(self, channel: int) -> str:
        return self.config.label_for(channel, self._programs.get(channel))

    def current_bar(self) -> int:
        """Index of the bar that is playing now (the first incomplete bar)."""
        st = self.clock.state()
        return int(st.tick_at(time.perf_counter_ns()) // (TICKS_PER_STEP * STEPS_PER_BAR))

    def bars(self, start_bar: int, n: int, now_step: int | None = None,
             take: _Take | None = None) -> Piece:
        """Bars ``start_bar .. start_bar+n-1`` of the current take (or ``take``) as a Piece
        from step 0 (notes cut at the window edges; notes still held end at ``now_step``)."""
        st = self.clock.state()
        if now_step is None:
            now_step = round(st.tick_at(time.perf_counter_ns()) / TICKS_PER_STEP)
        lo, hi = start_bar * STEPS_PER_BAR, (start_bar + n) * STEPS_PER_BAR
        tracks = []
        with self._lock:
            src = self._notes if take is None else take.notes
            held = self._held if take is None else {}
            chans = sorted(set(src) | {c for c, _ in held})
            for ch in chans:
                notes = list(src.get(ch, ()))
                notes += [
                    Note(h.start, p, max(now_step, h.start + 1))
                    for (c, p), h in held.items() if c == ch
                ]
                cut = [
                    Note(max(x.start, lo) - lo, x.pitch, min(x.end, hi) - lo)
                    for x in notes if x.start < hi and x.end > lo
                ]
                if not cut:
                    continue
                vel = self._vel.get(ch)
                tracks.append(Track(
                    inst=self.config.label_for(ch, self._programs.get(ch)),
                    notes=tuple(sorted(cut)),
                    program=self._programs.get(ch, 0),
                    channel=ch,
                    velocity=int(statistics.median(vel)) if vel else 80,
                ))
        return Piece(tuple(tracks), bars=n, tempo=round(st.tempo, 2),
                     meta={"start_bar": start_bar})

    def current_bars(self, n: int, before_bar: int | None = None) -> Piece:
        """The last ``n`` complete bars of this take before ``before_bar`` (default: the bar
        playing now); fewer when fewer bars have passed since the take began. When the take
        has no complete bar yet (a trigger just after Start, a locate or a loop back), the
        bars just played: the last ``n`` complete bars of the take before
        (``meta["take"] = "previous"``)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        cur = self.current_bar() if before_bar is None else before_bar
        prev = self._prev
        if cur <= self._take_start and prev is not None and prev.end_bar > prev.start_bar:
            start = max(prev.end_bar - n, prev.start_bar)
            piece = self.bars(start, prev.end_bar - start, take=prev)
            return Piece(piece.tracks, piece.bars, piece.tempo,
                         meta={**piece.meta, "take": "previous"})
        start = max(cur - n, self._take_start, 0)
        return self.bars(start, max(cur - start, 0))
