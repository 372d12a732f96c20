"""Start, watch and stop a private JACK server (the dummy backend) for tests and benchmarks.

Test support (tests/support), not part of the bandmate package; the xrun counter it opens is
`bandmate.bridge.jack_client.XrunCounter`.

Why: bandmate's bridge is tested on a real JACK server, never a fake, and tests must not touch a
server the user runs. Each test session starts its own named server
(``jackd -n NAME -d dummy -r 48000 -p 256``), points ``JACK_DEFAULT_SERVER`` at it and stops
it by its PID. The xrun count comes from a tiny libjack client (ctypes, no extra package) that
registers an xrun callback, so a benchmark can tell MIDI that JACK dropped in an xrun apart from
MIDI that bandmate lost.

Usage::

    with JackServer("bm-test", period=256) as srv:
        ...                      # os.environ["JACK_DEFAULT_SERVER"] == "bm-test"
        print(srv.xruns)
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bandmate.bridge.jack_client import JackError, XrunCounter

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so a killed test run cannot leave its
    jackd behind (JACK allows only a few servers at once)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def jackd_path() -> str:
    """Path of ``jackd``, or a JackError telling the user how to install it."""
    path = shutil.which("jackd")
    if path is None:
        raise JackError(
            "jackd not found: install JACK 2 (Debian/Ubuntu: "
            "'sudo apt-get install --no-install-recommends jackd2')"
        )
    return path


REGISTRY = Path("/dev/shm/jack-shm-registry")


def stale_server_names(registry: Path = REGISTRY) -> list[str]:
    """Names of JACK servers in the shared registry whose process is gone.

    Why: JACK keeps at most 8 servers in /dev/shm/jack-shm-registry and frees a dead server's
    slot only when a server of the *same name* starts again. Servers that were killed (a
    crashed test run) leave their slot taken for good, and after 8 of them no jackd starts
    ("Too many servers already active"). Only servers whose PID is not alive are listed.
    """
    try:
        data = registry.read_bytes()[:8192]
    except OSError:
        return []
    names = []
    for m in re.finditer(rb"jack-\d+:([^\0:]+):?\0", data):
        start = m.start()
        if start < 4:
            continue
        pid = int.from_bytes(data[start - 4:start], "little", signed=True)
        if pid <= 0:
            continue
        try:
            os.kill(pid, 0)
            continue  # alive (or not ours to judge): leave it
        except ProcessLookupError:
            names.append(m.group(1).decode(errors="replace"))
        except PermissionError:
            continue
    return names


def reclaim_stale_servers(registry: Path = REGISTRY) -> int:
    """Start and cleanly stop (SIGTERM) each stale server name once: that frees its slot."""
    n = 0
    for name in stale_server_names(registry):
        srv = JackServer(name, set_env=False, reclaim=False)
        try:
            srv.start(timeout=5.0)
            n += 1
        except JackError as e:
            log.debug("could not reclaim %s: %s", name, e)
        finally:
            srv.stop()
    if n:
        log.info("freed %d stale JACK server slot(s) left by killed servers", n)
    return n


class JackServer:
    """A private ``jackd`` with the dummy backend, owned by this process.

    ``start()`` waits until clients can connect, sets ``JACK_DEFAULT_SERVER`` (and
    ``JACK_NO_START_SERVER=1`` so libjack never auto-starts another server) and opens an
    :class:`XrunCounter`. ``stop()`` sends SIGTERM to exactly this server's PID (SIGKILL after a
    grace period) and restores the environment.
    """

    def __init__(
        self,
        name: str | None = None,
        period: int = 256,
        rate: int = 48000,
        set_env: bool = True,
        reclaim: bool = True,
    ) -> None:
        if period < 16 or period & (period - 1):
            raise ValueError(f"period must be a power of two >= 16, got {period}")
        if rate not in (22050, 44100, 48000, 88200, 96000):
            raise ValueError(f"rate must be one of 22050, 44100, 48000, 88200, 96000, got {rate}")
        self.name = name or f"bandmate-{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"
        self.period = period
        self.rate = rate
        self.set_env = set_env
        self.reclaim = reclaim
        self.proc: subprocess.Popen | None = None
        self._log_path: Path | None = None
        self._counter: XrunCounter | None = None
        self._old_env: dict[str, str | None] = {}

    @property
    def period_ms(self) -> float:
        return 1000.0 * self.period / self.rate

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def env(self) -> dict[str, str]:
        """Environment for a child process that must use this server."""
        e = dict(os.environ)
        e["JACK_DEFAULT_SERVER"] = self.name
        e["JACK_NO_START_SERVER"] = "1"
        return e

    def start(self, timeout: float = 10.0) -> JackServer:
        exe = jackd_path()
        fd, path = tempfile.mkstemp(prefix=f"jackd-{self.name}-", suffix=".log")
        self._log_path = Path(path)
        cmd = [exe, "-n", self.name, "-d", "dummy", "-r", str(self.rate), "-p", str(self.period)]
        env = dict(os.environ, JACK_NO_START_SERVER="1")
        self.proc = subprocess.Popen(
            cmd, stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        os.close(fd)
        deadline = time.monotonic() + timeout
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self.reclaim and "Too many servers" in self.log_text():
                    self.reclaim = False
                    if reclaim_stale_servers():
                        return self.start(timeout)
                raise JackError(
                    f"jackd exited with code {self.proc.returncode}: {self.log_text()[-600:]}"
                    " (is another server with this name running? try another name)"
                )
            try:
                self._counter = XrunCounter(self.name)
                break
            except JackError as e:
                last_err = e
                time.sleep(0.1)
        else:
            self.stop()
            raise JackError(f"jackd did not come up in {timeout:.0f} s: {last_err}")
        if self.set_env:
            for k, v in (("JACK_DEFAULT_SERVER", self.name), ("JACK_NO_START_SERVER", "1")):
                self._old_env[k] = os.environ.get(k)
                os.environ[k] = v
        log.info("jackd %r up: pid %d, %d frames @ %d Hz", self.name, self.pid, self.period,
                 self.rate)
        return self

    @property
    def xruns(self) -> int:
        """Xruns since start, as reported to our xrun-callback client."""
        return self._counter.count if self._counter else 0

    @property
    def xrun_times(self) -> list[int]:
        """``perf_counter_ns`` of each xrun report (JACK's notification thread, so a little
        after the cycle that overran)."""
        return list(self._counter.times) if self._counter else []

    def log_text(self) -> str:
        """What jackd printed so far (stdout and stderr)."""
        if self._log_path and self._log_path.exists():
            return self._log_path.read_text(errors="replace")
        return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 3.0) -> None:
        if self._counter is not None:
            try:
                self._counter.close()
            except Exception:  # the server may be gone already
                log.debug("xrun counter close failed", exc_info=True)
            self._counter = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(grace)
        for k, v in self._old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._old_env.clear()
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> JackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
