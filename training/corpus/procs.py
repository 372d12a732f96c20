"""How a worker process starts: a bare fork (or spawn), a heap it keeps, a codec warmed for it.

Why a module of its own: these are operating-system details that the pool (`workers`) relies
on but that say nothing about the corpus. Each one was measured to matter on a small corpus
(docs/prepare.md, "Speed"): multiprocessing's own start-up costs ~2 ms per worker, glibc
handing freed memory back costs 12,000 page faults per pass over pop909, and the first file
a process encodes pays 20-40 ms of lazy imports, which a forked worker inherits paid.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import sys
from collections.abc import Callable
from multiprocessing.context import BaseContext

from bandmate.training.corpus.config import PrepareConfig
from bandmate.training.corpus.samples import encode_file

log = logging.getLogger("bandmate.prepare")


def mp_context() -> BaseContext:
    """Fork on Linux, spawn elsewhere (macOS, Windows)."""
    # fork starts workers in milliseconds (spawn re-imports numpy and symusic per worker:
    # bench/results/prepare-pool.json). On macOS fork exists but is unsafe once system
    # frameworks have started threads (Python itself defaults to spawn there), so it is used
    # on Linux only; nothing here depends on inherited state, so spawn works as well.
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def keep_heap() -> None:
    """Make glibc's malloc keep what a worker frees, for the next unit to reuse.

    By default big blocks (numpy arrays of 128 KiB and more) are mmapped and unmapped, and
    the top of the heap is given back, so every unit faults its memory in again, zeroed by
    the kernel: 12,000 page faults per pass over pop909 in units of 8 files, 10% of the
    encoding time, and memory traffic that two workers fight over. A worker's heap stays
    at its peak instead, which it reaches on its biggest unit anyway; it exits at the end.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_trim_threshold, 1 << 30)
    mallopt(m_mmap_threshold, 1 << 28)


class ForkedProc:
    """A worker started with a bare `os.fork()`, with the parts of `multiprocessing.Process`
    the run uses (`sentinel`, `join`, `is_alive`, `kill`). multiprocessing's own start-up
    (its bootstrap and after-fork hooks) takes the parent and the child about 2 ms more per
    worker, a few percent of the run on a small corpus."""

    def __init__(self, target: Callable, args: tuple) -> None:
        r, w = os.pipe()  # the sentinel: end of file once the child has exited
        pid = os.fork()
        if pid == 0:  # the child: never returns, never runs the parent's exit handlers
            code = 1
            try:
                os.close(r)
                target(*args)
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(w)
        self.pid, self.sentinel = pid, r
        self.exitcode: int | None = None

    def _reaped(self, status: int) -> None:
        self.exitcode = os.waitstatus_to_exitcode(status)
        os.close(self.sentinel)

    def is_alive(self) -> bool:
        if self.exitcode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._reaped(status)
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        if self.exitcode is None:
            import select

            if select.select([self.sentinel], [], [], timeout)[0]:
                self._reaped(os.waitpid(self.pid, 0)[1])

    def kill(self) -> None:
        if self.exitcode is None:
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


#: A 16-bar 4/4 MIDI file (format 0, 4 ticks per quarter): two notes, bars 1 and 16.
_WARM_MIDI = (
    b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x00\x04"
    b"MTrk\x00\x00\x00\x19"
    b"\x00\xff\x58\x04\x04\x02\x18\x08"
    b"\x00\x90\x3c\x50\x04\x80\x3c\x40"
    b"\x81\x6c\x90\x40\x50\x04\x80\x40\x40"
    b"\x00\xff\x2f\x00"
)


def warm_up(cfg: PrepareConfig) -> None:
    """Encode a tiny built-in file in the parent before forking the workers.

    The first file a process encodes pays for lazy imports (symusic pulls in an HTTP and
    e-mail stack for its soundfont downloader) and first-call set-up: about 20-40 ms. Paid
    once here, every forked worker inherits it instead of paying it again, in every run.
    """
    try:
        encode_file(_WARM_MIDI, cfg)
    except Exception as e:  # never a reason to stop: the workers would just start cold
        log.debug("warm-up encode failed: %s", e)
