"""The merge: the work units' files -> shards (or text), indexes, tokenizer and manifest.

Why a module of its own: this is where "the same bytes for any ``--workers``, after any
kill" is made. Pass 1 (`UnitFold`) folds the units' summaries in listing order as they finish,
whichever worker finished first: dedup, skips, label counts, the note counts the density
edges come from, and the planned place of every sample in the shards. Pass 2 (`merge`)
fills the DENSITY slots and writes every sample to its planned place (by the workers, in
parallel), makes every file durable under a temporary name, renames it into place, and
writes the manifest last. It only reads ``.work`` and rewrites every output file, so a
killed merge is simply done again.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from bandmate.models.codec import fill_density_slots
from bandmate.models.vocab import Vocab
from bandmate.training.corpus.chunks import chunk_path, kept_stats, load_chunk, unit_summary
from bandmate.training.corpus.config import PrepareConfig
from bandmate.training.corpus.samples import density_edges_from_hist
from bandmate.training.corpus.units import write_group
from bandmate.training.shards import (
    SPLITS,
    ShardPlanner,
    atomic_write_bytes,
    index_path,
    shard_path,
    tmp_name,
)

from bandmate import __version__

if TYPE_CHECKING:  # the pool is only handed in: no import at run time
    from bandmate.training.corpus.workers import Workers


class UnitFold:
    """The merge's first pass, fed work unit by work unit in listing order as they finish:
    dedup (the first path with a given hash wins, so the order matters), skips, label counts,
    each split's sample lengths, and the histogram of un-augmented training note counts that
    the density edges come from. Units that finish early wait in `pending`.

    Every sample's place in the shards depends only on the samples before it, so each unit
    is planned here too, with its write task (all but the density edges, which need every
    unit): the merge has little left to do when the last unit comes in."""

    def __init__(self, cfg: PrepareConfig, work: Path, n_chunks: int, out: Path) -> None:
        self.work = work
        tag = f".tmp{os.getpid()}"
        names: dict[tuple[str, int], str] = {}

        def shard_file(split: str, k: int) -> str:
            name = names.get((split, k))
            if name is None:
                name = names[split, k] = str(shard_path(out, split, k)) + tag
            return name

        self.shard_file = {s: functools.partial(shard_file, s) for s in SPLITS}
        self.planners = {s: ShardPlanner(cfg.shard_tokens) for s in SPLITS}
        self.rows: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        self.tasks: list[tuple[str, list, int]] = []  # (chunk file, parts, tokens)
        self.n_chunks = n_chunks
        self.want_edges = cfg.density_bins > 1 and not cfg.density_edges
        self.pending: dict[int, dict] = {}
        self.from_disk: set[int] = set()
        self.next = 0
        self.seen: dict[str, str] = {}
        self.keep: list[np.ndarray] = []
        self.skipped: list[dict] = []
        self.dup_list: list[dict] = []
        self.hist = np.zeros(1, np.int64)
        self.labels: dict[str, int] = {}

    def offer(self, c: int, summary: dict | None) -> None:
        """Unit c is finished; None = read its summary from its chunk file when its turn comes."""
        if summary is None:
            self.from_disk.add(c)
        else:
            self.pending[c] = summary
        while self.next in self.pending or self.next in self.from_disk:
            c = self.next
            if c in self.from_disk:
                self.from_disk.discard(c)
                z = load_chunk(chunk_path(self.work, c), arrays=False)
                self._fold(unit_summary(z["meta"], z["lengths"], z["slot_pos"], z["slot_count"]))
            else:
                self._fold(self.pending.pop(c))
            self.next += 1

    @property
    def complete(self) -> bool:
        return self.next == self.n_chunks

    def _fold(self, s: dict) -> None:
        files = s["files"]
        k = np.zeros(len(files), bool)
        dropped = False
        for i, (path, h, reason) in enumerate(files):
            if h is not None and h in self.seen:
                self.dup_list.append({"path": path, "same_as": self.seen[h]})
                dropped = True
                continue
            if h is not None:
                self.seen[h] = path
            if reason is not None:
                self.skipped.append({"path": path, "reason": reason})
            else:
                k[i] = True
        if dropped:  # the worker counted every file: recount without the duplicates
            z = load_chunk(chunk_path(self.work, self.next), arrays=False)
            labels, hist = kept_stats(z["meta"], z["slot_pos"], z["slot_count"], k)
        else:
            labels, hist = s["labels"], s["hist"]
        for lab, n in labels.items():
            self.labels[lab] = self.labels.get(lab, 0) + n
        if self.want_edges and len(hist):
            if len(hist) > len(self.hist):
                self.hist = np.pad(self.hist, (0, len(hist) - len(self.hist)))
            self.hist[: len(hist)] += hist
        self.keep.append(k)
        is_train, n_samples = s["train"], s["samples"]
        parts = []
        n_tok = 0
        for split in SPLITS:
            take = k & (is_train if split == "train" else ~is_train)
            lens = s["lengths"][np.repeat(take, n_samples)]
            if not len(lens):
                continue
            rows = self.planners[split].add(lens)
            self.rows[split].append(rows)
            # The unit's samples of this split lie back to back in each shard they reach.
            cut = [0, *(np.flatnonzero(np.diff(rows[:, 0])) + 1).tolist(), len(rows)]
            ctok = np.concatenate([[0], np.cumsum(rows[:, 2])]).tolist()
            segments = [
                (self.shard_file[split](int(rows[a, 0])), int(rows[a, 1]), ctok[a], ctok[b])
                for a, b in itertools.pairwise(cut)
            ]
            parts.append((_sample_ranges(take, n_samples), segments))
            n_tok += ctok[-1]
        if parts:
            self.tasks.append((str(chunk_path(self.work, self.next)), parts, n_tok))


def _sample_ranges(take: np.ndarray, file_samples: np.ndarray) -> list[tuple[int, int]]:
    """The samples of the files in `take`, as few ``[first, end)`` ranges as possible."""
    ends = np.cumsum(file_samples)
    starts = ends - file_samples
    out: list[tuple[int, int]] = []
    for a, b in zip(starts[take].tolist(), ends[take].tolist(), strict=True):
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        elif b > a:
            out.append((a, b))
    return out


def _sample_mask(meta: list[dict], keep: np.ndarray, split: str) -> np.ndarray:
    """Per sample of a work unit: does it go to `split` (kept file of that split)?"""
    fsel = keep & np.array([m["split"] == split for m in meta], bool)
    return np.repeat(fsel, np.array([m["samples"] for m in meta], np.int64))


def _unit_split_tokens(
    z: dict, keep: np.ndarray, edges: Sequence[float], split: str
) -> tuple[np.ndarray, np.ndarray]:
    """A work unit's tokens (DENSITY filled) and sample lengths for one split."""
    tokens, lengths = z["tokens"], z["lengths"]
    fill_density_slots(tokens, z["slot_pos"], z["slot_count"], edges)
    ssel = _sample_mask(z["meta"], keep, split)
    if ssel.all():
        return tokens, lengths
    return tokens[np.repeat(ssel, lengths)], lengths[ssel]


def sync_file(path: str | Path, data_only: bool = False) -> None:
    """fsync (or fdatasync) one file by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if data_only and hasattr(os, "fdatasync"):
            os.fdatasync(fd)
        else:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_shards(
    out: Path,
    p1: UnitFold,
    edges: Sequence[float],
    workers: Workers | None,
    extra: Sequence[tuple[Path, bytes]] = (),
) -> list[tuple[Path, Path]]:
    """Write the planned units into pre-sized shard files (by the workers, in parallel, when
    there are several; the parent writes the indexes and `extra` meanwhile). Returns
    (temporary, final) names of files whose data is durable, for the caller to rename."""
    plans = {}
    for split in SPLITS:
        idx = np.concatenate([np.zeros((0, 3), np.int64), *p1.rows[split]])
        n_shards = p1.planners[split].shards
        files = [p1.shard_file[split](k) for k in range(n_shards)]
        per_shard = np.bincount(idx[:, 0], weights=idx[:, 2], minlength=n_shards)
        for f, n_tok in zip(files, per_shard.tolist(), strict=True):
            with open(f, "wb") as fh:
                fh.truncate(int(n_tok) * 2)
        plans[split] = (idx, files)
    edges = tuple(edges)
    tasks = [(path, edges, parts) for path, parts, _ in p1.tasks]
    sizes = [n_tok for *_, n_tok in p1.tasks]
    parallel = workers is not None and workers.n > 1 and len(tasks) > 1
    # The small files first (the indexes and whatever the caller adds): creating files while
    # the writers keep the journal busy can wait milliseconds. Their fsyncs wait on the disk,
    # not the CPU: in threads, sharing journal commits and overlapping the shard writes.
    small = []
    for split in SPLITS:
        tmp = tmp_name(index_path(out, split))
        with open(tmp, "wb") as fh:
            np.save(fh, plans[split][0], allow_pickle=False)
        small.append((tmp, index_path(out, split)))
    for path, data in extra:
        tmp = tmp_name(path)
        tmp.write_bytes(data)
        small.append((tmp, path))
    shards = [
        (Path(f), shard_path(out, split, k))
        for split in SPLITS
        for k, f in enumerate(plans[split][1])
    ]
    if parallel:
        # Largest first, each to the least loaded worker: one message per worker. Handed out
        # before the sync threads start, because handing out may start (fork) a worker, and
        # a process forked while other threads run can inherit a lock held by one of them.
        groups: list[list[tuple]] = [[] for _ in range(workers.n)]
        load = [0] * workers.n
        for j in sorted(range(len(tasks)), key=lambda j: -sizes[j]):
            w = load.index(min(load))
            groups[w].append(tasks[j])
            load[w] += sizes[j] + 1
        workers.send_writes(groups)
    with ThreadPoolExecutor(max_workers=len(small) + len(shards)) as ex:
        synced = [ex.submit(sync_file, tmp) for tmp, _ in small]
        if parallel:
            workers.wait_writes()
        else:
            write_group(tasks)
        synced += [ex.submit(sync_file, f) for f, _ in shards]
        for f in synced:
            f.result()
    return shards + small


def rename_all(pairs: list[tuple[Path, Path]]) -> None:
    """Move (temporary, final) pairs into place."""
    for tmp, final in pairs:
        os.replace(tmp, final)


def fsync_dir(path: Path) -> None:
    """Make the renames in a folder durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(
    out: Path,
    work: Path,
    n_chunks: int,
    keep: list[np.ndarray],
    edges: Sequence[float],
    vocab: Vocab,
) -> list[tuple[Path, Path]]:
    """One sample per line, token names separated by spaces (for inspection and other tools)."""
    tok_strings = np.asarray(vocab.tokens, dtype=object)
    text = {s: open(tmp_name(out / f"{s}.txt"), "w", encoding="ascii") for s in SPLITS}  # noqa: SIM115
    try:
        for c in range(n_chunks):
            z = load_chunk(chunk_path(work, c))
            for split in SPLITS:
                toks, lens = _unit_split_tokens(z, keep[c], edges, split)
                if not len(lens):
                    continue
                parts = np.empty(2 * len(toks), dtype=object)
                parts[0::2] = tok_strings[toks]
                sep = np.full(len(toks), " ", dtype=object)
                sep[np.cumsum(lens) - 1] = "\n"
                parts[1::2] = sep
                text[split].write("".join(parts.tolist()))
    finally:
        for fh in text.values():
            fh.close()
    return [(tmp_name(out / f"{s}.txt"), out / f"{s}.txt") for s in SPLITS]


def merge(
    out: Path,
    work: Path,
    cfg: PrepareConfig,
    files_total: int,
    chash: str,
    p1: UnitFold,
    workers: Workers | None = None,
) -> dict:
    """Density edges, shards/text, tokenizer and manifest, from pass 1 and .work."""
    for p in out.glob("*.tmp*"):
        p.unlink()
    assert p1.complete, "the merge needs every work unit"
    n_chunks = p1.n_chunks
    keep = p1.keep
    if cfg.density_edges:
        edges = cfg.density_edges
    else:
        edges = density_edges_from_hist(p1.hist, cfg.density_bins) if cfg.density_bins else ()
    codec = cfg.codec(edges)
    vocab = codec.vocab

    counts = {
        s: {
            "samples": sum(len(r) for r in p1.rows[s]),
            "tokens": int(sum(int(r[:, 2].sum()) for r in p1.rows[s])),
        }
        for s in SPLITS
    }
    # Pass 2: fill DENSITY slots, route samples to their split, write.
    tok = (out / "tokenizer.json", (json.dumps(vocab.tokenizer_json(), indent=1) + "\n").encode())
    if cfg.format == "bin":
        written = write_shards(out, p1, edges, workers, [tok])
    else:
        written = write_text(out, work, n_chunks, keep, edges, vocab)
        tmp = tmp_name(tok[0])
        tmp.write_bytes(tok[1])
        written.append((tmp, tok[0]))
        for t, _ in written:
            sync_file(t)
    rename_all(written)

    # Most frequent first; ties in vocabulary order.
    rank = {lab: i for i, lab in enumerate(vocab.labels)}
    labels_seen = dict(sorted(p1.labels.items(), key=lambda kv: (-kv[1], rank[kv[0]])))
    files_ok = sum(int(k.sum()) for k in keep)
    cfg_json = cfg.to_json()
    manifest = {
        "format": "bandmate-prepared",
        "version": 1,
        "created_by": f"bandmate {__version__}",
        "files_total": files_total,
        "files_ok": files_ok,
        "files_skipped": len(p1.skipped),
        "duplicates": len(p1.dup_list),
        "samples": {s: counts[s]["samples"] for s in SPLITS},
        "tokens": {s: counts[s]["tokens"] for s in SPLITS},
        "counts": counts,
        "density_bins": {"bins": cfg.density_bins, "edges": list(edges)},
        "labels_seen": labels_seen,
        "config": cfg_json,
        "config_hash": chash,
        "sources": list(cfg.sources),
        "codec": codec.to_json(),
        "output": (
            {"train": "train-NNNNN.bin + train.idx.npy", "val": "val-NNNNN.bin + val.idx.npy"}
            if cfg.format == "bin"
            else {"train": "train.txt", "val": "val.txt"}
        ),
        "skipped": p1.skipped,
        "duplicate_files": p1.dup_list,
    }
    atomic_write_bytes(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest
