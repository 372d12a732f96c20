"""The run's worker processes: own forked workers, a pipe each, per-file timeouts, crash isolation.

Why a module of its own: this is the part of ``bandmate prepare`` that deals with processes
(start, feed, watch, replace, stop) and nothing else; what a worker does with a unit is in
`units`. The pool is deliberately not a ``ProcessPoolExecutor``: no manager thread and no
futures, one small message per unit for the parent, and a worker that dies (a crash or a
timeout in the C++ parser) points at the unit that killed it, which is re-run one file per
process so that only the culprit is skipped (docs/prepare.md, "Crash isolation").
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext

from bandmate.training.corpus.chunks import FileResult, chunk_path, write_chunk
from bandmate.training.corpus.config import PrepareConfig, PrepareError
from bandmate.training.corpus.listing import SourceFile
from bandmate.training.corpus.procs import ForkedProc, keep_heap
from bandmate.training.corpus.samples import empty_encoded
from bandmate.training.corpus.units import (
    RunContext,
    Scratch,
    process_file,
    run_chunk,
    write_group,
)

log = logging.getLogger("bandmate.prepare")

#: Work units a worker holds at once: one it works on and one waiting in its pipe, so it
#: never waits for the parent between units.
_PREFETCH = 2


def worker_main(
    conn: Connection, ctx: RunContext, parent_ends: Sequence[Connection] = ()
) -> None:
    """A worker's life: encode the units the parent sends, then serve the merge's writes.

    Messages in: ``("encode", c)``, ``("write", tasks)``; end of file or ``("exit", files)``
    (files to remove first) ends it. Out: ``("done", c, counts)``, ``("written", tokens)``,
    ``("error", where, text)``. ``parent_ends``: the parent's ends of the workers' pipes,
    inherited through fork (this worker's own included): ours to close, not to use, so that
    a worker sees end of file the moment the parent dies, whoever else still runs.
    """
    for end in parent_ends:
        end.close()
    # Ctrl-C reaches the whole process group: the parent alone handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGALRM"):  # the file watchdog's: it must end the process
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    if hasattr(os, "nice"):
        # One step below the parent: a worker woken with work must not take the CPU from
        # the parent while it is still handing out work to the others.
        with contextlib.suppress(OSError):
            os.nice(1)
    keep_heap()
    scratch = Scratch()  # reused by every unit this worker writes
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        kind = msg[0]
        if kind == "exit":
            for path in msg[1] if len(msg) > 1 else ():  # the run's work files to remove
                with contextlib.suppress(OSError):
                    os.unlink(path)
            with contextlib.suppress(OSError):
                conn.send(("bye",))  # removed; the parent need not wait for the exit itself
            return
        try:
            if kind == "encode":
                out = ("done", msg[1], run_chunk(ctx, msg[1]))
            elif kind == "write":
                out = ("written", write_group(msg[1], scratch))
            else:
                out = ("error", kind, "unknown message")
        except Exception as e:  # disk full, a folder removed under us: the parent says so
            out = ("error", msg[1] if kind == "encode" else kind, f"{type(e).__name__}: {e}")
        try:
            conn.send(out)
        except (BrokenPipeError, OSError):
            return


def one_file_main(
    conn: Connection, f: SourceFile, cfg: PrepareConfig, file_timeout: float | None
) -> None:
    """A process of its own for one file of a unit whose worker died (module level: spawn)."""
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    conn.send(process_file(f, cfg, file_timeout))
    conn.close()


def isolate_chunk(ctx: RunContext, c: int, mpc: BaseContext) -> dict:
    """Re-run unit ``c``, whose worker died, one file per process (of the start method
    ``mpc``), to find the culprit: a file whose process dies is skipped, with the reason
    its exit status gives. Returns the unit's counts and summary, as `run_chunk` does."""
    file_timeout = ctx.file_timeout
    results = []
    for f in ctx.unit_files(c):
        here, there = mpc.Pipe(duplex=False)
        p = mpc.Process(target=one_file_main, args=(there, f, ctx.cfg, file_timeout))
        p.daemon = True
        p.start()
        there.close()
        try:
            r = here.recv()
        except (EOFError, OSError):
            r = None
        p.join()
        here.close()
        if r is None:
            if hasattr(signal, "SIGALRM") and p.exitcode == -signal.SIGALRM:
                reason = (
                    f"reading it took more than {file_timeout:g} s (--file-timeout): the "
                    "file is probably damaged"
                )
            else:
                reason = "the MIDI parser crashed on this file"
            log.warning("%s: %s; skipped", f.path, reason)
            r = FileResult(f.path, None, "train", reason, empty_encoded())
        results.append(r)
    return write_chunk(chunk_path(ctx.work, c), results)


class Workers:
    """The run's worker processes, started once and used by both phases.

    Each worker has its own pipe and holds up to `_PREFETCH` units, so it goes from one unit
    to the next without waiting for the parent, and the parent's part is one small message
    per unit (a process pool's manager thread and per-task futures cost the parent more CPU
    than a chorale unit takes to merge, CPU the workers need on a machine with few cores).
    A unit is only ever sent to one worker, and a worker works through its units in order,
    so when a worker dies the first unit it had not answered is the one that killed it.
    """

    def __init__(self, n: int, ctx: RunContext, mpc: BaseContext) -> None:
        self.mpc = mpc  # how processes start: fork (bare, `ForkedProc`) or spawn
        self.ctx = ctx
        self.procs: list = [None] * n
        self.conns: list = [None] * n
        self.held: list[list[int]] = [[] for _ in range(n)]
        self.writing: dict[int, list[tuple]] = {}
        self.released = False

    def ensure(self, i: int) -> None:
        """Start worker i if it is not running yet (they start as work is handed out)."""
        if self.procs[i] is None:
            self._start(i)

    @property
    def n(self) -> int:
        return len(self.procs)

    def _start(self, i: int) -> None:
        here, there = self.mpc.Pipe()
        if self.mpc.get_start_method() == "fork":
            # The child inherits the parent's end of every worker's pipe, its own included:
            # it closes them, so that it sees end of file the moment the parent dies.
            ends = [c for c in self.conns if c is not None] + [here]
            p = ForkedProc(worker_main, (there, self.ctx, ends))
        else:
            p = self.mpc.Process(
                target=worker_main, args=(there, self.ctx), daemon=True, name=f"prepare-{i}"
            )
            p.start()
        there.close()
        self.procs[i], self.conns[i] = p, here
        self.held[i] = []

    def _send(self, i: int, msg: tuple) -> None:
        # If it died, its sentinel tells, and the units it held are handled there.
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conns[i].send(msg)

    def _reap(self, i: int) -> None:
        """Forget worker i (it died or is done) and free its pipe."""
        p, conn = self.procs[i], self.conns[i]
        if p is None:
            return
        self.procs[i] = self.conns[i] = None
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()
        conn.close()

    def encode(
        self,
        units: Sequence[int],
        on_done: Callable[[int, dict], None],
        meanwhile: Callable[[], Callable[[int], object] | None] | None = None,
    ) -> list[int]:
        """Encode `units` (in this order of priority); returns the units whose worker died.

        `meanwhile` runs once the workers have their first units (the parent's own start-up
        work); it may return a sort key that reorders the units not yet handed out, biggest
        key first.
        """
        import selectors

        queue = list(reversed(units))  # pop() from the end = next in priority
        died: list[int] = []
        sel = selectors.DefaultSelector()  # one for the phase: the parent wakes once a unit

        def watch(i: int) -> None:
            sel.register(self.conns[i], selectors.EVENT_READ, i)
            sel.register(self.procs[i].sentinel, selectors.EVENT_READ, i)

        def feed(i: int) -> None:
            # Near the end a unit waits in no one's pipe: whoever is free first takes it.
            depth = _PREFETCH if len(queue) > self.n * _PREFETCH else 1
            while queue and len(self.held[i]) < depth:
                c = queue.pop()
                self.held[i].append(c)
                self._send(i, ("encode", c))

        def take(i: int, msg: tuple) -> None:
            if msg[0] == "error":
                raise PrepareError(
                    f"work unit {msg[1]} failed: {msg[2]} (is the disk full?); fix it and "
                    "run the same command again to resume"
                )
            _, c, counts = msg
            self.held[i].remove(c)
            on_done(c, counts)

        try:
            for i in range(self.n):  # each starts working while the next one is forked
                self.ensure(i)
                watch(i)
                feed(i)
            if meanwhile is not None:
                key = meanwhile()
                if key is not None:
                    queue.sort(key=key)
            while any(self.held):
                events = sel.select()
                ready = {key.fileobj for key, _ in events}
                for i in sorted({key.data for key, _ in events}):
                    conn, sentinel = self.conns[i], self.procs[i].sentinel
                    gone = False
                    if conn in ready:
                        # One message per wake: the selector is level-triggered, so a second
                        # one waiting wakes the next select() at once (conn.poll() would
                        # build a selector of its own per call).
                        try:
                            take(i, conn.recv())
                        except (EOFError, OSError):
                            gone = True
                    if not gone and sentinel in ready:
                        gone = True
                        # What it sent before it died still counts.
                        with contextlib.suppress(EOFError, OSError):
                            while conn.poll(0):
                                take(i, conn.recv())
                    if gone:
                        sel.unregister(conn)
                        sel.unregister(sentinel)
                        if self.held[i]:
                            c, *rest = self.held[i]
                            log.warning(
                                "a worker died in work unit %d: re-running its files one by one",
                                c,
                            )
                            died.append(c)
                            queue.extend(reversed(rest))
                        self._reap(i)
                        self._start(i)
                        watch(i)
                    feed(i)
        finally:
            sel.close()
        return died

    def send_writes(self, groups: list[list[tuple]]) -> None:
        """Hand out the merge's write tasks, one group per worker; `wait_writes` collects."""
        self.writing = {}
        for i, g in enumerate(groups):
            if g:
                self.ensure(i)
                self._send(i, ("write", g))
                self.writing[i] = g

    def wait_writes(self) -> int:
        from multiprocessing.connection import wait as wait_any

        waiting, written = self.writing, 0
        while waiting:
            objs = {self.conns[i]: i for i in waiting} | {
                self.procs[i].sentinel: i for i in waiting
            }
            for obj in wait_any(list(objs)):
                i = objs[obj]
                if i not in waiting:
                    continue
                try:
                    msg = self.conns[i].recv()
                except (EOFError, OSError):
                    # A writer does no parsing, so this is no bad file: do its part here.
                    # No replacement: the merge's sync threads are running, and forking
                    # beside threads is unsafe; what is left (removing work files) needs none.
                    log.warning("a worker died during the merge: writing its part here")
                    written += write_group(waiting.pop(i))
                    self._reap(i)
                    continue
                if msg[0] == "error":
                    raise PrepareError(f"writing the shards failed: {msg[2]} (is the disk full?)")
                written += msg[1]
                del waiting[i]
        return written

    def release(self, remove: Sequence[str] = ()) -> list[str]:
        """Tell every worker to exit, without waiting, first removing its share of `remove`
        (the run's work files: unlinking frees their page cache, which takes a while).
        Returns the share no worker took."""
        live = [i for i in range(self.n) if self.procs[i] is not None]
        if self.released or not live:
            return list(remove)
        self.released = True
        share = -(-len(remove) // (len(live) + 1))  # the parent takes a share too
        for j, i in enumerate(live):
            self._send(i, ("exit", list(remove[j * share : (j + 1) * share])))
        return list(remove[len(live) * share :])

    def wait_released(self) -> None:
        """Wait until every released worker has done what it was told (its "bye", or its
        end of file), not for its exit: tearing down a process takes a millisecond or two."""
        for conn in self.conns:
            if conn is None:
                continue
            with contextlib.suppress(EOFError, OSError):
                while conn.recv()[0] != "bye":
                    pass

    def close(self, wait: bool = True) -> None:
        """Release the workers and reap them: now, or (`wait=False`) in a background thread,
        once they have exited."""
        self.release()
        if wait:
            for i in range(self.n):
                self._reap(i)
            return
        threading.Thread(
            target=lambda: [self._reap(i) for i in range(self.n)], daemon=True, name="reaper"
        ).start()

    def kill(self) -> None:
        """Stop now (an error or Ctrl-C in the parent): what they write is never read."""
        for p in self.procs:
            if p is not None and p.is_alive():
                p.kill()
        for i in range(self.n):
            self._reap(i)
