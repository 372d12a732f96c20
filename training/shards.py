"""The on-disk layout of prepared data: flat uint16 token shards plus an index of samples.

Layout (docs/contracts.md, "Prepared data"): ``{split}-{k:05d}.bin`` hold the tokens of whole
samples back to back (no padding, a sample never straddles two shards), ``{split}.idx.npy`` is
an int64 array of shape (samples, 3): shard k, token offset in that shard, length.

Why this layout: training reads random samples of a corpus far larger than memory, so shards
are memory-mapped and the index makes ``split[i]`` one slice; uint16 halves the bytes of int32
(every vocabulary is far below 65,536 ids). Every file is written under a temporary name and
renamed into place (``os.replace`` is atomic), so a killed writer never leaves a half-written
file under a real name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SPLITS = ("train", "val")
#: Tokens per shard file (128 MiB of uint16); small enough to copy, large enough to be few.
DEFAULT_SHARD_TOKENS = 1 << 26


def shard_path(root: str | Path, split: str, k: int) -> Path:
    return Path(root) / f"{split}-{k:05d}.bin"


def index_path(root: str | Path, split: str) -> Path:
    return Path(root) / f"{split}.idx.npy"


def tmp_name(path: Path) -> Path:
    """A temporary sibling name private to this process (left-overs are ignored by readers)."""
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the whole new one."""
    path = Path(path)
    tmp = tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save_npy(path: str | Path, arr: np.ndarray) -> None:
    path = Path(path)
    tmp = tmp_name(path)
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def plan_shards(lengths: np.ndarray, shard_tokens: int = DEFAULT_SHARD_TOKENS) -> np.ndarray:
    """The index `ShardWriter` would write for these sample lengths, without writing.

    Greedy, in order: a shard takes samples while they fit; a sample longer than a shard gets
    a shard of its own. Lets several processes write their samples straight into place.
    """
    return ShardPlanner(shard_tokens).add(lengths)


class ShardPlanner:
    """`plan_shards` fed piece by piece, with the same result as one call on all the pieces:
    the preprocessor plans each work unit as soon as the units before it are known."""

    def __init__(self, shard_tokens: int = DEFAULT_SHARD_TOKENS) -> None:
        self.shard_tokens = shard_tokens
        self.k = 0  # the shard being filled
        self.fill = 0  # its tokens so far

    @property
    def shards(self) -> int:
        """Shards planned so far."""
        return self.k + (1 if self.fill else 0)

    def add(self, lengths: np.ndarray) -> np.ndarray:
        """Rows (shard, offset, length) for the next samples."""
        lengths = np.asarray(lengths, np.int64)
        n = len(lengths)
        idx = np.zeros((n, 3), np.int64)
        ends = np.cumsum(lengths)
        i = pos = 0
        k, fill, cap = self.k, self.fill, self.shard_tokens
        while i < n:
            j = int(np.searchsorted(ends, pos + cap - fill, side="right"))
            if j <= i:
                if fill:
                    k, fill = k + 1, 0
                    continue
                j = i + 1
            lens = lengths[i:j]
            idx[i:j, 0] = k
            idx[i:j, 1] = fill + np.cumsum(lens) - lens
            idx[i:j, 2] = lens
            fill += int(lens.sum())
            pos = int(ends[j - 1])
            i = j
            if fill >= cap:
                k, fill = k + 1, 0
        self.k, self.fill = k, fill
        return idx


class ShardWriter:
    """Appends samples to ``{split}-NNNNN.bin`` shards; `close` writes the index.

    Samples arrive in blocks (a flat token array plus the length of each sample) so a corpus
    of millions of samples is written without a Python call per sample.
    """

    def __init__(
        self, root: str | Path, split: str, shard_tokens: int = DEFAULT_SHARD_TOKENS
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if shard_tokens < 1:
            raise ValueError("shard_tokens must be >= 1")
        self.root = Path(root)
        self.split = split
        self.shard_tokens = int(shard_tokens)
        self._k = 0
        self._fill = 0
        self._f = None
        self._index: list[np.ndarray] = []
        self.samples = 0
        self.tokens = 0

    def _open(self) -> None:
        self._f = open(tmp_name(shard_path(self.root, self.split, self._k)), "wb")  # noqa: SIM115
        self._fill = 0

    def _finish_shard(self) -> None:
        if self._f is None:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        final = shard_path(self.root, self.split, self._k)
        os.replace(tmp_name(final), final)
        self._k += 1

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append samples: ``tokens`` is their concatenation, ``lengths`` their sizes."""
        tokens = np.asarray(tokens)
        lengths = np.asarray(lengths, np.int64)
        if int(lengths.sum()) != len(tokens):
            raise ValueError("lengths must add up to len(tokens)")
        if (
            tokens.dtype != np.uint16
            and len(tokens)
            and (tokens.min() < 0 or tokens.max() > 0xFFFF)
        ):
            raise ValueError("token ids must fit in uint16")
        if (lengths <= 0).any():
            raise ValueError("every sample needs at least one token")
        toks = tokens.astype(np.uint16, copy=False)
        ends = np.cumsum(lengths)
        i, pos = 0, 0
        n = len(lengths)
        while i < n:
            if self._f is None:
                self._open()
            room = self.shard_tokens - self._fill
            # The samples i..j-1 that fit in this shard (at least one: a sample longer than a
            # shard gets a shard of its own rather than being split).
            j = int(np.searchsorted(ends, pos + room, side="right"))
            if j <= i:
                if self._fill:
                    self._finish_shard()
                    continue
                j = i + 1
            seg = toks[pos : int(ends[j - 1])]
            lens = lengths[i:j]
            offs = self._fill + np.concatenate([[0], np.cumsum(lens)[:-1]])
            self._index.append(np.stack([np.full(j - i, self._k), offs, lens], axis=1))
            self._f.write(memoryview(np.ascontiguousarray(seg)))
            self._fill += len(seg)
            self.samples += j - i
            self.tokens += len(seg)
            pos = int(ends[j - 1])
            i = j
            if self._fill >= self.shard_tokens:
                self._finish_shard()

    def close(self) -> np.ndarray:
        """Finish the last shard and write the index; returns the index."""
        self._finish_shard()
        idx = (
            np.concatenate(self._index).astype(np.int64)
            if self._index
            else np.zeros((0, 3), np.int64)
        )
        atomic_save_npy(index_path(self.root, self.split), idx)
        return idx

    @property
    def shards(self) -> int:
        return self._k + (1 if self._f is not None else 0)


class TokenSplit:
    """One split of prepared data: ``len``, ``split[i] -> uint16 array``, ``tokens_total``.

    Shards are memory-mapped, so opening a split of any size costs only its index.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        p = index_path(self.root, split)
        if not p.exists():
            raise FileNotFoundError(
                f"{p} missing: run `bandmate prepare SRC -o {self.root}` first "
                "(with --format bin, the default)"
            )
        self.index: np.ndarray = np.load(p, allow_pickle=False)
        if self.index.ndim != 2 or self.index.shape[1] != 3:
            raise ValueError(f"{p}: expected an index of shape (samples, 3)")
        n_shards = int(self.index[:, 0].max()) + 1 if len(self.index) else 0
        self._shards: list[np.ndarray] = []
        for k in range(n_shards):
            sp = shard_path(self.root, split, k)
            if not sp.exists():
                raise FileNotFoundError(f"{sp} missing: the prepared data is incomplete")
            self._shards.append(np.memmap(sp, np.uint16, "r"))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range (0..{len(self) - 1})")
        k, off, n = (int(x) for x in self.index[i])
        return self._shards[k][off : off + n]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def tokens_total(self) -> int:
        return int(self.index[:, 2].sum()) if len(self.index) else 0

    @property
    def lengths(self) -> np.ndarray:
        return self.index[:, 2].astype(np.int64)


def open_split(root: str | Path, split: str) -> TokenSplit:
    """Open ``train`` or ``val`` of a ``bandmate prepare`` output folder."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return TokenSplit(root, split)
