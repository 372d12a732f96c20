"""MIDI ports through python-rtmidi: pick a backend, open virtual ports, list what is there.

Why a module of its own: every platform differs. Linux has ALSA (the default) or JACK (also
PipeWire's JACK); macOS has CoreMIDI; both can create *virtual* ports that a DAW connects to.
Windows has no virtual ports, so there bandmate connects to existing ports by name (loopMIDI
and the like). This module hides that and turns backend failures into messages that say what
to do next.

Input is *polled* from bandmate's own reader thread (see :class:`InputPort`), never handled in
rtmidi's callback: under JACK that callback runs in the real-time process thread and would have
to wait for Python's GIL, which causes xruns. Arrival times are rebuilt from rtmidi's per-message
delta times (JACK cycle times) and mapped onto ``time.perf_counter_ns``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import mido
import rtmidi

log = logging.getLogger(__name__)

#: user-facing API names -> rtmidi constants
API_NAMES: dict[str, int] = {
    "alsa": rtmidi.API_LINUX_ALSA,
    "jack": rtmidi.API_UNIX_JACK,
    "coremidi": rtmidi.API_MACOSX_CORE,
    "winmm": rtmidi.API_WINDOWS_MM,
}
API_CHOICES = ("auto", *API_NAMES)


class PortError(RuntimeError):
    """A MIDI port could not be opened; the message says what the user can do."""


SEQ_DEVICE = "/dev/snd/seq"
_jack_quiet: list = []  # keeps the ctypes callbacks alive
_JACK_LOG_EVERY_S = 30.0


def quiet_libjack() -> bool:
    """Route libjack's own error and info printing into our log, at most one line every 30 s.

    Why: libjack prints ~5 lines to stderr for every failed connection attempt, and while a
    JACK server is down the port watcher tries once a second (issue 12). Idempotent; False
    when libjack cannot be loaded (then nothing changes).
    """
    if _jack_quiet:
        return True
    import ctypes

    try:
        from bandmate.bridge.jack_client import libjack_path

        lib = ctypes.CDLL(libjack_path())
    except Exception as e:  # no libjack: nothing prints either
        log.debug("libjack not loaded: %s", e)
        return False
    cb_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
    last = [0.0]
    counts = [0]

    def on_msg(text: bytes | None) -> None:
        counts[0] += 1
        now = time.monotonic()
        if now - last[0] >= _JACK_LOG_EVERY_S:
            last[0] = now
            msg = (text or b"").decode(errors="replace")
            # Detail for --verbose: the bridge says "server lost" itself, in words a user reads.
            log.debug("libjack: %s (%d message(s) since the last shown)", msg, counts[0])
            counts[0] = 0

    cb = cb_type(on_msg)
    for fn in ("jack_set_error_function", "jack_set_info_function"):
        f = getattr(lib, fn, None)
        if f is not None:
            f.argtypes = [cb_type]
            f.restype = None
            f(cb)
    _jack_quiet.extend([lib, cb])

    def at_exit() -> None:
        # no Python callback while the interpreter shuts down (libjack may still print when
        # its clients close): a C function that reads the text and does nothing instead
        libc = ctypes.CDLL(None)
        for fn in ("jack_set_error_function", "jack_set_info_function"):
            f = getattr(lib, fn, None)
            if f is not None:
                f.argtypes = [ctypes.c_void_p]
                f(ctypes.cast(libc.strlen, ctypes.c_void_p))

    import atexit

    atexit.register(at_exit)
    return True


def _try_api(api: int) -> str | None:
    """Open and close a client on ``api``; None if it works, else the error text."""
    os.environ.setdefault("JACK_NO_START_SERVER", "1")  # never auto-start a stray jackd
    if api == rtmidi.API_UNIX_JACK:
        quiet_libjack()
    try:
        m = rtmidi.MidiOut(api, "bandmate-probe")
        m.delete()
        return None
    except Exception as e:
        return str(e) or type(e).__name__


def resolve_api(name: str = "auto") -> int:
    """The rtmidi API to use for ``name`` (one of API_CHOICES).

    ``auto``: CoreMIDI on macOS, Windows MM on Windows, and on Linux ALSA when the sequencer
    works, else JACK (with a log line saying so). Raises PortError with the next step when
    nothing works.
    """
    if name not in API_CHOICES:
        raise ValueError(f"api must be one of {API_CHOICES}, got {name!r}")
    compiled = set(rtmidi.get_compiled_api())
    if name != "auto":
        api = API_NAMES[name]
        if api not in compiled:
            raise PortError(
                f"this python-rtmidi was built without {name}; available: "
                + ", ".join(k for k, v in API_NAMES.items() if v in compiled)
            )
        err = _try_api(api)
        if err is not None:
            alsa = (" or pass --api alsa" if os.path.exists(SEQ_DEVICE) else
                    f" (there is no ALSA sequencer here: {SEQ_DEVICE} is missing, so --api "
                    "alsa will not work either)")
            hint = {
                "jack": "start a JACK server (e.g. 'jackd -d dummy', or run under PipeWire's "
                "pw-jack) and try again" + alsa,
                "alsa": "no ALSA sequencer (/dev/snd/seq): load snd-seq ('sudo modprobe "
                "snd-seq') or pass --api jack with a JACK server running",
            }.get(name, "check that the MIDI system is running")
            raise PortError(f"cannot use {name} ({err}): {hint}")
        return api
    if sys.platform == "darwin":
        return rtmidi.API_MACOSX_CORE
    if sys.platform == "win32":
        return rtmidi.API_WINDOWS_MM
    tried = []
    for nm in ("alsa", "jack"):
        api = API_NAMES[nm]
        if api not in compiled:
            continue
        err = _try_api(api)
        if err is None:
            if tried:
                log.info("no ALSA sequencer (%s); using JACK", tried[0][1])
            return api
        tried.append((nm, err))
    raise PortError(
        "no MIDI system found: no ALSA sequencer (load snd-seq: 'sudo modprobe snd-seq') and no "
        "JACK server running (start one, e.g. 'jackd -d dummy', or PipeWire's JACK); then pass "
        "--api alsa or --api jack. Details: " + "; ".join(f"{n}: {e}" for n, e in tried)
    )


def api_name(api: int) -> str:
    for k, v in API_NAMES.items():
        if v == api:
            return k
    return str(api)


def supports_virtual(api: int) -> bool:
    return api != rtmidi.API_WINDOWS_MM


@dataclass(frozen=True)
class PortList:
    """What ``bandmate ports`` prints: ports bandmate can read from and write to."""

    api: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def list_ports(api: int) -> PortList:
    mi = rtmidi.MidiIn(api, "bandmate-list")
    mo = rtmidi.MidiOut(api, "bandmate-list")
    try:
        return PortList(api_name(api), tuple(mi.get_ports()), tuple(mo.get_ports()))
    finally:
        mi.delete()
        mo.delete()


def find_port(names: list[str], wanted: str) -> int | None:
    """Index of the port named ``wanted``: exact match first, then case-insensitive substring."""
    for i, n in enumerate(names):
        if n == wanted:
            return i
    for i, n in enumerate(names):
        if wanted.lower() in n.lower():
            return i
    return None


#: rtmidi objects whose JACK server died: never closed nor freed. libjack deletes such
#: clients itself when the next client connects; closing them too crashed the process.
_ABANDONED: list[object] = []


def _open_endpoint(
    port: rtmidi.MidiIn | rtmidi.MidiOut, direction: str, api: int, name: str, connect: str | None
) -> None:
    """Open a virtual port ``name`` where the API allows, else connect to ``connect`` / ``name``.

    On failure the rtmidi object is deleted and a PortError says what to do.
    """
    target = connect or (None if supports_virtual(api) else name)
    try:
        if target is None:
            port.open_virtual_port(name)
        else:
            names = port.get_ports()
            i = find_port(names, target)
            if i is None:
                raise PortError(
                    f"no MIDI {direction} port named {target!r} (found: {names or 'none'}); "
                    "create it (e.g. with loopMIDI on Windows) or pick one from "
                    "'bandmate ports'"
                )
            port.open_port(i)
    except PortError:
        port.delete()
        raise
    except Exception as e:
        port.delete()
        raise PortError(f"cannot open {direction} {name!r}: {e}") from e


class OutputPort:
    """Sends mido messages. Virtual port ``name`` when the API allows, else connects by name.

    ``send`` never raises: a failed send is logged and counted in ``errors`` so a dying port
    cannot crash the scheduler thread; the port watcher reopens it.
    """

    def __init__(self, api: int, name: str, connect: str | None = None) -> None:
        self.api, self.name, self.connect = api, name, connect
        self._lock = threading.Lock()
        self.errors = 0
        self.sent = 0
        self._out: rtmidi.MidiOut | None = None
        self.open()

    def open(self) -> None:
        out = rtmidi.MidiOut(self.api, self.name)
        _open_endpoint(out, "output", self.api, self.name, self.connect)
        with self._lock:
            self._out = out

    def list_ports(self) -> list[str]:
        """Ports this client can write to (via its own client: no new JACK client)."""
        with self._lock:
            return list(self._out.get_ports()) if self._out is not None else []

    def send(self, msg: mido.Message | list[int] | bytes) -> bool:
        data = msg.bytes() if isinstance(msg, mido.Message) else list(msg)
        with self._lock:
            if self._out is None:
                self.errors += 1
                return False
            try:
                self._out.send_message(data)
                self.sent += 1
                return True
            except Exception:
                self.errors += 1
                log.warning("MIDI send failed on %r", self.name, exc_info=True)
                return False

    def abandon(self) -> None:
        """Forget the port without closing it (its server is gone; see _ABANDONED)."""
        with self._lock:
            out, self._out = self._out, None
        if out is not None:
            _ABANDONED.append(out)

    def close(self) -> None:
        with self._lock:
            out, self._out = self._out, None
        if out is not None:
            with contextlib.suppress(Exception):
                out.close_port()
            out.delete()


#: handler(message, perf_counter_ns arrival time)
InputHandler = Callable[[mido.Message, int], None]


class InputPort:
    """A virtual input (or a named port on Windows) read by a polling thread.

    rtmidi queues incoming messages in C++ (``queue_size_limit``); this thread drains that
    queue every ``poll_s`` and calls ``handler(msg, t_ns)``. ``t_ns`` is the arrival time on
    ``perf_counter_ns``: the sum of rtmidi's delta times (JACK cycle times), offset by the
    smallest observed (poll time - reconstructed time), which removes poll latency.
    ``received`` counts messages read, ``bad`` those mido could not parse.
    """

    def __init__(
        self,
        api: int,
        name: str,
        handler: InputHandler,
        connect: str | None = None,
        poll_s: float = 0.0005,
        queue_size: int = 8192,
    ) -> None:
        self.api, self.name, self.connect = api, name, connect
        self.handler = handler
        self.poll_s = poll_s
        self.queue_size = queue_size
        self.received = 0
        self.bad = 0
        #: perf_counter_ns of the last poll that found the queue empty: every message that
        #: arrived before it has been handed on (evidence for "no clock came", see
        #: MidiClockFollower.input_drained)
        self.drained_ns = time.perf_counter_ns()
        self._in: rtmidi.MidiIn | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.open()

    def open(self) -> None:
        mi = rtmidi.MidiIn(self.api, self.name, queue_size_limit=self.queue_size)
        mi.ignore_types(sysex=True, timing=False, active_sense=True)
        _open_endpoint(mi, "input", self.api, self.name, self.connect)
        with self._lock:
            self._in = mi
        self._t_src = None  # reconstructed source time (s) of the last message
        self._offset_ns: float | None = None
        self._last_relax = time.perf_counter_ns()

    def list_ports(self) -> list[str]:
        """Ports this client can read from (via its own client: no new JACK client)."""
        with self._lock:
            return list(self._in.get_ports()) if self._in is not None else []

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="bandmate-midi-in",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            got = False
            while True:
                polled = time.perf_counter_ns()
                with self._lock:
                    mi = self._in
                    if mi is None:
                        break
                    try:
                        item = mi.get_message()
                    except Exception:
                        log.warning("MIDI read failed on %r", self.name, exc_info=True)
                        item = None
                if item is None:
                    self.drained_ns = polled
                    break
                got = True
                self._dispatch(item[0], item[1], time.perf_counter_ns())
            if not got:
                time.sleep(self.poll_s)

    def _dispatch(self, data: list[int], delta: float, now_ns: int) -> None:
        self.received += 1
        self._t_src = (self._t_src or 0.0) + delta
        src_ns = self._t_src * 1e9
        # offset = min(now - src): the poll that came soonest after arrival. Relax it by
        # 100 us per second so a tiny rate difference between the clocks cannot pin it.
        if now_ns - self._last_relax > 1_000_000_000:
            if self._offset_ns is not None:
                self._offset_ns += 100_000 * (now_ns - self._last_relax) / 1e9
            self._last_relax = now_ns
        cand = now_ns - src_ns
        if self._offset_ns is None or cand < self._offset_ns:
            self._offset_ns = cand
        t_ns = int(src_ns + self._offset_ns)
        try:
            msg = mido.Message.from_bytes(data)
        except (ValueError, TypeError):
            self.bad += 1
            return
        try:
            self.handler(msg, t_ns)
        except Exception:
            log.exception("MIDI input handler failed on %s", msg)

    def _detach(self):
        """Stop the reader thread and take the rtmidi port out of this object."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        self._thread = None
        with self._lock:
            mi, self._in = self._in, None
        return mi

    def abandon(self) -> None:
        """Stop reading and forget the port without closing it (its server is gone)."""
        mi = self._detach()
        if mi is not None:
            _ABANDONED.append(mi)

    def close(self) -> None:
        mi = self._detach()
        if mi is not None:
            with contextlib.suppress(Exception):
                mi.close_port()
            mi.delete()
