"""``bandmate prepare``: MIDI folders -> mmmtrack token shards, in parallel, resumable.

How the guarantees are met (docs/prepare.md says more):

- **Same output for any ``--workers``.** Files are listed in a fixed order and cut into chunks
  whose boundaries depend only on the file list. A worker encodes one chunk into one file under
  ``OUT/.work/``; the final merge reads chunks in order, so which process did what never shows.
- **A killed run resumes to the same bytes.** Every file is written under a temporary name and
  renamed into place, so a chunk file either exists whole or not at all. A restart with the same
  arguments (checked by a hash of the config and of the file listing) skips finished chunks.
  The merge only reads ``.work`` and rewrites every output file, so it can be repeated; the
  manifest is written last, then ``.work`` is removed.
- **Dedup and split are functions of file content.** A file's BLAKE2 hash decides train or val
  (so no augmentation of a piece straddles the split, and the split does not move when files
  are added); the first path with a given hash wins, later copies count as ``duplicates``.
- **DENSITY needs corpus statistics**, so workers leave a slot per track and record its note
  count; the merge takes quantiles of the counts of the (un-augmented) training samples,
  then fills the slots.
- **Speed.** All per-note work is numpy: the codec tokenises every bar of a segment at once
  (`segment_bars`), and a sample of a window is a gather of ranges of that array
  (`encode_segment`), with transposition as one masked add per shift.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from bandmate.models.codec import segment_bars
from bandmate.models.config import BAR_CHOICES, METERS, CodecConfig
from bandmate.models.midi_io import MIDI_SUFFIXES, MidiError, SegmentArrays, read_segments_arrays
from bandmate.models.vocab import (
    DENSITY0,
    NOTE_OFF0,
    NOTE_ON0,
    PIECE_START,
    TRACK_END,
    TRACK_START,
    Vocab,
)
from bandmate.training.shards import (
    DEFAULT_SHARD_TOKENS,
    SPLITS,
    atomic_save_npy,
    atomic_write_bytes,
    index_path,
    plan_shards,
    shard_path,
    tmp_name,
)

from bandmate import __version__

log = logging.getLogger("bandmate.prepare")

FORMATS = ("bin", "text")
WORK = ".work"
#: Fault injection for the crash-isolation test: a worker whose file path contains this
#: environment variable's value exits abruptly, as a crash in the C++ parser would.
CRASH_ENV = "BANDMATE_PREPARE_TEST_CRASH"
_NOTE_END = NOTE_OFF0 + 128  # NOTE_ON and NOTE_OFF ids are [NOTE_ON0, _NOTE_END)
_CONSTS = np.array([PIECE_START, TRACK_START, TRACK_END, DENSITY0], np.int32)
#: Tracks x bars of one 4/4 stretch above which a file is refused: the per-bar arrays would
#: take gigabytes (a damaged delta time can put a note days after the others).
MAX_TRACK_BARS = 8_000_000
#: Below this many output tokens the merge writes from the parent (sending the work to the
#: pool's already running workers costs more than writing a few megabytes).
PARALLEL_WRITE_TOKENS = 1 << 22


class PrepareError(Exception):
    """A problem the user must fix (arguments, output folder); the message says how."""


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that decides the bytes of a prepared folder (``--workers`` does not)."""

    sources: tuple[str, ...] = field(metadata={"help": "MIDI files or folders, walked recursively"})
    bars: int = field(default=4, metadata={"help": "bars per sample: 4, 8 or 16"})
    hop: int = field(default=0, metadata={"help": "bars between window starts; 0 = bars/4"})
    transpose: tuple[int, int] = field(
        default=(-5, 6), metadata={"help": "train-only transpositions LO..HI semitones"}
    )
    val_fraction: float = field(default=0.05, metadata={"help": "share of files held out"})
    density_bins: int = field(default=4, metadata={"help": "DENSITY buckets; 0 = none"})
    density_edges: tuple[float, ...] = field(
        default=(), metadata={"help": "fixed bucket edges instead of training quantiles"}
    )
    voices: tuple[str, ...] = field(default=(), metadata={"help": "label tracks by order"})
    meter: str = field(default="strict", metadata={"help": "strict or assume-4/4"})
    shard: tuple[int, int] = field(default=(0, 1), metadata={"help": "this part I of N"})
    format: str = field(default="bin", metadata={"help": "bin (uint16 shards) or text"})
    chunk_files: int = field(default=0, metadata={"help": "files per work unit; 0 = auto"})
    shard_tokens: int = field(default=DEFAULT_SHARD_TOKENS, metadata={"help": "tokens/shard"})

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "sources", tuple(str(s) for s in self.sources))
        set_(self, "transpose", tuple(int(x) for x in self.transpose))
        set_(self, "shard", tuple(int(x) for x in self.shard))
        set_(self, "voices", tuple(v.upper() for v in self.voices))
        set_(self, "density_edges", tuple(float(e) for e in self.density_edges))
        if not self.sources:
            raise ValueError("give at least one MIDI file or folder")
        if self.bars not in BAR_CHOICES:
            raise ValueError(f"bars must be one of {BAR_CHOICES}, got {self.bars}")
        if not 0 <= self.hop <= 64:
            raise ValueError(f"hop must be 1..64 bars (0 = bars/4), got {self.hop}")
        lo, hi = self.transpose
        if not -24 <= lo <= 0 <= hi <= 24:
            raise ValueError(f"transpose LO:HI needs -24 <= LO <= 0 <= HI <= 24, got {lo}:{hi}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.density_bins <= 64:
            raise ValueError(f"density_bins must be 0..64, got {self.density_bins}")
        if self.density_edges:
            if len(self.density_edges) != self.density_bins - 1:
                raise ValueError(
                    f"density_edges needs density_bins - 1 = {self.density_bins - 1} values"
                )
            if list(self.density_edges) != sorted(self.density_edges):
                raise ValueError("density_edges must be ascending")
        if self.meter not in METERS:
            raise ValueError(f"meter must be one of {METERS}, got {self.meter!r}")
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"shard I/N needs 0 <= I < N, got {i}/{n}")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.chunk_files < 0:
            raise ValueError("chunk_files must be >= 0 (0 = automatic)")
        if self.shard_tokens < 1:
            raise ValueError("shard_tokens must be >= 1")
        self.codec()  # validates the voice labels

    @property
    def window_hop(self) -> int:
        """Default: a quarter of the window, so every bar is in about 4 samples."""
        return self.hop or max(1, self.bars // 4)

    @property
    def shifts(self) -> tuple[int, ...]:
        lo, hi = self.transpose
        return tuple(k for k in range(lo, hi + 1) if k != 0)

    def codec(self, edges: Sequence[float] = ()) -> CodecConfig:
        return CodecConfig(
            bars=self.bars,
            voices=self.voices,
            density_bins=self.density_bins,
            density_edges=tuple(edges),
            meter=self.meter,
        )

    def to_json(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_json(cls, d: dict) -> PrepareConfig:
        names = {f.name for f in fields(cls)}
        return cls(
            **{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        )


# --------------------------------------------------------------------------- pure encoding


@dataclass
class Encoded:
    """The samples of one file: un-augmented ones first (``n_orig`` of them), then shifted.

    ``slot_pos`` are positions in ``tokens`` of DENSITY tokens still to be filled (their
    value is a placeholder) and ``slot_count`` the note count each will be bucketed from.
    """

    tokens: np.ndarray  # uint16
    lengths: np.ndarray  # int64 per sample
    n_orig: int
    slot_pos: np.ndarray  # int64
    slot_count: np.ndarray  # int64

    @property
    def samples(self) -> int:
        return len(self.lengths)

    @property
    def orig_tokens(self) -> int:
        return int(self.lengths[: self.n_orig].sum())


def _empty() -> Encoded:
    z = np.zeros(0, np.int64)
    return Encoded(np.zeros(0, np.uint16), z, 0, z, z)


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lens)])`` without a loop."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    excl = np.cumsum(lens) - lens
    return np.arange(total, dtype=np.int64) + np.repeat(starts - excl, lens)


def _window_min(x: np.ndarray, starts: np.ndarray, n: int, op) -> np.ndarray:
    return op(np.lib.stride_tricks.sliding_window_view(x, n)[starts], axis=1)


def encode_segment(
    seg: SegmentArrays,
    vocab: Vocab,
    bars: int,
    hop: int,
    shifts: Sequence[int] = (),
    density: bool = False,
) -> tuple[list[tuple[np.ndarray, ...]], int]:
    """Samples of every ``bars``-bar window of a 4/4 segment (window starts ``0, hop, ...``).

    A sample is PIECE_START, then for each track with notes in the window (in track order)
    ``TRACK_START INST [DENSITY] bar*bars TRACK_END``; a window without notes is no sample.
    Returns parts ``(tokens, lengths, slot_pos, slot_count)``: the un-augmented samples,
    then one part per valid transposition, and the number of un-augmented samples.
    """
    n_tracks, n_bars_seg = len(seg.tracks), seg.bars
    if n_tracks == 0 or n_bars_seg < bars:
        return [], 0
    tb = segment_bars(seg)
    starts = np.arange(0, n_bars_seg - bars + 1, hop, dtype=np.int64)
    cs = np.zeros((n_tracks, n_bars_seg + 1), np.int64)
    np.cumsum(tb.onsets, axis=1, out=cs[:, 1:])
    counts = cs[:, starts + bars] - cs[:, starts]  # (tracks, windows)
    present = counts > 0
    keep = present.any(axis=0)
    if not keep.all():
        if not keep.any():
            return [], 0
        starts, counts, present = starts[keep], counts[:, keep], present[:, keep]
    n_win = len(starts)
    ww, tt = np.nonzero(present.T)  # pairs (window, track), window-major, tracks in order
    n_pairs = len(ww)
    body_start = tb.offsets[tt, starts[ww]]
    body_len = tb.offsets[tt, starts[ww] + bars] - body_start
    n_ids = len(tb.ids)
    ids_of = vocab.ids
    inst = np.array([ids_of["INST=" + t.label] for t in seg.tracks], np.int32)
    src = np.concatenate([tb.ids, _CONSTS, inst])
    c_ps, c_ts, c_te, c_d, c_inst = n_ids, n_ids + 1, n_ids + 2, n_ids + 3, n_ids + 4
    # Ranges of `src` per pair: PIECE_START (length 1 only for a window's first pair),
    # TRACK_START, INST, [DENSITY], the bars, TRACK_END.
    k = 6 if density else 5
    body_col = k - 2
    first = np.ones(n_pairs, bool)
    first[1:] = ww[1:] != ww[:-1]
    rs = np.empty((n_pairs, k), np.int64)
    rl = np.ones((n_pairs, k), np.int64)
    rs[:, 0] = c_ps
    rl[:, 0] = first
    rs[:, 1] = c_ts
    rs[:, 2] = c_inst + tt
    if density:
        rs[:, 3] = c_d
    rs[:, body_col] = body_start
    rl[:, body_col] = body_len
    rs[:, k - 1] = c_te
    rl = rl.ravel()
    tokens = src[_ranges(rs.ravel(), rl)]
    first_pair = np.flatnonzero(first)
    pair_len = (k - 2) + body_len + first
    lengths = np.add.reduceat(pair_len, first_pair)
    if density:
        slot_pos = np.cumsum(pair_len) - pair_len + first + 2  # after [PS] TS INST
        slot_count = counts[tt, ww]
    else:
        slot_pos = slot_count = np.zeros(0, np.int64)
    parts = [(tokens, lengths, slot_pos, slot_count)]
    if not shifts:
        return parts, n_win
    pitched = ~np.fromiter((t.is_drum for t in seg.tracks), bool, n_tracks)
    if not pitched.any():
        return parts, n_win  # drums are never transposed: every shift would be a copy
    # Which tokens move: NOTE_ON/NOTE_OFF of pitched tracks.
    range_pitched = np.zeros((n_pairs, k), bool)
    range_pitched[:, body_col] = pitched[tt]
    movable = np.repeat(range_pitched.ravel(), rl)
    movable &= (tokens >= NOTE_ON0) & (tokens < _NOTE_END)
    # Pitch range of pitched tracks per window, from the per-bar token runs.
    ids = tb.ids
    is_on = (ids >= NOTE_ON0) & (ids < NOTE_OFF0)
    pitch = ids.astype(np.int64) - NOTE_ON0
    gstart = tb.offsets[:, :n_bars_seg].ravel()
    pmin = np.minimum.reduceat(np.where(is_on, pitch, 999), gstart).reshape(n_tracks, -1)
    pmax = np.maximum.reduceat(np.where(is_on, pitch, -1), gstart).reshape(n_tracks, -1)
    wmin = _window_min(pmin[pitched].min(axis=0), starts, bars, np.min)
    wmax = _window_min(pmax[pitched].max(axis=0), starts, bars, np.max)
    has_pitch = wmax >= 0
    sh = np.asarray(shifts, np.int64)
    valid = has_pitch & (wmin + sh[:, None] >= 0) & (wmax + sh[:, None] <= 127)  # (shifts, win)
    all_ok = valid.all(axis=1)
    move16 = movable.astype(tokens.dtype)
    sample_start = np.cumsum(lengths) - lengths
    for i, s in enumerate(shifts):
        v = valid[i]
        if all_ok[i]:  # the common case: every window fits, one add
            parts.append((tokens + s * move16, lengths, slot_pos, slot_count))
            continue
        if not v.any():
            continue
        tmask = np.repeat(v, lengths)
        t2 = tokens[tmask] + s * move16[tmask]
        l2 = lengths[v]
        if density:
            new_start = np.cumsum(l2) - l2
            rank = np.cumsum(v) - 1
            sv = v[ww]
            sp2 = new_start[rank[ww[sv]]] + (slot_pos[sv] - sample_start[ww[sv]])
            sc2 = slot_count[sv]
        else:
            sp2 = sc2 = slot_pos
        parts.append((t2, l2, sp2, sc2))
    return parts, n_win


def _concat_parts(parts: list[tuple[np.ndarray, ...]], n_orig: int) -> Encoded:
    if not parts:
        return _empty()
    if len(parts) == 1:
        t, ln, sp, sc = parts[0]
        return Encoded(t.astype(np.uint16), ln, n_orig, sp, sc)
    toks, lens, sps, scs = [], [], [], []
    base = 0
    for t, ln, sp, sc in parts:
        toks.append(t)
        lens.append(ln)
        sps.append(sp + base)
        scs.append(sc)
        base += len(t)
    return Encoded(
        np.concatenate(toks).astype(np.uint16),
        np.concatenate(lens),
        n_orig,
        np.concatenate(sps),
        np.concatenate(scs),
    )


@functools.lru_cache(maxsize=8)
def _codec_vocab(cfg: PrepareConfig) -> tuple[CodecConfig, Vocab]:
    """Built once per run: a Vocab costs more to build than a small file costs to encode."""
    codec = cfg.codec()
    if codec.vocab.size > 0xFFFF:
        raise ValueError(f"a vocabulary of {codec.vocab.size} tokens does not fit in uint16")
    return codec, codec.vocab


def encode_file(
    src: str | os.PathLike | bytes, cfg: PrepareConfig, augment: bool = True
) -> Encoded:
    """All samples of one MIDI file (raises MidiError when the file is unusable)."""
    codec, vocab = _codec_vocab(cfg)
    segs = read_segments_arrays(src, codec)
    if not segs:
        raise MidiError(
            "no bars in 4/4 time (if its time signatures are wrong: --meter assume-4/4)"
        )
    for seg in segs:
        if len(seg.tracks) * seg.bars > MAX_TRACK_BARS:
            raise MidiError(
                f"{seg.bars} bars x {len(seg.tracks)} tracks is more than bandmate encodes "
                f"({MAX_TRACK_BARS:,} track-bars): the file's timing is probably damaged"
            )
    shifts = cfg.shifts if augment else ()
    density = cfg.density_bins > 0
    orig: list[tuple[np.ndarray, ...]] = []
    aug: list[tuple[np.ndarray, ...]] = []
    n_orig = 0
    for seg in segs:
        parts, n = encode_segment(seg, vocab, cfg.bars, cfg.window_hop, shifts, density)
        if parts:
            orig.append(parts[0])
            aug.extend(parts[1:])
            n_orig += n
    if not n_orig:
        longest = max(s.bars for s in segs)
        raise MidiError(
            f"no {cfg.bars}-bar stretch of 4/4 with notes (longest 4/4 stretch: {longest} bars)"
        )
    return _concat_parts(orig + aug, n_orig)


def content_split(digest: bytes, val_fraction: float) -> str:
    """train or val from a file's content hash: stable, and the same on every machine."""
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "val" if u < val_fraction else "train"


def density_edges_from_hist(hist: np.ndarray, bins: int) -> tuple[float, ...]:
    """Quantile edges (``inverted_cdf``) of integer note counts given as a histogram.

    Edge d is the smallest count c with ``P(count <= c) >= (d+1)/bins``; bucket d holds
    counts <= edge d, the last bucket everything above.
    """
    if bins <= 1:
        return ()
    total = int(hist.sum())
    if total == 0:
        return tuple(float(d + 1) for d in range(bins - 1))
    cdf = np.cumsum(hist)
    qs = [(d + 1) * total / bins for d in range(bins - 1)]
    return tuple(float(np.searchsorted(cdf, q, side="left")) for q in qs)


# --------------------------------------------------------------------------- files and chunks


@dataclass(frozen=True)
class SourceFile:
    path: str  # as reported (SRC joined with the path below it)
    abspath: str
    key: str  # "SRC index/relative path": stable across machines, used by --shard


def list_sources(sources: Sequence[str]) -> list[SourceFile]:
    """MIDI files under each SRC (recursive), each SRC's files sorted by relative path."""
    out: list[SourceFile] = []
    for si, src in enumerate(sources):
        p = Path(src)
        if p.is_file():
            out.append(SourceFile(src, str(p.resolve()), f"{si}/{p.name}"))
            continue
        if not p.is_dir():
            raise PrepareError(f"{src}: no such file or folder")
        found = []
        base = os.path.abspath(p)
        shown = str(p)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            sub = os.path.relpath(dirpath, base).replace(os.sep, "/")
            prefix = "" if sub == "." else sub + "/"
            for fn in filenames:
                if fn.lower().endswith(MIDI_SUFFIXES) and not fn.startswith("."):
                    found.append(prefix + fn)
        found.sort()
        for rel in found:
            out.append(SourceFile(f"{shown}/{rel}", f"{base}/{rel}", f"{si}/{rel}"))
    return out


def select_shard(files: list[SourceFile], shard: tuple[int, int]) -> list[SourceFile]:
    """The disjoint part I of N: by a hash of each file's SRC-relative path."""
    i, n = shard
    if n == 1:
        return files
    return [
        f
        for f in files
        if int.from_bytes(hashlib.sha1(f.key.encode()).digest()[:8], "big") % n == i
    ]


def auto_chunk_files(n_files: int) -> int:
    """Files per work unit: small enough to balance 2..100 workers, large for big corpora."""
    return int(min(256, max(8, n_files // 64)))


def config_hash(cfg: PrepareConfig) -> str:
    d = cfg.to_json()
    d["sources"] = [str(Path(s).resolve()) for s in cfg.sources]
    d["version"] = __version__
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def listing_hash(files: list[SourceFile], sizes: list[int] | None = None) -> str:
    """Hash of paths, sizes and mtimes (a resumed run must see the same files); fills
    `sizes` with each file's bytes, which the scheduler uses."""
    h = hashlib.sha256()
    for f in files:
        try:
            st = os.stat(f.abspath)
            h.update(f"{f.abspath}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            size = st.st_size
        except OSError:
            h.update(f"{f.abspath}\0missing\n".encode())
            size = 0
        if sizes is not None:
            sizes.append(size)
    return h.hexdigest()[:16]


@dataclass
class FileResult:
    path: str
    hash: str | None
    split: str
    reason: str | None
    enc: Encoded
    labels: dict[str, int] = field(default_factory=dict)  # INST label -> tracks in samples


def label_counts(tokens: np.ndarray, vocab: Vocab) -> dict[str, int]:
    """How many tracks of each INST label the samples hold (done in the workers)."""
    t = tokens[tokens >= vocab.inst0].astype(np.int64) - vocab.inst0
    c = np.bincount(t, minlength=len(vocab.labels))
    return {vocab.labels[i]: int(c[i]) for i in np.flatnonzero(c)}


def process_file(f: SourceFile, cfg: PrepareConfig) -> FileResult:
    """Read, hash and encode one file; every failure becomes a skip reason, never a raise."""
    crash = os.environ.get(CRASH_ENV)
    if crash and crash in f.path:
        os._exit(70)
    try:
        with open(f.abspath, "rb") as fh:
            data = fh.read()
    except OSError as e:
        return FileResult(f.path, None, "train", f"cannot read the file: {e.strerror}", _empty())
    digest = hashlib.blake2b(data, digest_size=16).digest()
    split = content_split(digest, cfg.val_fraction)
    try:
        enc = encode_file(data, cfg, augment=split == "train")
        reason = None
    except MidiError as e:
        enc, reason = _empty(), str(e)
    except Exception as e:  # a bug or a parser failure on odd data: skip, never stop the batch
        enc = _empty()
        reason = f"unexpected error ({type(e).__name__}: {e}); please report this file"
    labels = label_counts(enc.tokens, _codec_vocab(cfg)[1]) if reason is None else {}
    return FileResult(f.path, digest.hex(), split, reason, enc, labels)


def _chunk_path(work: Path, c: int) -> Path:
    return work / f"chunk-{c:06d}.bin"


_MAGIC = b"BMCHUNK1"
_END = b"BMCHUNKE"
_ARRAYS = (("tokens", np.uint16), ("lengths", np.int64), ("slot_pos", np.int64),
           ("slot_count", np.int64))  # fmt: skip


def write_chunk(path: Path, results: list[FileResult]) -> dict:
    """One finished work unit, atomically; returns its counts for the progress bar.

    Layout: magic, header length, JSON header (per-file facts, array sizes), the raw arrays,
    an end marker. Not fsynced: a kill cannot lose a renamed file (the page cache survives
    the process), and after a power loss `read_chunk` rejects a torn file, which is redone.
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
    arrays = {
        "tokens": [r.enc.tokens for r in results],
        "lengths": [r.enc.lengths for r in results],
        "slot_pos": [r.enc.slot_pos + b for r, b in zip(results, base, strict=False)],
        "slot_count": [r.enc.slot_count for r in results],
    }
    bufs = [
        np.concatenate([np.zeros(0, dt), *arrays[name]]).astype(dt, copy=False).tobytes()
        for name, dt in _ARRAYS
    ]
    header = json.dumps({"files": meta, "sizes": [len(b) for b in bufs]}).encode()
    tmp = tmp_name(path)
    with open(tmp, "wb") as fh:
        fh.write(_MAGIC + len(header).to_bytes(8, "little") + header)
        for b in bufs:
            fh.write(b)
        fh.write(_END)
    os.replace(tmp, path)
    return {
        "files": len(results),
        "samples": sum(r.enc.samples for r in results),
        "tokens": int(base[-1]),
        "skipped": sum(r.reason is not None for r in results),
    }


def read_chunk(path: Path, arrays: bool = True) -> dict | None:
    """A work unit written by `write_chunk`, or None when the file is torn or foreign.

    ``arrays=False`` skips the tokens (the merge's first pass).
    """
    try:
        with open(path, "rb") as fh:
            total = os.fstat(fh.fileno()).st_size
            lead = fh.read(16)
            if lead[:8] != _MAGIC:
                return None
            n = int.from_bytes(lead[8:16], "little")
            head = json.loads(fh.read(n))
            sizes = [int(x) for x in head["sizes"]]
            if 16 + n + sum(sizes) + 8 != total:
                return None
            out: dict = {"meta": head["files"]}
            for (name, dt), size in zip(_ARRAYS, sizes, strict=True):
                if arrays or name != "tokens":
                    out[name] = np.frombuffer(bytearray(fh.read(size)), dt)
                else:
                    fh.seek(size, os.SEEK_CUR)
            if fh.read(8) != _END:
                return None
            return out
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _chunk_done(path: Path) -> bool:
    """Cheap check for resume: the header parses and the size and end marker agree."""
    try:
        with open(path, "rb") as fh:
            total = os.fstat(fh.fileno()).st_size
            lead = fh.read(16)
            n = int.from_bytes(lead[8:16], "little")
            sizes = json.loads(fh.read(n))["sizes"]
            fh.seek(total - 8)
            return lead[:8] == _MAGIC and fh.read(8) == _END and 16 + n + sum(sizes) + 8 == total
    except (OSError, ValueError, KeyError, TypeError):
        return False


#: What every worker of a run needs, set once per worker by `_init_worker` (with fork it is
#: inherited, not pickled), so a task is a chunk number.
_JOB: tuple[PrepareConfig, list[SourceFile], int, Path] | None = None


def _init_worker(cfg_json: dict, files: list[SourceFile], chunk: int, work: str) -> None:
    global _JOB
    _JOB = (PrepareConfig.from_json(cfg_json), files, chunk, Path(work))


def run_chunk(c: int) -> dict:
    """Worker entry point (module level: works with fork and spawn)."""
    assert _JOB is not None, "the pool's initializer did not run"
    cfg, files, chunk, work = _JOB
    part = files[c * chunk : (c + 1) * chunk]
    return write_chunk(_chunk_path(work, c), [process_file(f, cfg) for f in part])


def run_one_file(task: tuple[SourceFile, dict]) -> FileResult:
    f, cfg_json = task
    return process_file(f, PrepareConfig.from_json(cfg_json))


def _mp_context():
    # fork starts workers in milliseconds (spawn re-imports numpy and symusic per worker);
    # nothing here depends on inherited state, so spawn works too where fork is missing.
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


# --------------------------------------------------------------------------- the run


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


def _isolate_chunk(c: int, files: list[SourceFile], cfg_json: dict, work: Path, ctx) -> dict:
    """Re-run a chunk whose worker died, one file per process, to find the culprit."""
    results = []
    ex = ProcessPoolExecutor(max_workers=1, mp_context=ctx)
    try:
        for f in files:
            try:
                results.append(ex.submit(run_one_file, (f, cfg_json)).result())
            except BrokenProcessPool:
                log.warning("%s: the worker crashed on this file; skipped", f.path)
                results.append(
                    FileResult(
                        f.path, None, "train", "the MIDI parser crashed on this file", _empty()
                    )
                )
                ex.shutdown(wait=True)
                ex = ProcessPoolExecutor(max_workers=1, mp_context=ctx)
    finally:
        ex.shutdown(wait=True)
    return write_chunk(_chunk_path(work, c), results)


class _Pool:
    """One process pool for the whole run (encode, then the merge's writes): forked once.

    Replaced after a worker dies (a broken pool accepts no more work).
    """

    def __init__(self, workers: int, initargs: tuple = ()) -> None:
        self.workers = workers
        self.ctx = _mp_context()
        self.initargs = initargs
        self._ex: ProcessPoolExecutor | None = None

    def get(self) -> ProcessPoolExecutor:
        if self._ex is None:
            self._ex = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=self.ctx,
                initializer=_init_worker if self.initargs else None,
                initargs=self.initargs,
            )
        return self._ex

    def reset(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None

    close = reset


def _run_chunks(
    tasks: list[tuple[int, list[SourceFile], dict, str]],
    pool: _Pool,
    on_done: Callable[[dict], None],
) -> None:
    """Run work units on the pool; a worker that dies costs only its own files.

    A task is (chunk number, its files, config, work folder); only the number is sent.
    """
    queue = list(tasks)
    failed: list[tuple[int, list[SourceFile], dict, str]] = []
    while queue:
        ex = pool.get()
        running: dict = {}
        broken = False
        try:
            while queue or running:
                while queue and len(running) < 2 * pool.workers and not broken:
                    t = queue.pop(0)
                    running[ex.submit(run_chunk, t[0])] = t
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    t = running.pop(fut)
                    try:
                        on_done(fut.result())
                    except BrokenProcessPool:
                        broken = True
                        failed.append(t)
                if broken:
                    # Every unit still running on the broken pool is suspect too.
                    for fut, t in running.items():
                        try:
                            on_done(fut.result())
                        except BrokenProcessPool:
                            failed.append(t)
                    running = {}
                    break
        finally:
            if broken or sys.exc_info()[0] is not None:
                pool.reset()
    for c, files, cfg_json, work in sorted(failed, key=lambda t: t[0]):
        log.warning("a worker died in work unit %d: re-running its files one by one", c)
        on_done(_isolate_chunk(c, files, cfg_json, Path(work), pool.ctx))


def _load_chunk(path: Path, arrays: bool = True) -> dict:
    z = read_chunk(path, arrays)
    if z is None:
        raise PrepareError(f"{path} is damaged: run the same command again to redo it")
    return z


def _sample_mask(meta: list[dict], keep: np.ndarray, split: str) -> np.ndarray:
    """Per sample of a work unit: does it go to `split` (kept file of that split)?"""
    fsel = keep & np.array([m["split"] == split for m in meta], bool)
    return np.repeat(fsel, np.array([m["samples"] for m in meta], np.int64))


def _unit_split_tokens(
    z: dict, keep: np.ndarray, edges: Sequence[float], split: str
) -> tuple[np.ndarray, np.ndarray]:
    """A work unit's tokens (DENSITY filled) and sample lengths for one split."""
    tokens, lengths = z["tokens"], z["lengths"]
    if len(edges) or len(z["slot_pos"]):
        b = np.searchsorted(np.asarray(edges, np.float64), z["slot_count"], side="left")
        tokens[z["slot_pos"]] = DENSITY0 + b
    ssel = _sample_mask(z["meta"], keep, split)
    if ssel.all():
        return tokens, lengths
    return tokens[np.repeat(ssel, lengths)], lengths[ssel]


def write_unit_rows(task: tuple) -> int:
    """Worker of the merge: write one work unit's samples to their places in the shards.

    The parent planned every sample's (shard, offset) with `plan_shards`, so units write
    in parallel, in any order, with positioned writes into pre-sized files.
    """
    path, keep, edges, rows_by_split = task
    z = read_chunk(Path(path))
    if z is None:
        raise PrepareError(f"{path} is damaged: run the same command again to redo it")
    written = 0
    for split, (rows, shard_files) in rows_by_split.items():
        toks, lens = _unit_split_tokens(z, np.asarray(keep, bool), edges, split)
        if len(lens) != len(rows) or not np.array_equal(lens, rows[:, 2]):
            raise RuntimeError(f"{path}: samples do not match the plan")
        toks = np.ascontiguousarray(toks, np.uint16)
        start = np.cumsum(lens) - lens
        for k in np.unique(rows[:, 0]):
            sel = np.flatnonzero(rows[:, 0] == k)
            a, b = int(start[sel[0]]), int(start[sel[-1]] + lens[sel[-1]])
            fd = os.open(shard_files[int(k)], os.O_WRONLY)
            try:
                os.pwrite(fd, memoryview(toks[a:b]).cast("B"), int(rows[sel[0], 1]) * 2)
            finally:
                os.close(fd)
            written += b - a
    return written


def _write_shards(
    out: Path,
    work: Path,
    n_chunks: int,
    cfg: PrepareConfig,
    keep: list[np.ndarray],
    edges: Sequence[float],
    split_lens: dict[str, list[np.ndarray]],
    pool: _Pool | None,
) -> None:
    tag = f".tmp{os.getpid()}"
    tasks = []
    plans = {}
    for split in SPLITS:
        lens = np.concatenate([np.zeros(0, np.int64), *split_lens[split]])
        idx = plan_shards(lens, cfg.shard_tokens)
        n_shards = int(idx[:, 0].max()) + 1 if len(idx) else 0
        files = [str(shard_path(out, split, k)) + tag for k in range(n_shards)]
        for k, f in enumerate(files):
            with open(f, "wb") as fh:
                fh.truncate(int(idx[idx[:, 0] == k, 2].sum()) * 2)
        plans[split] = (idx, files)
    first = {s: 0 for s in SPLITS}
    for c in range(n_chunks):
        rows_by_split = {}
        for split in SPLITS:
            n = len(split_lens[split][c])
            if n:
                idx, files = plans[split]
                rows_by_split[split] = (idx[first[split] : first[split] + n], files)
                first[split] += n
        if rows_by_split:
            tasks.append((str(_chunk_path(work, c)), keep[c].tolist(), tuple(edges), rows_by_split))
    total = sum(int(idx[:, 2].sum()) for idx, _ in plans.values())
    if pool is not None and pool.workers > 1 and len(tasks) > 1 and total >= PARALLEL_WRITE_TOKENS:
        list(pool.get().map(write_unit_rows, tasks))
    else:
        for t in tasks:
            write_unit_rows(t)
    for split in SPLITS:
        idx, files = plans[split]
        for k, f in enumerate(files):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(f, shard_path(out, split, k))
        atomic_save_npy(index_path(out, split), idx)


def _write_text(
    out: Path,
    work: Path,
    n_chunks: int,
    keep: list[np.ndarray],
    edges: Sequence[float],
    vocab: Vocab,
) -> None:
    """One sample per line, token names separated by spaces (for inspection and other tools)."""
    tok_strings = np.asarray(vocab.tokens, dtype=object)
    text = {s: open(tmp_name(out / f"{s}.txt"), "w", encoding="ascii") for s in SPLITS}  # noqa: SIM115
    try:
        for c in range(n_chunks):
            z = _load_chunk(_chunk_path(work, c))
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
        for split, fh in text.items():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.replace(tmp_name(out / f"{split}.txt"), out / f"{split}.txt")
    finally:
        for fh in text.values():
            if not fh.closed:
                fh.close()


def _merge(
    out: Path,
    work: Path,
    n_chunks: int,
    cfg: PrepareConfig,
    files_total: int,
    chash: str,
    pool: _Pool | None = None,
) -> dict:
    """Dedup, split, density edges, shards/text, tokenizer and manifest, from .work."""
    for p in out.glob("*.tmp*"):
        p.unlink()
    # Pass 1 (headers and lengths only): which files count, label counts, the sample lengths
    # of each split, and the note counts of un-augmented training tracks.
    seen: dict[str, str] = {}
    keep: list[np.ndarray] = []
    skipped: list[dict] = []
    duplicates = 0
    dup_list: list[dict] = []
    hist = np.zeros(1, np.int64)
    want_edges = cfg.density_bins > 1 and not cfg.density_edges
    label_total: dict[str, int] = {}
    split_lens: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in range(n_chunks):
        z = _load_chunk(_chunk_path(work, c), arrays=False)
        meta = z["meta"]
        k = np.zeros(len(meta), bool)
        for i, m in enumerate(meta):
            h = m["hash"]
            if h is not None and h in seen:
                duplicates += 1
                dup_list.append({"path": m["path"], "same_as": seen[h]})
                continue
            if h is not None:
                seen[h] = m["path"]
            if m["reason"] is not None:
                skipped.append({"path": m["path"], "reason": m["reason"]})
            else:
                k[i] = True
                for lab, n in m["labels"].items():
                    label_total[lab] = label_total.get(lab, 0) + n
        keep.append(k)
        for split in SPLITS:
            split_lens[split].append(z["lengths"][_sample_mask(meta, k, split)])
        if want_edges and len(z["slot_pos"]):
            tok = np.array([m["tokens"] for m in meta], np.int64)
            fstart = np.cumsum(tok) - tok
            orig_end = fstart + np.array([m["orig_tokens"] for m in meta], np.int64)
            train = np.array([m["split"] == "train" for m in meta], bool) & k
            fi = np.searchsorted(fstart, z["slot_pos"], side="right") - 1
            use = train[fi] & (z["slot_pos"] < orig_end[fi])
            hc = np.bincount(z["slot_count"][use])
            if len(hc) > len(hist):
                hist = np.pad(hist, (0, len(hc) - len(hist)))
            hist[: len(hc)] += hc
    if cfg.density_edges:
        edges = cfg.density_edges
    else:
        edges = density_edges_from_hist(hist, cfg.density_bins) if cfg.density_bins else ()
    codec = cfg.codec(edges)
    vocab = codec.vocab

    counts = {
        s: {
            "samples": sum(len(x) for x in split_lens[s]),
            "tokens": int(sum(int(x.sum()) for x in split_lens[s])),
        }
        for s in SPLITS
    }
    # Pass 2: fill DENSITY slots, route samples to their split, write.
    if cfg.format == "bin":
        _write_shards(out, work, n_chunks, cfg, keep, edges, split_lens, pool)
    else:
        _write_text(out, work, n_chunks, keep, edges, vocab)

    atomic_write_bytes(
        out / "tokenizer.json", (json.dumps(vocab.tokenizer_json(), indent=1) + "\n").encode()
    )
    # Most frequent first; ties in vocabulary order.
    rank = {lab: i for i, lab in enumerate(vocab.labels)}
    labels_seen = dict(sorted(label_total.items(), key=lambda kv: (-kv[1], rank[kv[0]])))
    files_ok = sum(int(k.sum()) for k in keep)
    cfg_json = cfg.to_json()
    manifest = {
        "format": "bandmate-prepared",
        "version": 1,
        "created_by": f"bandmate {__version__}",
        "files_total": files_total,
        "files_ok": files_ok,
        "files_skipped": len(skipped),
        "duplicates": duplicates,
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
        "skipped": skipped,
        "duplicate_files": dup_list,
    }
    atomic_write_bytes(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def _lock(work: Path):
    """An exclusive lock on OUT/.work, so two runs never write the same folder at once.

    A POSIX record lock (`lockf`), not `flock`: it belongs to this process only, so forked
    workers do not inherit it and a killed run frees it at once, even while its orphaned
    workers are still exiting.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; running twice is the user's call
        return None
    fh = open(work / "lock", "a")  # noqa: SIM115 (kept open: the lock lives with it)
    try:
        fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise PrepareError(
            f"another `bandmate prepare` is writing to {work.parent}: wait for it to finish"
        ) from None
    return fh


def _check_out(out: Path, chash: str, lhash: str) -> str:
    """'done' (already finished), 'resume' or 'fresh'; refuses a folder that is not ours."""
    work = out / WORK
    man = out / "manifest.json"
    if man.exists():
        try:
            same = json.loads(man.read_text()).get("config_hash") == chash
        except (OSError, ValueError):
            same = False
        if same:
            return "done"
        raise PrepareError(
            f"{out} already holds prepared data made with other arguments: "
            "choose a new -o folder, or delete this one"
        )
    state = work / "state.json"
    if state.exists():
        s = json.loads(state.read_text())
        if s.get("config_hash") != chash:
            raise PrepareError(
                f"{out} holds an interrupted run made with other arguments "
                f"(see {state}): run again with the same arguments to finish it, "
                "or delete the folder to start over"
            )
        if s.get("listing_hash") != lhash:
            raise PrepareError(
                f"the MIDI files changed since the interrupted run in {out} started: "
                "delete the folder to start over"
            )
        return "resume"
    others = [p for p in out.iterdir() if p.name != WORK] if out.exists() else []
    if others:
        raise PrepareError(f"{out} is not empty: choose a new -o folder, or empty this one")
    return "fresh"


def prepare(
    cfg: PrepareConfig,
    out: str | Path,
    workers: int | None = None,
    progress: bool | None = None,
) -> dict:
    """Run (or resume) a preparation; returns the manifest."""
    out = Path(out)
    workers = workers or default_workers()
    if workers < 1:
        raise ValueError("workers must be >= 1")
    t0 = time.perf_counter()
    files = select_shard(list_sources(cfg.sources), cfg.shard)
    sizes: list[int] = []
    chash, lhash = config_hash(cfg), listing_hash(files, sizes)
    if out.exists() and not out.is_dir():
        raise PrepareError(f"{out} is a file: -o needs a folder")
    state = _check_out(out, chash, lhash)
    if state == "done":
        shutil.rmtree(out / WORK, ignore_errors=True)
        log.info("%s already holds this preparation (same arguments): nothing to do", out)
        return json.loads((out / "manifest.json").read_text())
    work = out / WORK
    work.mkdir(parents=True, exist_ok=True)
    lock = _lock(work)  # noqa: F841 (held until this function returns)
    chunk = cfg.chunk_files or auto_chunk_files(len(files))
    n_chunks = -(-len(files) // chunk)
    if state == "fresh":
        atomic_write_bytes(
            work / "state.json",
            json.dumps(
                {
                    "config_hash": chash,
                    "listing_hash": lhash,
                    "chunks": n_chunks,
                    "config": cfg.to_json(),
                },
                indent=1,
            ).encode(),
        )
    for p in work.glob("*.tmp*"):
        p.unlink()
    cfg_json = cfg.to_json()
    tasks = []
    done_files = 0
    for c in range(n_chunks):
        part = files[c * chunk : (c + 1) * chunk]
        cp = _chunk_path(work, c)
        if cp.exists() and _chunk_done(cp):
            done_files += len(part)
        else:
            tasks.append((c, part, cfg_json, str(work)))
    # Biggest units first (by bytes, a fair proxy for work), so the run does not end waiting
    # on one large unit; the output does not depend on the order units finish in.
    unit_bytes = {c: sum(sizes[c * chunk : (c + 1) * chunk]) for c, *_ in tasks}
    tasks.sort(key=lambda t: (-unit_bytes[t[0]], t[0]))
    log.info(
        "prepare: %d files in %d work units (%d done before), %d workers -> %s",
        len(files),
        n_chunks,
        n_chunks - len(tasks),
        workers,
        out,
    )
    prog = Progress(files=done_files)
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: workers are forked
        bar = tqdm(total=len(files), initial=done_files, unit="file", desc="prepare")

    def on_done(d: dict) -> None:
        prog.add(d)
        if bar is not None:
            bar.update(d["files"])
            bar.set_postfix(
                samples=prog.samples, tokens=prog.tokens, skipped=prog.skipped, refresh=False
            )

    pool = _Pool(workers, (cfg_json, files, chunk, str(work)))
    try:
        try:
            _run_chunks(tasks, pool, on_done)
        finally:
            if bar is not None:
                bar.close()
        manifest = _merge(out, work, n_chunks, cfg, len(files), chash, pool)
    finally:
        pool.close()
    shutil.rmtree(work, ignore_errors=True)
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
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
