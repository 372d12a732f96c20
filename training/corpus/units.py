"""What a worker does with one work unit: encode its files (phase 1), write its samples (phase 2).

Why a module of its own: this is the code that runs in the worker processes, kept apart
from the machinery that starts, feeds and watches them (`workers`). A worker is given a
`RunContext` once when it starts; after that a task is a unit number (phase 1) or a list of
planned writes (phase 2). Every per-file failure becomes a skip reason here, never a raise;
only a crash or a hang in the C++ parser gets past this module, and `workers` isolates it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bandmate.models.codec import fill_density_slots
from bandmate.models.midi_io import MidiError
from bandmate.training.corpus.chunks import (
    LEAD,
    FileResult,
    chunk_layout,
    chunk_path,
    write_chunk,
)
from bandmate.training.corpus.config import PrepareConfig, PrepareError
from bandmate.training.corpus.listing import (
    EXCLUDED_REASON,
    SourceFile,
    content_digest,
    is_excluded,
    split_of,
)
from bandmate.training.corpus.samples import (
    empty_encoded,
    encode_file,
    label_counts,
    prepare_codec,
)


@dataclass(frozen=True)
class RunContext:
    """What every worker of a run needs, given to each worker once as it starts (inherited
    through fork, pickled once with spawn), so that a task is just a unit number.

    ``file_timeout``: seconds a file may take in a worker (None: no limit; 0 means none too).
    """

    cfg: PrepareConfig
    files: Sequence[SourceFile]
    bounds: Sequence[int]  # where each work unit starts in `files`, and where the list ends
    work: Path  # OUT/.work
    file_timeout: float | None = None

    def unit_files(self, c: int) -> Sequence[SourceFile]:
        """The files of work unit ``c``."""
        return self.files[self.bounds[c] : self.bounds[c + 1]]


def process_file(
    f: SourceFile, cfg: PrepareConfig, file_timeout: float | None = None
) -> FileResult:
    """Read, hash and encode one file; every failure becomes a skip reason, never a raise.

    With a file timeout (set in workers only), a timer ends the process with SIGALRM if the
    file takes too long: a parser stuck in C++ never returns to Python, so no Python
    exception could stop it; the parent sees the worker killed by SIGALRM and skips the file
    with the reason.
    """
    # encode_source is looked up at call time: the crash-isolation tests wrap it
    # (tests/support/faults.py) before the workers fork.
    if not file_timeout or not hasattr(signal, "setitimer"):
        return encode_source(f, cfg)
    signal.setitimer(signal.ITIMER_REAL, file_timeout)
    try:
        return encode_source(f, cfg)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)


def encode_source(f: SourceFile, cfg: PrepareConfig) -> FileResult:
    """`process_file` without the timer: read, digest, exclude, split, encode, count labels."""
    try:
        with open(f.abspath, "rb") as fh:
            data = fh.read()
    except OSError as e:
        reason = f"cannot read the file: {e.strerror}"
        return FileResult(f.path, None, "train", reason, empty_encoded())
    digest = content_digest(data)
    if is_excluded(digest, cfg):
        return FileResult(f.path, digest.hex(), "train", EXCLUDED_REASON, empty_encoded())
    split = split_of(f.path, digest, cfg)
    meter = cfg.meter_of(int(f.key.split("/", 1)[0])) if len(cfg.meters) > 1 else None
    try:
        enc = encode_file(data, cfg, augment=split == "train", meter=meter)
        reason = None
    except MidiError as e:
        enc, reason = empty_encoded(), str(e)
    except Exception as e:  # a bug or a parser failure on odd data: skip, never stop the batch
        enc = empty_encoded()
        reason = f"unexpected error ({type(e).__name__}: {e}); please report this file"
    labels = label_counts(enc.tokens, prepare_codec(cfg).vocab) if reason is None else {}
    return FileResult(f.path, digest.hex(), split, reason, enc, labels)


def run_chunk(ctx: RunContext, c: int) -> dict:
    """Encode work unit `c` into its chunk file (phase 1, in a worker); returns its counts
    and summary (`write_chunk`)."""
    results = [process_file(f, ctx.cfg, ctx.file_timeout) for f in ctx.unit_files(c)]
    return write_chunk(chunk_path(ctx.work, c), results)


# --------------------------------------------------------------------------- phase 2

_START_WRITEBACK = sys.platform.startswith("linux") and hasattr(os, "posix_fadvise")


class Scratch:
    """A writer's token buffer, kept between work units (a fresh one per unit costs a page
    fault per 4 KiB, more than the copy itself)."""

    def __init__(self) -> None:
        self._buf = np.zeros(0, np.uint16)

    def tokens(self, n: int) -> np.ndarray:
        """A buffer of ``n`` tokens (its contents are left over from the last unit)."""
        if len(self._buf) < n:
            self._buf = np.empty(max(n, 2 * len(self._buf)), np.uint16)
        return self._buf[:n]


def write_unit(task: tuple, scratch: Scratch) -> int:
    """Write one work unit's samples to their planned places in the shard files.

    ``task = (chunk file, density edges, parts)``; each part is ``(sample ranges, segments)``
    for one split: the unit's samples that go there (ranges of kept files) and where their
    tokens go: ``(shard file, token offset, first, end)`` over those tokens. The parent
    planned every place, so units are written in any order, by any process, with positioned
    writes into pre-sized files.
    """
    path, edges, parts = task
    with open(path, "rb") as fh:
        lay = chunk_layout(fh)
        if lay is None:
            raise PrepareError(f"{path} is damaged: run the same command again to redo it")
        n, sizes = lay
        fh.seek(LEAD + n)
        tokens = scratch.tokens(sizes[0] // 2)
        if fh.readinto(memoryview(tokens).cast("B")) != sizes[0]:
            raise PrepareError(f"{path} is damaged: run the same command again to redo it")
        lengths = np.frombuffer(fh.read(sizes[1]), np.int64)
        slot_pos = np.frombuffer(fh.read(sizes[2]), np.int64)
        slot_count = np.frombuffer(fh.read(sizes[3]), np.int64)
    fill_density_slots(tokens, slot_pos, slot_count, edges)
    cum = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=cum[1:])
    written = 0
    for ranges, segments in parts:
        pieces = [tokens[cum[a] : cum[b]] for a, b in ranges]
        sel = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        if segments[-1][3] != len(sel):
            raise PrepareError(f"{path} does not match the plan: run the same command again")
        for shard, offset, a, b in segments:
            fd = os.open(shard, os.O_WRONLY)
            try:
                os.pwrite(fd, memoryview(sel[a:b]).cast("B"), offset * 2)
                if _START_WRITEBACK:
                    # On Linux this starts writing these pages to disk now (and drops only
                    # pages already clean), so the final fsync finds little left to do and
                    # the disk works while the writers copy.
                    os.posix_fadvise(fd, offset * 2, (b - a) * 2, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            written += b - a
    return written


def write_group(tasks: list[tuple], scratch: Scratch | None = None) -> int:
    """A writer's share of the merge (`write_unit` for each task, one buffer for all);
    returns the tokens written. The caller makes the shards durable."""
    scratch = scratch or Scratch()
    return sum(write_unit(t, scratch) for t in tasks)
