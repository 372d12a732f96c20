"""A run of ``bandmate prepare``: the output folder's state, the lock, resume, progress, order.

Why a module of its own: this is the one place that knows the order of a run (list the
files, check the folder, lock it, hand out the units, merge, clean up) and what a user sees
of it (the log lines, the progress bar, the refusals). The pieces it orders are in the
sibling modules: `listing` (which files, which units), `workers` and `units` (the work),
`merge` (the output). A restart with the same arguments skips finished units and redoes the
merge, so a kill at any moment ends in the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import IO

from bandmate.training.corpus.chunks import chunk_done, chunk_path
from bandmate.training.corpus.config import (
    DEFAULT_FILE_TIMEOUT,
    PrepareConfig,
    PrepareError,
    config_hash,
)
from bandmate.training.corpus.listing import Listing, list_sources, select_shard, unit_bounds
from bandmate.training.corpus.merge import UnitFold, fsync_dir, merge
from bandmate.training.corpus.procs import mp_context, warm_up
from bandmate.training.corpus.units import RunContext
from bandmate.training.corpus.workers import Workers, isolate_chunk
from bandmate.training.run_folder import exclusive_lock
from bandmate.training.shards import tmp_name

log = logging.getLogger("bandmate.prepare")

#: The work folder inside OUT: chunk files, the state file, the lock. Removed at the end.
WORK = ".work"


class FolderState(enum.Enum):
    """What the output folder holds when a run starts (`check_out`)."""

    DONE = "done"  # finished with the same arguments: nothing to do
    RESUME = "resume"  # an interrupted run with the same arguments and files: finish it
    FRESH = "fresh"  # empty, or missing
    STALE = "stale"  # ours, but its state file is unreadable: start this folder over

    @property
    def starts_over(self) -> bool:
        """Nothing in the work folder is reused."""
        return self in (FolderState.FRESH, FolderState.STALE)


@dataclass
class Progress:
    """Counts for the progress bar and the summary line (workers' view, before dedup)."""

    files: int = 0
    samples: int = 0
    tokens: int = 0
    skipped: int = 0

    def add(self, d: dict) -> None:
        self.files += d["files"]
        self.samples += d["samples"]
        self.tokens += d["tokens"]
        self.skipped += d["skipped"]


def lock_folder(work: Path) -> IO | None:
    """An exclusive lock on OUT/.work (`exclusive_lock`), so two runs never write the same
    folder at once; returns the open lock file (the lock lives as long as it is open)."""
    try:
        return exclusive_lock(work / "lock")
    except BlockingIOError:
        raise PrepareError(
            f"another `bandmate prepare` is writing to {work.parent}: wait for it to finish"
        ) from None


def check_out(out: Path, chash: str, listing: Listing) -> FolderState:
    """What ``out`` holds for a run with config hash ``chash``; refuses a folder that is not
    ours, or holds a run with other arguments or over changed files."""
    work = out / WORK
    man = out / "manifest.json"
    if man.exists():
        try:
            same = json.loads(man.read_text()).get("config_hash") == chash
        except (OSError, ValueError):
            same = False
        if same:
            return FolderState.DONE
        raise PrepareError(
            f"{out} already holds prepared data made with other arguments: "
            "choose a new -o folder, or delete this one"
        )
    state = work / "state.json"
    if state.exists():
        try:
            s = json.loads(state.read_text())
        except (OSError, ValueError):
            log.warning(
                "%s is unreadable (the machine stopped while it was written?): "
                "starting this folder over",
                state,
            )
            return FolderState.STALE
        if s.get("config_hash") != chash:
            raise PrepareError(
                f"{out} holds an interrupted run made with other arguments "
                f"(see {state}): run again with the same arguments to finish it, "
                "or delete the folder to start over"
            )
        if s.get("listing_hash") != listing.hash:
            raise PrepareError(
                f"the MIDI files changed since the interrupted run in {out} started: "
                "delete the folder to start over"
            )
        return FolderState.RESUME
    others = [p for p in out.iterdir() if p.name != WORK] if out.exists() else []
    if others:
        raise PrepareError(f"{out} is not empty: choose a new -o folder, or empty this one")
    return FolderState.FRESH


def write_state(path: Path, state: dict) -> None:
    """The run's state file, written whole or not at all. Not fsynced: after a power loss
    an unreadable one only means starting the folder over (`check_out` says so)."""
    tmp = tmp_name(path)
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def _work_and_merge(
    ctx: RunContext,
    out: Path,
    listing: Listing,
    state: FolderState,
    chash: str,
    procs: Workers | None,
    mpc: BaseContext,
    progress: bool | None,
) -> dict:
    """The work phase and the merge."""
    cfg, work, bounds = ctx.cfg, ctx.work, ctx.bounds
    files = listing.files
    n_chunks = len(bounds) - 1
    fresh = state.starts_over
    units = []
    done_before = []
    done_files = 0
    if fresh:
        # Nothing here is ours to reuse: every unit is (re)done and its file rewritten. A
        # left-over temporary file is never reused (its name has a dead process's id).
        if state is FolderState.STALE:
            for p in work.glob("chunk-*"):
                p.unlink()
        units = list(range(n_chunks))
    else:
        for p in work.glob("*.tmp*"):
            p.unlink()
        for c in range(n_chunks):
            cp = chunk_path(work, c)
            if cp.exists() and chunk_done(cp):
                done_files += bounds[c + 1] - bounds[c]
                done_before.append(c)
            else:
                units.append(c)

    def by_size() -> Callable[[int], object]:
        """Biggest units first (by bytes, a fair proxy for work), so the run does not end
        waiting on one large unit; the output does not depend on the order units finish in.
        As a key for the queue, which hands out its last item first."""
        sizes = listing.sizes
        unit_bytes = {c: sum(sizes[bounds[c] : bounds[c + 1]]) for c in units}
        return lambda c: (unit_bytes[c], -c)

    if not fresh:  # the listing is hashed already (the resume check)
        key = by_size()
        units.sort(key=key, reverse=True)
    log.info(
        "prepare: %d files in %d work units (%d done before), %d workers -> %s",
        len(files),
        n_chunks,
        len(done_before),
        procs.n if procs else 1,
        out,
    )
    prog = Progress(files=done_files)
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: workers are forked
        bar = tqdm(total=len(files), initial=done_files, unit="file", desc="prepare")

    p1 = UnitFold(cfg, work, n_chunks, out)

    def on_done(c: int, d: dict) -> None:
        prog.add(d)
        p1.offer(c, d["summary"])
        if bar is not None:
            bar.update(d["files"])
            bar.set_postfix(
                samples=prog.samples, tokens=prog.tokens, skipped=prog.skipped, refresh=False
            )

    def meanwhile() -> Callable[[int], object] | None:
        """The parent's own start-up work, done while the workers take their first units."""
        for c in done_before:
            p1.offer(c, None)
        if not fresh:
            return None
        # A kill before this is written only means starting over next time.
        write_state(
            work / "state.json",
            {
                "config_hash": chash,
                "listing_hash": listing.hash,
                "chunks": n_chunks,
                "config": cfg.to_json(),
            },
        )
        return by_size()

    try:
        died = procs.encode(units, on_done, meanwhile) if procs else []
        if not procs:
            meanwhile()
        for c in sorted(died):
            on_done(c, isolate_chunk(ctx, c, mpc))
    finally:
        if bar is not None:
            bar.close()
    return merge(out, work, cfg, len(files), chash, p1, procs)


def prepare(
    cfg: PrepareConfig,
    out: str | Path,
    workers: int | None = None,
    progress: bool | None = None,
    file_timeout: float | None = DEFAULT_FILE_TIMEOUT,
) -> dict:
    """Run (or resume) a preparation; returns the manifest.

    `file_timeout`: seconds a file may take in a worker before it is skipped as damaged
    (None or 0: no limit; POSIX only). Like `workers` it is not part of the configuration:
    only a file that hits it changes the output, by being skipped.
    """
    out = Path(out)
    workers = workers or default_workers()
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if file_timeout is not None and file_timeout < 0:
        raise ValueError("file_timeout must be >= 0 (0 = no limit)")
    t0 = time.perf_counter()
    files = select_shard(list_sources(cfg.sources), cfg.shard)
    listing = Listing(files)
    chash = config_hash(cfg)
    if out.exists() and not out.is_dir():
        raise PrepareError(f"{out} is a file: -o needs a folder")
    state = check_out(out, chash, listing)
    if state is FolderState.DONE:
        shutil.rmtree(out / WORK, ignore_errors=True)
        log.info("%s already holds this preparation (same arguments): nothing to do", out)
        return json.loads((out / "manifest.json").read_text())
    work = out / WORK
    work.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(work)  # noqa: F841 (held until this function returns)
    bounds = unit_bounds(len(files), cfg.chunk_files)
    n_chunks = len(bounds) - 1
    ctx = RunContext(cfg, files, bounds, work, file_timeout)
    mpc = mp_context()
    # The workers start as their first units are handed out; fork copies the warmed codec.
    n_proc = min(workers, n_chunks)
    if n_proc and mpc.get_start_method() == "fork":
        warm_up(cfg)
    procs = Workers(n_proc, ctx, mpc) if n_proc else None
    ok = False
    try:
        manifest = _work_and_merge(ctx, out, listing, state, chash, procs, mpc, progress)
        ok = True
        # A kill from here on finds the manifest: .work is needed no more. The workers
        # remove their share of it while the renames are made durable (a thread: it waits
        # on the disk) and the parent removes the rest.
        syncing = threading.Thread(target=fsync_dir, args=(out,))
        syncing.start()
        chunks = [str(chunk_path(work, c)) for c in range(n_chunks)]
        for path in procs.release(chunks) if procs is not None else chunks:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if procs is not None:
            procs.wait_released()
    finally:
        if procs is not None:
            procs.close(wait=False) if ok else procs.kill()
    shutil.rmtree(work, ignore_errors=True)
    syncing.join()
    if not manifest["samples"]["train"]:
        log.warning("no training samples were written: see the skipped files in the manifest")
    if not manifest["samples"]["val"] and cfg.val_fraction > 0 and manifest["files_ok"]:
        log.warning(
            "no validation samples: none of the %d usable files fell into the held-out share "
            "(--val-fraction %g); raise it for a corpus this small",
            manifest["files_ok"],
            cfg.val_fraction,
        )
    log.info(
        "prepared %d files (%d ok, %d skipped, %d duplicates): train %d samples / %d tokens, "
        "val %d samples / %d tokens in %.1f s",
        manifest["files_total"],
        manifest["files_ok"],
        manifest["files_skipped"],
        manifest["duplicates"],
        manifest["samples"]["train"],
        manifest["tokens"]["train"],
        manifest["samples"]["val"],
        manifest["tokens"]["val"],
        time.perf_counter() - t0,
    )
    return manifest


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
