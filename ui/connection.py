"""The app's MIDI connection, without Qt: open and close the `Bridge`, list ports, preview a
clip on the scheduler, stop and panic, read the clock for the status line.

Live jobs are the live engine's (`bandmate.bridge.live`, reached through `bandmate.ui.live`);
this object only owns the ports and the clock they share.
"""

from __future__ import annotations

import logging
import time

from bandmate.bridge import AutoClock, Bridge, BridgeConfig, InternalClock, voice_labels
from bandmate.models.session import ModelSession
from bandmate.models.types import STEPS_PER_BAR, Piece
from bandmate.ui.controller import Refusal, clock_status
from bandmate.ui.settings import AppSettings

log = logging.getLogger(__name__)


def port_names(api_name: str) -> tuple[list[str], list[str]]:
    """Input and output ports other than bandmate's own (empty when no MIDI system runs)."""
    try:
        from bandmate.bridge import ports

        pl = ports.list_ports(ports.resolve_api(api_name or "auto"))
    except Exception as e:  # no MIDI system: the virtual ports only
        log.debug("no port list: %s", e)
        return [], []
    return ([p for p in pl.inputs if not p.startswith("bandmate")],
            [p for p in pl.outputs if not p.startswith("bandmate")])  # fmt: skip


class MidiConnection:
    """The open `Bridge` (``bridge`` is None while not connected)."""

    def __init__(self) -> None:
        self.bridge: Bridge | None = None

    def open(self, s: AppSettings, session: ModelSession | None) -> Bridge:
        """Open the ports of settings ``s``; `Refusal` when they do not open."""
        if self.bridge is not None:
            return self.bridge
        from bandmate.bridge import PortError

        cfg = BridgeConfig(
            api=s.midi_api,
            # DAW clock = the internal clock until the DAW sends Start/clock, then the DAW's
            clock="auto" if s.clock_source == "daw" else "internal",
            tempo=s.tempo,
            connect_in=s.in_port or None,
            connect_out=s.out_port or None,
        )
        voices: tuple[str, ...] = ()
        if session is not None:
            voices = voice_labels(session.config.labels, session.labels_seen)
        try:
            br = Bridge(cfg, voices=voices)
            br.open()
        except (PortError, OSError, RuntimeError, ValueError) as e:
            raise Refusal(
                "MIDI port failed",
                f"{e}\n\nPick another port or MIDI system (API) and press Connect again; "
                "files can still be opened, generated and saved without MIDI.",
            ) from e
        self.bridge = br
        log.info("connected: %s", cfg.to_json())
        return br

    def close(self) -> None:
        if self.bridge is not None:
            try:
                self.bridge.close()
            except Exception as e:
                log.warning("closing MIDI: %s", e)
            self.bridge = None

    def running(self) -> bool:
        return self.bridge is not None and self.bridge.clock.state().running

    def start_internal_clock(self) -> bool:
        """Run the internal clock when the DAW's is not running; False when this bridge
        follows only the DAW's clock (the preview then waits for its transport)."""
        assert self.bridge is not None
        clock = self.bridge.clock
        if isinstance(clock, AutoClock):
            clock = clock.internal
        if isinstance(clock, InternalClock):
            clock.start()
            return True
        return False

    def preview(self, clip: Piece, first_step: int) -> tuple[int, int]:
        """Queue ``clip`` from the next bar line; returns (notes queued, playhead origin: the
        clock step of roll step 0, given that the clip starts at roll step ``first_step``)."""
        assert self.bridge is not None
        sched = self.bridge.scheduler
        bar = sched.next_bar_line(lead_ms=100)
        n = 0
        for t in clip.tracks:
            n += sched.add_notes(list(t.notes), channel=t.channel, velocity=t.velocity,
                                 origin_step=bar * STEPS_PER_BAR)  # fmt: skip
        log.info("preview: %d notes from bar %d", n, bar + 1)
        return n, bar * STEPS_PER_BAR - first_step

    def stop(self, panic: bool = False) -> bool:
        """End every sounding note (``panic``: all notes off on every channel)."""
        if self.bridge is None:
            return False
        if panic:
            self.bridge.panic()
        else:
            self.bridge.stop()
        return True

    def status(self) -> tuple[list[str], float | None]:
        """Status-line parts of the clock and, while it runs, its step now."""
        assert self.bridge is not None
        try:
            st = self.bridge.clock.state()
            parts, step = clock_status(st, time.perf_counter_ns())
        except Exception as e:
            return [f"clock error: {e}"], None
        return parts, step if st.running else None
