"""libjack from Python, for the bridge: which libjack to load and a client that watches a server.

`libjack_path` finds the libjack that python-rtmidi loaded (one copy per process); `XrunCounter`
is a port-less libjack client (ctypes, no extra package) that counts the server's xruns and
notices when the server goes away: the bridge's port watcher uses it, and so do the tests'
private JACK servers (tests/support/jackserver.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time

_XRUN_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_SHUTDOWN_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
JackNoStartServer = 0x01
JackUseExactName = 0x02
JackServerName = 0x04


class JackError(RuntimeError):
    """The JACK server could not be started or reached; the message says what to do."""


def libjack_path() -> str:
    """The libjack that python-rtmidi uses (its wheel bundles its own copy).

    Two libjack copies in one process keep two sets of global client state; when a server
    dies, each cleans up on its own and the process crashed (seen with the bridge's port
    watcher). So the ctypes clients here load the very library rtmidi already loaded.
    """
    import rtmidi  # noqa: F401  (loads rtmidi's libjack)

    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.split()[-1]
                name = os.path.basename(path)
                if name.startswith("libjack") and ".so" in name and not name.startswith(
                        ("libjacknet", "libjackserver")):
                    return path
    except OSError:
        pass
    return ctypes.util.find_library("jack") or "libjack.so.0"


class XrunCounter:
    """A libjack client that counts the server's xruns (callback on JACK's notification thread)
    and notices when the server goes away (``shut_down`` event; the bridge's port watcher uses
    it).

    Opening it does not start a server (JackNoStartServer). It registers no ports, so it never
    takes part in the process cycle and cannot cause xruns itself.
    """

    def __init__(self, server: str, client_name: str = "bandmate-xruns") -> None:
        libname = libjack_path()
        try:
            self._lib = ctypes.CDLL(libname)
        except OSError as e:
            raise JackError(f"cannot load libjack ({e}); install jackd2 / libjack") from e
        lib = self._lib
        lib.jack_client_open.restype = ctypes.c_void_p
        lib.jack_client_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
        lib.jack_set_xrun_callback.argtypes = [ctypes.c_void_p, _XRUN_CB, ctypes.c_void_p]
        lib.jack_activate.argtypes = [ctypes.c_void_p]
        lib.jack_deactivate.argtypes = [ctypes.c_void_p]
        lib.jack_client_close.argtypes = [ctypes.c_void_p]
        lib.jack_get_buffer_size.argtypes = [ctypes.c_void_p]
        lib.jack_get_buffer_size.restype = ctypes.c_uint32
        lib.jack_get_sample_rate.argtypes = [ctypes.c_void_p]
        lib.jack_get_sample_rate.restype = ctypes.c_uint32
        lib.jack_on_shutdown.argtypes = [ctypes.c_void_p, _SHUTDOWN_CB, ctypes.c_void_p]
        self.count = 0
        self.times: list[int] = []  # perf_counter_ns when each xrun was reported
        self.shut_down = threading.Event()
        self._lock = threading.Lock()
        self._cb = _XRUN_CB(self._on_xrun)  # keep a reference: libjack holds the pointer
        self._sd = _SHUTDOWN_CB(lambda _arg: self.shut_down.set())
        # jack_client_open is variadic: pass the server name when JackServerName is set.
        lib.jack_client_open.argtypes = None
        status = ctypes.c_int(0)
        self._client = lib.jack_client_open(
            client_name.encode(),
            ctypes.c_int(JackNoStartServer | JackServerName),
            ctypes.byref(status),
            ctypes.c_char_p(server.encode()),
        )
        if not self._client:
            raise JackError(
                f"cannot open a JACK client on server {server!r} (status {status.value})"
            )
        self._client = ctypes.c_void_p(self._client)
        lib.jack_set_xrun_callback(self._client, self._cb, None)
        lib.jack_on_shutdown(self._client, self._sd, None)
        lib.jack_activate(self._client)

    def _on_xrun(self, _arg: int) -> int:
        with self._lock:
            self.count += 1
            self.times.append(time.perf_counter_ns())
        return 0

    @property
    def buffer_size(self) -> int:
        return int(self._lib.jack_get_buffer_size(self._client))

    @property
    def sample_rate(self) -> int:
        return int(self._lib.jack_get_sample_rate(self._client))

    def close(self) -> None:
        if self._client:
            if self.shut_down.is_set():
                # The server is gone. libjack frees such clients itself when the next client
                # opens; closing it here races that cleanup and crashes. Leak the handle.
                self._client = None
                return
            self._lib.jack_deactivate(self._client)
            self._lib.jack_client_close(self._client)
            self._client = None
