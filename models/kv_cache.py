"""Decoder state for one batch of sequences: `KVCache` (the contract graph: past keys/values
in and out of every run) and `InPlaceKVCache` (the CPU decode graph: keys/values in preallocated
`KVBuffers` buffers that ONNX Runtime updates in place through IOBinding, so a decode step
copies no cache). `ModelSession.new_cache` picks one (bandmate.models.session's docstring says
when); both fail with `ContextFull` rather than silently dropping history.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from bandmate.models.model_folder import decode_io_names
from bandmate.models.vocab import PAD

if TYPE_CHECKING:
    from bandmate.models.session import ModelSession

log = logging.getLogger("bandmate.models.session")


class ContextFull(RuntimeError):
    """More tokens were fed than the model has positions."""


class KVCache:
    """Past keys/values of a batch of rows, grown one chunk per call.

    The attention mask lives in one preallocated buffer (no per-step allocation); padding
    slots (rows that fed fewer tokens than the longest row of a call) are zeros in it.
    """

    def __init__(self, session: ModelSession, batch: int, capacity: int) -> None:
        self.s = session
        self.batch = batch
        self.capacity = min(capacity, session.n_positions * 4)
        self.length = 0  # KV slots used (same for every row, padding included)
        self.pos = np.zeros(batch, np.int64)  # next position id per row (real tokens only)
        self.mask = np.zeros((batch, self.capacity), np.int64)
        shape = (batch, session.n_head, 0, session.head_dim)
        empty = np.zeros(shape, np.float32)
        self.past: list[np.ndarray] = [empty] * (2 * session.n_layer)
        self.calls = 0
        self.tokens_fed = 0

    def positions_left(self, row: int) -> int:
        return int(self.s.n_positions - self.pos[row])

    def feed(self, chunks: list[list[int]]) -> np.ndarray:
        """Run the model on each row's new tokens; returns logits [batch, vocab] at each
        row's last real token (rows that fed nothing get a padding slot and junk logits)."""
        if len(chunks) != self.batch:
            raise ValueError(f"need {self.batch} chunks, got {len(chunks)}")
        n = max(1, max(len(c) for c in chunks))
        b = self.batch
        if self.length + n > self.capacity:
            raise ContextFull(f"KV cache full ({self.capacity} slots)")
        ids = np.full((b, n), PAD, np.int64)
        pos = np.zeros((b, n), np.int64)
        lo = self.length
        last = np.zeros(b, np.int64)
        for r, c in enumerate(chunks):
            k = len(c)
            if k:
                if self.pos[r] + k > self.s.n_positions:
                    raise ContextFull(
                        f"row {r} would pass the model's {self.s.n_positions} positions"
                    )
                ids[r, :k] = c
                pos[r, :k] = np.arange(self.pos[r], self.pos[r] + k)
                self.mask[r, lo : lo + k] = 1
                self.pos[r] += k
                last[r] = k - 1
            pos[r, k:] = min(self.pos[r], self.s.n_positions - 1)
        feed = {
            "input_ids": ids,
            "attention_mask": np.ascontiguousarray(self.mask[:, : lo + n]),
            "position_ids": pos,
        }
        for name, value in zip(self.s.past_names, self.past, strict=True):
            feed[name] = value
        out = self.s.onnx_session.run(self.s.fetch_names, feed)
        self.s.calls += 1
        self.past = out[1:]
        self.length = lo + n
        self.calls += 1
        self.tokens_fed += sum(len(c) for c in chunks)
        logits = out[0]
        return logits[np.arange(b), last]


class KVBuffers:
    """Preallocated ``[batch, n_head, max_seq, head_dim]`` caches bound as both past and
    present of a decode-graph session, so every run writes its new keys/values in place.

    ``run(ids, pos, past, counts, first)`` feeds ``ids`` [batch, seq] (row r's ``counts[r]``
    real tokens first, then padding) after row r's ``past[r]`` cached slots and returns the
    logits [batch, seq, vocab] in a reused buffer (valid until the next run). Padding lands in
    slots after the row's real ones, which its next call overwrites, and no real token attends
    to it (causal), so rows need no attention mask.

    onnxruntime's CPU GroupQueryAttention takes several new tokens after a past only for
    batch 1, so such a call on a batch runs once per row with that row's real tokens, on
    zero-copy views of its slice of the same buffers (rows are the outermost axis).
    """

    def __init__(
        self, sess: Any, n_layer: int, n_head: int, head_dim: int, batch: int, max_seq: int
    ) -> None:
        self.sess = sess
        self.batch, self.max_seq = batch, max_seq
        self.ins, self.outs = decode_io_names(n_layer)
        shape = (batch, n_head, max_seq, head_dim)
        self.buffers = [np.zeros(shape, np.float32) for _ in range(2 * n_layer)]
        self.vocab = int(sess.get_outputs()[0].shape[-1])
        self.owner: Any = None  # weakref to the cache using these buffers (session pool)
        self.io = self._binding(self.buffers)
        self._row_io: dict[int, Any] = {}
        self._logits: dict[int, tuple[np.ndarray, Any]] = {}  # seq -> reused output buffer
        self._seqlens = np.zeros(batch, np.int32)
        self._total = np.zeros((), np.int32)
        # One-token steps (most calls) write into these prebound arrays: no binding per step.
        self._ids1 = np.zeros((batch, 1), np.int64)
        self._pos1 = np.zeros((batch, 1), np.int64)
        self._step_bound = False

    def _binding(self, buffers: Sequence[np.ndarray]) -> Any:
        import onnxruntime as ort

        io = self.sess.io_binding()
        io.bind_output("logits")  # first, so it is output 0 whatever is bound later
        for name_in, name_out, b in zip(self.ins[4:], self.outs[1:], buffers, strict=True):
            v = ort.OrtValue.ortvalue_from_numpy(b)  # wraps the numpy memory, no copy
            io.bind_ortvalue_input(name_in, v)
            io.bind_ortvalue_output(name_out, v)
        return io

    def _out(self, seq: int) -> tuple[np.ndarray, Any]:
        out = self._logits.get(seq)
        if out is None:
            import onnxruntime as ort

            if len(self._logits) > 8:  # prefill lengths vary; keep the decode sizes
                self._logits = {k: v for k, v in self._logits.items() if k <= 8}
            arr = np.empty((self.batch, seq, self.vocab), np.float32)
            out = self._logits[seq] = (arr, ort.OrtValue.ortvalue_from_numpy(arr))
        return out

    def step(self, tokens: Sequence[int], past: np.ndarray, max_pos: int) -> np.ndarray:
        """One token per row after ``past[r]`` slots (a row that has nothing to feed passes
        any token: its slot is overwritten later); logits [batch, 1, vocab], reused buffer."""
        import onnxruntime as ort

        after = past + 1
        if int(after.max()) > self.max_seq:
            raise ValueError(f"cache of {self.max_seq} slots cannot hold {int(after.max())}")
        arr, val = self._out(1)
        io = self.io
        if not self._step_bound:
            for name, a in (
                ("input_ids", self._ids1),
                ("position_ids", self._pos1),
                ("seqlens_k", self._seqlens),
                ("total_sequence_length", self._total),
            ):
                io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(a))
            io.bind_ortvalue_output("logits", val)
            self._step_bound = True
        self._ids1[:, 0] = tokens
        np.minimum(past, max_pos, out=self._pos1[:, 0])
        self._seqlens[:] = past
        self._total[...] = int(after.max())
        self.sess.run_with_iobinding(io)
        return arr

    def run(
        self,
        ids: np.ndarray,
        pos: np.ndarray,
        past: np.ndarray,
        counts: np.ndarray,
        first: bool = False,
    ) -> np.ndarray:
        """One model call (class docstring); ``first``: every row starts at slot 0."""
        b, seq = ids.shape
        past = np.asarray(past, np.int64)
        counts = np.asarray(counts, np.int64)
        if first and past.any():
            raise ValueError("a first call feeds every row from slot 0")
        batched = first or seq == 1 or b == 1
        after = past + (seq if batched else counts)
        if int(after.max()) > self.max_seq:
            raise ValueError(f"cache of {self.max_seq} slots cannot hold {int(after.max())}")
        arr, val = self._out(seq)
        io = self.io
        self._step_bound = False
        if batched:
            self._seqlens[:] = after - 1
            # total == seq on a first call tells the op that every past is empty.
            self._total[...] = seq if first else int(after.max())
            io.bind_cpu_input("input_ids", np.ascontiguousarray(ids, np.int64))
            io.bind_cpu_input("position_ids", np.ascontiguousarray(pos, np.int64))
            io.bind_cpu_input("seqlens_k", self._seqlens)
            io.bind_cpu_input("total_sequence_length", self._total)
            io.bind_ortvalue_output("logits", val)
            self.sess.run_with_iobinding(io)
            return arr
        for r in range(b):
            k = int(counts[r])
            if k == 0:
                continue
            io = self._row_io.get(r)
            if io is None:
                io = self._row_io[r] = self._binding([x[r : r + 1] for x in self.buffers])
            io.bind_cpu_input("input_ids", np.ascontiguousarray(ids[r : r + 1, :k], np.int64))
            io.bind_cpu_input("position_ids", np.ascontiguousarray(pos[r : r + 1, :k], np.int64))
            io.bind_cpu_input("seqlens_k", np.array([after[r] - 1], np.int32))
            io.bind_cpu_input("total_sequence_length", np.array(after[r], np.int32))
            io.bind_output("logits")
            self.sess.run_with_iobinding(io)
            arr[r, :k] = io.get_outputs()[0].numpy()[0]
        return arr


#: A first call of one row longer than this is pre-filled in equal chunks of at most this
#: many tokens: attention then skips most of the masked half of the prompt's square
#: (GroupQueryAttention computes it whole), measured 95 -> 72 ms for 500 tokens (int8 seed
#: model, one thread). Chunks change int8 activation scales slightly (logits within ~0.05).
PREFILL_CHUNK = 160


class InPlaceKVCache:
    """`KVCache` on the in-place decode graph: same interface (``feed``, ``pos``,
    ``positions_left``, ``calls``, ``tokens_fed``), no padding slots and no copies.

    Each row's keys/values fill its slots ``0 .. pos[r]-1``; a call writes row r's new tokens
    right after them, so rows feeding different numbers of tokens need no mask.
    """

    def __init__(self, session: ModelSession, batch: int, capacity: int) -> None:
        self.s = session
        self.batch = batch
        self.capacity = min(capacity, session.n_positions)
        self.kv = session._lease_kv(self, batch)
        self.pos = np.zeros(batch, np.int64)  # slots used = next position id, per row
        self.calls = 0
        self.tokens_fed = 0

    @property
    def length(self) -> int:
        return int(self.pos.max())

    def positions_left(self, row: int) -> int:
        return int(self.s.n_positions - self.pos[row])

    def feed(self, chunks: list[list[int]]) -> np.ndarray:
        """Run the model on each row's new tokens; returns logits [batch, vocab] at each
        row's last real token (rows that fed nothing get junk logits)."""
        if len(chunks) != self.batch:
            raise ValueError(f"need {self.batch} chunks, got {len(chunks)}")
        b = self.batch
        counts = np.array([len(c) for c in chunks], np.int64)
        n = max(1, int(counts.max()))
        limit = self.s.n_positions
        for r in range(b):
            if self.pos[r] + counts[r] > limit:
                raise ContextFull(f"row {r} would pass the model's {limit} positions")
        if n == 1 and self.calls:  # the common decode step: prebound inputs
            logits = self.kv.step([c[0] if c else PAD for c in chunks], self.pos, limit - 1)
            out = logits[:, 0].copy()  # the buffer is reused by the next call
        else:
            ids = np.full((b, n), PAD, np.int64)
            for r, c in enumerate(chunks):
                if c:
                    ids[r, : len(c)] = c
            pos = np.minimum(self.pos[:, None] + np.arange(n)[None, :], limit - 1)
            last = np.maximum(counts - 1, 0)
            if self.calls == 0 and b == 1 and n > PREFILL_CHUNK:
                k = -(-n // PREFILL_CHUNK)
                cuts = [n * i // k for i in range(k + 1)]
                for lo, hi in itertools.pairwise(cuts):
                    logits = self.kv.run(
                        ids[:, lo:hi],
                        pos[:, lo:hi],
                        np.array([lo]),
                        np.array([hi - lo]),
                        first=lo == 0,
                    )
                last -= cuts[-2]
            else:
                logits = self.kv.run(ids, pos, self.pos, counts, first=self.calls == 0)
            out = logits[np.arange(b), last]  # a copy: the buffer is reused by the next call
        self.pos += counts
        self.calls += 1
        self.s.calls += 1
        self.tokens_fed += int(counts.sum())
        return out
