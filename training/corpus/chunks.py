"""A work unit's file, ``OUT/.work/chunk-NNNNNN.bin``: what a worker hands the merge.

Why a module of its own: this format is the contract between the two phases of a run and
between a killed run and its resumption. A worker writes a unit's per-file facts and its
samples' arrays under a temporary name and renames the file into place, so a chunk file
either exists whole or not at all; a torn or foreign one is recognised (`read_chunk`,
`chunk_done`) and redone. The worker also sends the parent a compact summary of the unit
(`unit_summary`), so the merge's first pass never reads back what a worker just wrote.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from bandmate.training.corpus.config import PrepareError
from bandmate.training.corpus.samples import Encoded
from bandmate.training.shards import tmp_name


@dataclass
class FileResult:
    """One file of a unit, encoded or skipped (``reason``); ``hash`` is its content digest."""

    path: str
    hash: str | None
    split: str
    reason: str | None
    enc: Encoded
    labels: dict[str, int] = field(default_factory=dict)  # INST label -> tracks in samples


def chunk_path(work: Path, c: int) -> Path:
    """The file of work unit ``c`` in the run's work folder."""
    return work / f"chunk-{c:06d}.bin"


_MAGIC = b"BMCHUNK2"
_END = b"BMCHUNKE"
_ARRAYS = (("tokens", np.uint16), ("lengths", np.int64), ("slot_pos", np.int64),
           ("slot_count", np.int64))  # fmt: skip
#: magic, header length, the byte size of each array: the merge's writers find the arrays
#: without parsing the JSON header.
LEAD = 16 + 8 * len(_ARRAYS)


def write_chunk(path: Path, results: list[FileResult]) -> dict:
    """One finished work unit, atomically; returns its counts and its pass-1 summary.

    Layout: magic, header length and array sizes (`LEAD` bytes), JSON header (per-file
    facts), the raw arrays, an end marker. Not fsynced: a kill cannot lose a renamed file
    (the page cache survives the process), and after a power loss `read_chunk` rejects a
    torn file, which is redone.
    The summary travels back to the parent with the counts, so the merge's first pass never
    has to read back what a worker of this run just wrote.
    """
    meta = [
        {
            "path": r.path,
            "hash": r.hash,
            "split": r.split,
            "reason": r.reason,
            "samples": r.enc.samples,
            "orig_samples": r.enc.n_orig,
            "tokens": len(r.enc.tokens),
            "orig_tokens": r.enc.orig_tokens,
            "labels": r.labels,
        }
        for r in results
    ]
    base = np.cumsum([0] + [len(r.enc.tokens) for r in results])
    parts = {
        "tokens": [r.enc.tokens for r in results],
        "lengths": [r.enc.lengths for r in results],
        "slot_pos": [r.enc.slot_pos + b for r, b in zip(results, base, strict=False)],
        "slot_count": [r.enc.slot_count for r in results],
    }
    arrays = {
        name: np.ascontiguousarray(np.concatenate([np.zeros(0, dt), *parts[name]]), dt)
        for name, dt in _ARRAYS
    }
    header = json.dumps({"files": meta}).encode()
    lead = [len(header)] + [arrays[name].nbytes for name, _ in _ARRAYS]
    tmp = tmp_name(path)
    with open(tmp, "wb") as fh:
        fh.write(_MAGIC + b"".join(x.to_bytes(8, "little") for x in lead) + header)
        for name, _ in _ARRAYS:
            fh.write(memoryview(arrays[name]).cast("B"))
        fh.write(_END)
    os.replace(tmp, path)
    return {
        "files": len(results),
        "samples": sum(r.enc.samples for r in results),
        "tokens": int(base[-1]),
        "skipped": sum(r.reason is not None for r in results),
        "summary": unit_summary(meta, arrays["lengths"], arrays["slot_pos"], arrays["slot_count"]),
    }


def _slot_stats(
    meta: list[dict], slot_pos: np.ndarray, slot_count: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The DENSITY slots of each file's un-augmented samples: (file of each, note count)."""
    tok = np.array([m["tokens"] for m in meta], np.int64)
    fstart = np.cumsum(tok) - tok
    orig_end = fstart + np.array([m["orig_tokens"] for m in meta], np.int64)
    fi = np.searchsorted(fstart, slot_pos, side="right") - 1
    orig = slot_pos < orig_end[fi] if len(slot_pos) else np.zeros(0, bool)
    return fi[orig], slot_count[orig]


def kept_stats(
    meta: list[dict], slot_pos: np.ndarray, slot_count: np.ndarray, keep: np.ndarray
) -> tuple[dict[str, int], np.ndarray]:
    """Label counts of the kept files, and the histogram of the note counts of the DENSITY
    slots of their un-augmented training samples (where the density edges come from)."""
    labels: dict[str, int] = {}
    for m, k in zip(meta, keep.tolist(), strict=True):
        if k:
            for lab, n in m["labels"].items():
                labels[lab] = labels.get(lab, 0) + n
    fi, counts = _slot_stats(meta, slot_pos, slot_count)
    train = np.array([m["split"] == "train" for m in meta], bool) & keep
    return labels, np.bincount(counts[train[fi]]) if len(fi) else np.zeros(0, np.int64)


def unit_summary(
    meta: list[dict], lengths: np.ndarray, slot_pos: np.ndarray, slot_count: np.ndarray
) -> dict:
    """What the merge's first pass needs of a work unit, made compact by the worker: per
    file (path, hash, reason), its split and sample count; the sample lengths; and the label
    counts and note-count histogram of the unit as if every file is kept, which it is unless
    one duplicates an earlier file (then the parent recounts from the chunk file)."""
    keep = np.array([m["reason"] is None for m in meta], bool)
    labels, hist = kept_stats(meta, slot_pos, slot_count, keep)
    return {
        "files": [(m["path"], m["hash"], m["reason"]) for m in meta],
        "train": np.array([m["split"] == "train" for m in meta], bool),
        "samples": np.array([m["samples"] for m in meta], np.int64),
        "lengths": lengths,
        "labels": labels,
        "hist": hist,
    }


def chunk_layout(fh: BinaryIO) -> tuple[int, list[int]] | None:
    """Header length and array sizes of an open chunk file, None when it is torn or foreign
    (its size must match the lead and it must end with the end marker)."""
    total = os.fstat(fh.fileno()).st_size
    lead = fh.read(LEAD)
    if len(lead) != LEAD or lead[:8] != _MAGIC:
        return None
    n, *sizes = (int.from_bytes(lead[i : i + 8], "little") for i in range(8, LEAD, 8))
    if LEAD + n + sum(sizes) + 8 != total:
        return None
    fh.seek(total - 8)
    if fh.read(8) != _END:
        return None
    fh.seek(LEAD)
    return n, sizes


def read_chunk(path: Path, arrays: bool = True) -> dict | None:
    """A work unit written by `write_chunk`, or None when the file is torn or foreign.

    ``arrays=False`` skips the tokens (the merge's first pass).
    """
    try:
        with open(path, "rb") as fh:
            lay = chunk_layout(fh)
            if lay is None:
                return None
            n, sizes = lay
            out: dict = {"meta": json.loads(fh.read(n))["files"]}
            for (name, dt), size in zip(_ARRAYS, sizes, strict=True):
                if arrays or name != "tokens":
                    out[name] = np.frombuffer(bytearray(fh.read(size)), dt)
                else:
                    fh.seek(size, os.SEEK_CUR)
            return out
    except (OSError, ValueError, KeyError, TypeError):
        return None


def chunk_done(path: Path) -> bool:
    """Cheap check for resume: the lead's sizes match the file's and the end marker is there."""
    try:
        with open(path, "rb") as fh:
            return chunk_layout(fh) is not None
    except OSError:
        return False


def load_chunk(path: Path, arrays: bool = True) -> dict:
    """`read_chunk`, for a unit that must be whole: a damaged one stops the run."""
    z = read_chunk(path, arrays)
    if z is None:
        raise PrepareError(f"{path} is damaged: run the same command again to redo it")
    return z
