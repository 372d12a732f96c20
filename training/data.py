"""Training batches from prepared shards: packing samples into fixed-length blocks.

Why packing and not one padded sample per row: chorale samples are a few hundred tokens long
and vary by 2-3x, so padding every row to the longest wastes a third or more of the compute;
packing fills a block with consecutive whole samples instead.

How: samples are taken in a per-epoch shuffled order and placed greedily into blocks of
``block`` tokens; a sample that does not fit starts the next block (samples are never split, so
every block starts with PIECE_START at position 0, exactly as generation starts), and the few
tokens left at a block's end are ``[PAD]``. Labels there are -100, so ``[PAD]`` is never
trained on; causal attention means real tokens never attend to the padding after them.
Samples longer than a block are cut to the block (counted as ``truncated``). Tokens of
earlier samples in the same block are context for later ones, as in GPT-2's own packing; each
sample starts with PIECE_START, which marks the boundary.

The order is a pure function of (seed, epoch), so a resumed run rebuilds exactly the same
batches and skips to where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from bandmate.models.vocab import PAD, TRACK_END, TRACK_START

IGNORE = -100


class Split(Protocol):
    """What ``bandmate.training.shards.open_split`` returns (docs/contracts.md)."""

    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> np.ndarray: ...


def open_data(data_dir: str | Path, split: str) -> Split:
    """Open one split of prepared data with the shard reader of ``bandmate prepare``."""
    from bandmate.training.shards import open_split

    return open_split(data_dir, split)


def sample_lengths(split: Split) -> np.ndarray:
    """Token count of every sample (from the index when the reader exposes it)."""
    idx = getattr(split, "index", None)
    if isinstance(idx, np.ndarray) and idx.ndim == 2 and idx.shape[1] == 3:
        return idx[:, 2].astype(np.int64)
    return np.fromiter((len(split[i]) for i in range(len(split))), np.int64, len(split))


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The sample order of one epoch: deterministic in (seed, epoch)."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


class Blocks:
    """The blocks of one epoch, compactly: ``order`` (sample ids in packing order) cut at
    ``bounds`` (block b is ``order[bounds[b]:bounds[b + 1]]``), plus each block's real
    (non-pad) token count. A sequence of int64 arrays, like a list of blocks, at 8 bytes a
    sample instead of a Python object per block (100 M samples: 0.8 GB, not ~10 GB)."""

    __slots__ = ("bounds", "order", "tokens")

    def __init__(self, order: np.ndarray, bounds: np.ndarray, tokens: np.ndarray) -> None:
        self.order, self.bounds, self.tokens = order, bounds, tokens

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, b: int) -> np.ndarray:
        if not -len(self) <= b < len(self):
            raise IndexError(f"block {b} of {len(self)}")
        b %= len(self)
        return self.order[self.bounds[b] : self.bounds[b + 1]]

    def __iter__(self):
        for b in range(len(self)):
            yield self.order[self.bounds[b] : self.bounds[b + 1]]


def _prefix_sums(sizes: np.ndarray) -> np.ndarray:
    csum = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=csum[1:])
    return csum


def _successors(csum: np.ndarray, block: int) -> np.ndarray:
    """jump[s]: where the block that starts at item s ends (one past its last item; >= s + 1,
    as every size is <= block); jump[n] = n. Computed in slices: no n-sized temporaries."""
    n = len(csum) - 1
    idx = np.int32 if n < 2**31 - 1 else np.int64
    jump = np.empty(n + 1, idx)
    step = 1 << 22
    for a in range(0, n, step):
        b = min(a + step, n)
        jump[a:b] = np.searchsorted(csum, csum[a:b] + block, side="right") - 1
    jump[n] = n
    return jump


def _walk(jump, cur, end, stop=None):
    """Follow ``jump`` from every ``cur[k]`` at once while it is < ``end[k]`` (and, with
    ``stop``, not on a stop node): the final positions, the nodes visited and their walk."""
    cur = cur.copy()
    nodes, walks = [], []
    act = np.flatnonzero(cur < end)
    while act.size:
        c = cur[act]
        if stop is not None:
            keep = ~stop[c]
            act, c = act[keep], c[keep]
            if not act.size:
                break
        nodes.append(c)
        walks.append(act)
        nxt = jump[c]
        cur[act] = nxt
        act = act[nxt < end[act]]
    cat = (lambda xs, t: np.concatenate(xs) if xs else np.zeros(0, t))  # noqa: E731
    return cur, cat(nodes, jump.dtype), cat(walks, np.int64)


def _chain_doubling(jump: np.ndarray) -> np.ndarray:
    """The chain 0, jump[0], jump[jump[0]], ... below n by pointer doubling: after k rounds
    ``chain`` holds its first 2**k links and ``jump`` leads 2**k links ahead."""
    n = len(jump) - 1
    chain = np.zeros(1, jump.dtype)
    while True:
        chain = np.concatenate([chain, jump[chain]])
        if chain[-1] >= n:
            break
        jump = jump[jump]
    return chain[: int(np.searchsorted(chain, n))]  # increasing up to n, then n repeats


def pack_bounds(csum: np.ndarray, block: int, segment: int = 2048, rounds: int = 32) -> np.ndarray:
    """Where greedy packing cuts a run of n items of sizes <= ``block``, given their prefix
    sums ``csum`` (n + 1 values from 0): the start index of every block, then n.

    The greedy loop's blocks are the chain 0, nxt[0], nxt[nxt[0]], ... where nxt[s] (one
    ``searchsorted`` for every s at once) is where a block started at s must end. The chain is
    followed for all segments of ``segment`` items at once, each as if a block started at its
    first item; then each segment's real entry (the previous segment's exit) is walked, again
    all at once, until it meets that guessed chain, after which the two are the same. Greedy
    chains from nearby starts meet within a few blocks, so this converges in one or two
    rounds; data where they never meet (every sample exactly half a block) fall back to
    pointer doubling (`_chain_doubling`, log2(blocks) passes over the data). Either way the
    result equals the loop's (tests/training/test_train.py compares them).
    """
    n = len(csum) - 1
    if n == 0:
        return np.zeros(1, np.int64)
    jump = _successors(csum, block)
    starts = np.arange(0, n, segment, dtype=np.int64)
    ends = np.minimum(starts + segment, n)
    mark = np.zeros(n + 1, bool)
    exits, nodes, _ = _walk(jump, starts, ends)  # the guessed chain of every segment
    mark[nodes] = True
    guessed = mark.copy()
    k = len(starts)
    true_exit = exits.copy()  # exits stays the guessed chains' own
    entries = np.concatenate([[0], true_exit[:-1]])
    stop_at = starts.copy()  # real chain = guessed chain from here on, per segment
    todo = np.arange(k)
    last_walk = np.full(k, -1)
    walked: list[tuple[np.ndarray, np.ndarray]] = []
    for r in range(rounds):
        cur, nodes, walk = _walk(jump, entries[todo], ends[todo], stop=guessed)
        met = cur < ends[todo]
        stop_at[todo] = np.where(met, cur, ends[todo])
        walked.append((todo[walk], nodes))
        last_walk[todo] = r
        new_exit = np.where(met, exits[todo], cur)
        changed = todo[new_exit != true_exit[todo]]
        true_exit[todo] = new_exit
        todo = changed[changed + 1 < k] + 1
        if not todo.size:
            break
        entries[todo] = true_exit[todo - 1]
    else:
        return np.append(_chain_doubling(jump), n).astype(np.int64)
    for a, b in zip(starts.tolist(), stop_at.tolist(), strict=True):
        if b > a:
            mark[a:b] = False  # the guessed chain before the real one met it
    for r, (segs, nodes) in enumerate(walked):
        mark[nodes[last_walk[segs] == r]] = True
    mark[n] = True
    return np.flatnonzero(mark)


def pack(lengths: np.ndarray, order: np.ndarray, block: int) -> Blocks:
    """Greedy packing: consecutive samples of ``order`` per block, never split, never reordered.

    A sample goes into the current block if it fits (its length cut to ``block``), else it
    starts the next one; the result is a `Blocks` (a sequence of sample-id arrays).
    """
    order = np.asarray(order, np.int64)
    clipped = np.minimum(np.asarray(lengths)[order], block)
    csum = _prefix_sums(clipped)
    del clipped
    bounds = pack_bounds(csum, block)
    return Blocks(order, bounds, np.diff(csum[bounds]))


def move_track_last(tokens: np.ndarray, k: int) -> np.ndarray:
    """The sample with its k-th track moved to the end, the others keeping their order.

    Why: "add a part" puts the new part after the prompt's tracks, so a model must have seen
    every voice in the last place, not only the corpus's own last voice (the chorales' bass).
    A sample without k+1 whole tracks comes back unchanged.
    """
    starts = np.flatnonzero(tokens == TRACK_START)
    ends = np.flatnonzero(tokens == TRACK_END)
    n = len(starts)
    if k >= n - 1 or len(ends) < n or np.any(ends[:n] < starts):
        return tokens
    a, b = int(starts[k]), int(ends[k]) + 1
    tail_end = int(ends[n - 1]) + 1
    return np.concatenate([tokens[:a], tokens[b:tail_end], tokens[a:b], tokens[tail_end:]])


def reorder_choice(seed: int, epoch: int, sample: int, p: float, n_tracks: int) -> int | None:
    """Which track (if any) a sample moves to the end this epoch: a pure function, so a
    resumed run and every rank see the same order."""
    if p <= 0 or n_tracks < 2:
        return None
    rng = np.random.default_rng([seed, epoch, sample, 0x7EAC])
    if rng.random() >= p:
        return None
    return int(rng.integers(0, n_tracks - 1))


def build_block(
    split: Split,
    samples: np.ndarray,
    block: int,
    reorder: float = 0.0,
    key: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """The int64 token row of one block: samples back to back, then [PAD] to ``block``.

    ``reorder`` is the probability that a sample's tracks are reordered (one track moved last,
    see `move_track_last`), drawn from ``key`` = (seed, epoch) and the sample index; lengths
    never change, so packing does not depend on it.
    """
    row = np.full(block, PAD, np.int64)
    pos = 0
    for i in samples.tolist():
        toks = np.asarray(split[i])
        if reorder > 0:
            k = reorder_choice(key[0], key[1], i, reorder, int((toks == TRACK_START).sum()))
            if k is not None:
                toks = move_track_last(toks, k)
        toks = toks[: block - pos]
        row[pos : pos + len(toks)] = toks
        pos += len(toks)
    return row


def labels_for(ids: np.ndarray) -> np.ndarray:
    """Labels = inputs with [PAD] ignored (the model shifts them by one)."""
    return np.where(ids == PAD, IGNORE, ids)


@dataclass
class PackedEpochs:
    """Blocks of one split, epoch by epoch, for one rank of a data-parallel run.

    A global batch (one optimizer step) is ``micro * accum * world`` blocks; rank r takes
    every world-th block of each micro-batch slice, so 1 and N GPUs see the same data in the
    same order per step (up to the split across GPUs).
    """

    split: Split
    block: int
    micro: int
    accum: int
    world: int = 1
    rank: int = 0
    seed: int = 0
    shuffle: bool = True
    reorder: float = 0.0  # probability a sample moves one track last (see `move_track_last`)

    def __post_init__(self) -> None:
        self.lengths = sample_lengths(self.split)
        self.truncated = int((self.lengths > self.block).sum())
        self._epoch = -1
        self._blocks = Blocks(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64))

    @property
    def per_step(self) -> int:
        return self.micro * self.accum * self.world

    def blocks(self, epoch: int) -> Blocks:
        """The packed blocks of ``epoch``: computed once per epoch (and kept until the next)."""
        if epoch != self._epoch:
            order = epoch_order(len(self.lengths), self.seed, epoch, self.shuffle)
            self._blocks = pack(self.lengths, order, self.block)
            self._epoch = epoch
        return self._blocks

    def steps_per_epoch(self) -> int:
        """Full optimizer steps per epoch (the incomplete last batch is dropped)."""
        return len(self.blocks(0)) // self.per_step

    def step_targets(self, epoch: int, step_in_epoch: int) -> int:
        """Target tokens of one whole step over all ranks, from the index alone.

        Every rank knows it without communication (no all-reduce, no device sync), so the
        loss can be normalised by the global count in a data-parallel run.
        """
        blocks = self.blocks(epoch)
        start = step_in_epoch * self.per_step
        ids = self._wrap(blocks, np.arange(start, start + self.per_step))
        return int((blocks.tokens[ids] - 1).sum())  # a block's first token is never a target

    @staticmethod
    def _wrap(blocks: Blocks, ids: np.ndarray) -> np.ndarray:
        """Block ids of a step; an epoch that packs into fewer blocks than epoch 0 (whose
        count fixes the steps per epoch) takes the missing ones from its own start."""
        return np.asarray(ids, np.int64) % max(len(blocks), 1)

    def step_batches(self, epoch: int, step_in_epoch: int) -> list[tuple[np.ndarray, list]]:
        """This rank's micro-batches for one optimizer step: (ids [micro, block], sample ids)."""
        blocks = self.blocks(epoch)
        start = step_in_epoch * self.per_step
        out = []
        for a in range(self.accum):
            base = start + a * self.micro * self.world
            mine = [
                blocks[int(b)]
                for b in self._wrap(blocks, base + self.rank + self.world * np.arange(self.micro))
            ]
            ids = np.stack(
                [
                    build_block(self.split, s, self.block, self.reorder, (self.seed, epoch))
                    for s in mine
                ]
            )
            out.append((ids, [s.tolist() for s in mine]))
        return out


def eval_blocks(n_blocks: int, batches: int, micro: int, world: int, rank: int) -> list:
    """This rank's validation micro-batches: block ids of the first ``batches * micro`` blocks
    (all ranks together, so validation sees the same samples whatever the number of
    processes), dealt round-robin to the ranks and cut into micro-batches of ``micro``."""
    total = min(batches * micro, n_blocks)
    mine = np.arange(rank, total, world)
    return [mine[i : i + micro] for i in range(0, len(mine), micro)]


def fingerprint(sample_lists: list[list[list[int]]]) -> int:
    """A short hash of which samples a step trained on (logged, to check resumed order)."""
    h = 0
    for mb in sample_lists:
        for blk in mb:
            for i in blk:
                h = (h * 1_000_003 + i + 1) % (1 << 61)
    return h


def unigram_loss(train: Split, val: Split, vocab_size: int, max_samples: int = 20000) -> float:
    """Cross-entropy (nats/token) of val under train's token frequencies (add-one smoothed).

    The baseline a model must beat to have learned anything beyond token frequencies.
    """
    counts = np.ones(vocab_size, np.float64)
    step = max(len(train) // max_samples, 1)
    for i in range(0, len(train), step):
        counts += np.bincount(np.asarray(train[i]), minlength=vocab_size)[:vocab_size]
    counts[PAD] = 0
    logp = np.log(counts / counts.sum(), where=counts > 0, out=np.full(vocab_size, -np.inf))
    total = 0.0
    n = 0
    vstep = max(len(val) // max_samples, 1)
    for i in range(0, len(val), vstep):
        t = np.asarray(val[i])[1:]  # the first token is never predicted
        total -= float(logp[t].sum())
        n += len(t)
    return total / max(n, 1)


def label_counts(split: Split, inst0: int, labels: tuple[str, ...], max_samples: int = 20000):
    """INST labels of the data, most frequent first (bandmate.json's ``labels_seen``)."""
    counts = np.zeros(len(labels), np.int64)
    step = max(len(split) // max_samples, 1)
    for i in range(0, len(split), step):
        t = np.asarray(split[i])
        t = t[(t >= inst0) & (t < inst0 + len(labels))] - inst0
        counts += np.bincount(t, minlength=len(labels))
    order = np.argsort(-counts, kind="stable")
    return [(labels[k], int(counts[k])) for k in order if counts[k] > 0]
