"""``bandmate prepare``: MIDI folders -> mmmtrack token shards, in parallel, resumable.

How the guarantees are met (docs/prepare.md says more):

- **Same output for any ``--workers``.** Files are listed in a fixed order and cut into chunks
  whose boundaries depend only on the file list. A worker encodes one chunk into one file under
  ``OUT/.work/``; the parent folds the chunks' summaries in listing order and plans every
  sample's place, so which process did what, and when, never shows.
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
  (`encode_segment`), with transposition as one masked add per shift. The parallel part is
  kept free of the parent: own forked workers with a pipe each and a unit in hand (`_Workers`),
  a codec warmed before the fork, the merge planned while units finish (`_Pass1`) and its
  writes done by the workers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
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
    ShardPlanner,
    atomic_write_bytes,
    index_path,
    shard_path,
    tmp_name,
)

from bandmate import __version__

log = logging.getLogger("bandmate.prepare")

FORMATS = ("bin", "text")
#: How files are put in train or val: by content hash, or by piece (`piece_key`).
SPLIT_BY = ("content", "piece")
WORK = ".work"
#: Fault injection for the crash-isolation test: a worker whose file path contains this
#: environment variable's value exits abruptly, as a crash in the C++ parser would.
CRASH_ENV = "BANDMATE_PREPARE_TEST_CRASH"
#: The same for a file that never finishes reading (a parser stuck in a loop).
HANG_ENV = "BANDMATE_PREPARE_TEST_HANG"
#: Seconds one file may take in a worker before it is given up (`--file-timeout`). A large
#: real file reads in well under a second; only a damaged one that loops the parser gets here.
DEFAULT_FILE_TIMEOUT = 120.0
#: The skip reason of a file left out by ``--exclude`` (a benchmark's held-out set).
EXCLUDED_REASON = "excluded: its content digest is in the --exclude list (held out)"
_NOTE_END = NOTE_OFF0 + 128  # NOTE_ON and NOTE_OFF ids are [NOTE_ON0, _NOTE_END)
_CONSTS = np.array([PIECE_START, TRACK_START, TRACK_END, DENSITY0], np.int32)
#: Tracks x bars of one 4/4 stretch above which a file is refused: the per-bar arrays would
#: take gigabytes (a damaged delta time can put a note days after the others).
MAX_TRACK_BARS = 8_000_000


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
    meter: str = field(
        default="strict",
        metadata={"help": "strict or assume-4/4; or one per source, separated by commas"},
    )
    label_scheme: str = field(
        default="program", metadata={"help": "INST labels: program or gm-family (docs/codec.md)"}
    )
    split_by: str = field(
        default="content",
        metadata={"help": "train/val by file content, or by piece (the file name, see piece_key)"},
    )
    shard: tuple[int, int] = field(default=(0, 1), metadata={"help": "this part I of N"})
    format: str = field(default="bin", metadata={"help": "bin (uint16 shards) or text"})
    chunk_files: int = field(default=0, metadata={"help": "files per work unit; 0 = auto"})
    shard_tokens: int = field(default=DEFAULT_SHARD_TOKENS, metadata={"help": "tokens/shard"})
    exclude: tuple[str, ...] = field(
        default=(),
        metadata={"help": "content digests (blake2b-16 hex) of files to leave out entirely"},
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "sources", tuple(str(s) for s in self.sources))
        set_(self, "transpose", tuple(int(x) for x in self.transpose))
        set_(self, "shard", tuple(int(x) for x in self.shard))
        set_(self, "voices", tuple(v.upper() for v in self.voices))
        set_(self, "density_edges", tuple(float(e) for e in self.density_edges))
        set_(self, "exclude", tuple(sorted({str(d).lower() for d in self.exclude})))
        bad = [d for d in self.exclude if not re.fullmatch(r"[0-9a-f]{32}", d)]
        if bad:
            raise ValueError(
                f"exclude takes blake2b-16 content digests (32 hex digits), got {bad[0]!r}"
            )
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
        meters = self.meters
        bad_m = [m for m in meters if m not in METERS]
        if bad_m:
            raise ValueError(f"meter must be one of {METERS}, got {bad_m[0]!r}")
        if len(meters) not in (1, len(self.sources)):
            raise ValueError(
                f"meter: one value, or one per source ({len(self.sources)}), got {len(meters)}"
            )
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"split_by must be one of {SPLIT_BY}, got {self.split_by!r}")
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

    @property
    def meters(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.meter.split(","))

    def meter_of(self, source_index: int) -> str:
        """The meter files of source ``source_index`` are read with."""
        m = self.meters
        return m[source_index] if len(m) > 1 else m[0]

    def codec(self, edges: Sequence[float] = ()) -> CodecConfig:
        """The model's codec (with per-source meters, the first source's meter: the one a
        prompt is read with)."""
        return CodecConfig(
            bars=self.bars,
            voices=self.voices,
            density_bins=self.density_bins,
            density_edges=tuple(edges),
            meter=self.meters[0],
            label_scheme=self.label_scheme,
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
def _codec_vocab(cfg: PrepareConfig, meter: str | None = None) -> tuple[CodecConfig, Vocab]:
    """Built once per run: a Vocab costs more to build than a small file costs to encode."""
    codec = cfg.codec()
    if codec.vocab.size > 0xFFFF:
        raise ValueError(f"a vocabulary of {codec.vocab.size} tokens does not fit in uint16")
    if meter is not None and meter != codec.meter:
        codec = replace(codec, meter=meter)
    return codec, codec.vocab


def encode_file(
    src: str | os.PathLike | bytes,
    cfg: PrepareConfig,
    augment: bool = True,
    meter: str | None = None,
) -> Encoded:
    """All samples of one MIDI file (raises MidiError when the file is unusable);
    ``meter`` overrides the config's (a per-source meter)."""
    codec, vocab = _codec_vocab(cfg, meter)
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


_REVISION_PREFIX = re.compile(r"^[0-9a-f]{10}_")
_LUMP_PREFIX = re.compile(r"^d_")
_REMIX_SUFFIX = re.compile(r"([-_](remix|remaster))?[-_]*$")


def piece_key(path: str) -> str:
    """The piece a file belongs to, from its name: lower case, no extension, no leading
    revision prefix of 10 hex digits and '_' (Freedoom's history/ files are
    ``<blob-prefix>_<original name>``), no Doom lump prefix ``d_`` (older files lack it),
    no trailing ``-remix``/``_remaster`` or ``_``: every revision of a piece shares one key."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1].lower()
    stem = name.rsplit(".", 1)[0] if "." in name else name
    key = _LUMP_PREFIX.sub("", _REVISION_PREFIX.sub("", stem))
    return _REMIX_SUFFIX.sub("", key) or key


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


def unit_bounds(n_files: int, chunk_files: int = 0) -> list[int]:
    """Where each work unit starts in the file list (and, last, where the list ends).

    `chunk_files` > 0: units of that many files. 0 (automatic): units of
    `auto_chunk_files`, except at the end of the list, where units halve (two of each size
    down to one file): the scheduler hands them out last, so the run does not end with one
    worker busy on a whole unit while the others wait. A function of the file count only,
    so a resumed run cuts the list the same way.
    """
    if n_files <= 0:
        return [0]
    if chunk_files > 0:
        return [*range(0, n_files, chunk_files), n_files]
    base = auto_chunk_files(n_files)
    tail = []
    size = base // 2
    while size >= 1:
        tail += [size, size]
        size //= 2
    while tail and sum(tail) > n_files // 4:  # the tail stays a small part of the list
        tail.pop(0)
    body = n_files - sum(tail)
    sizes = [base] * (body // base) + ([body % base] if body % base else []) + tail
    bounds = [0]
    for k in sizes:
        bounds.append(bounds[-1] + k)
    return bounds


#: Fields added after prepared folders existed: left out of the hash at their defaults, so a
#: run started before them resumes.
_NEW_DEFAULTS = {"label_scheme": "program", "split_by": "content"}


def config_hash(cfg: PrepareConfig) -> str:
    d = cfg.to_json()
    for k, v in _NEW_DEFAULTS.items():
        if d.get(k) == v:
            del d[k]
    d["sources"] = [str(Path(s).resolve()) for s in cfg.sources]
    d["version"] = __version__
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def listing_hash(files: list[SourceFile], sizes: list[int] | None = None) -> str:
    """Hash of paths, sizes and mtimes (a resumed run must see the same files); fills
    `sizes` with each file's bytes, which the scheduler uses."""
    lines = []
    stat = os.stat
    for f in files:
        try:
            st = stat(f.abspath)
            lines.append(f"{f.abspath}\0{st.st_size}\0{st.st_mtime_ns}\n")
            size = st.st_size
        except OSError:
            lines.append(f"{f.abspath}\0missing\n")
            size = 0
        if sizes is not None:
            sizes.append(size)
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:16]


class Listing:
    """The files of a run, with their listing hash and sizes computed once, when first asked
    for: a fresh run asks only after its workers have their first units."""

    def __init__(self, files: list[SourceFile]) -> None:
        self.files = files
        self._hash: str | None = None
        self._sizes: list[int] = []

    def _stat(self) -> None:
        if self._hash is None:
            self._hash = listing_hash(self.files, self._sizes)

    @property
    def hash(self) -> str:
        self._stat()
        return self._hash

    @property
    def sizes(self) -> list[int]:
        self._stat()
        return self._sizes


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


#: Seconds a file may take in this process (set in workers only): see `process_file`.
_FILE_TIMEOUT: float | None = None


def process_file(f: SourceFile, cfg: PrepareConfig) -> FileResult:
    """Read, hash and encode one file; every failure becomes a skip reason, never a raise.

    In a worker with a file timeout, a timer ends the process with SIGALRM if the file takes
    too long: a parser stuck in C++ never returns to Python, so no Python exception could
    stop it; the parent sees the worker killed by SIGALRM and skips the file with the reason.
    """
    if _FILE_TIMEOUT is None or not hasattr(signal, "setitimer"):
        return _process_file(f, cfg)
    signal.setitimer(signal.ITIMER_REAL, _FILE_TIMEOUT)
    try:
        return _process_file(f, cfg)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)


def _process_file(f: SourceFile, cfg: PrepareConfig) -> FileResult:
    crash = os.environ.get(CRASH_ENV)
    if crash and crash in f.path:
        os._exit(70)
    hang = os.environ.get(HANG_ENV)
    if hang and hang in f.path:
        time.sleep(3600)
    try:
        with open(f.abspath, "rb") as fh:
            data = fh.read()
    except OSError as e:
        return FileResult(f.path, None, "train", f"cannot read the file: {e.strerror}", _empty())
    digest = hashlib.blake2b(data, digest_size=16).digest()
    if cfg.exclude and digest.hex() in cfg.exclude:
        # Held out by content, so a copy under another name is held out too.
        return FileResult(f.path, digest.hex(), "train", EXCLUDED_REASON, _empty())
    if cfg.split_by == "piece":
        key = hashlib.blake2b(piece_key(f.path).encode(), digest_size=16).digest()
        split = content_split(key, cfg.val_fraction)
    else:
        split = content_split(digest, cfg.val_fraction)
    meter = cfg.meter_of(int(f.key.split("/", 1)[0])) if len(cfg.meters) > 1 else None
    try:
        enc = encode_file(data, cfg, augment=split == "train", meter=meter)
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


_MAGIC = b"BMCHUNK2"
_END = b"BMCHUNKE"
_ARRAYS = (("tokens", np.uint16), ("lengths", np.int64), ("slot_pos", np.int64),
           ("slot_count", np.int64))  # fmt: skip
#: magic, header length, the byte size of each array: the merge's writers find the arrays
#: without parsing the JSON header.
_LEAD = 16 + 8 * len(_ARRAYS)


def write_chunk(path: Path, results: list[FileResult]) -> dict:
    """One finished work unit, atomically; returns its counts and its pass-1 summary.

    Layout: magic, header length and array sizes (`_LEAD` bytes), JSON header (per-file
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
        "summary": _summary(meta, arrays["lengths"], arrays["slot_pos"], arrays["slot_count"]),
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


def _kept_stats(
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


def _summary(
    meta: list[dict], lengths: np.ndarray, slot_pos: np.ndarray, slot_count: np.ndarray
) -> dict:
    """What the merge's first pass needs of a work unit, made compact by the worker: per
    file (path, hash, reason), its split and sample count; the sample lengths; and the label
    counts and note-count histogram of the unit as if every file is kept, which it is unless
    one duplicates an earlier file (then the parent recounts from the chunk file)."""
    keep = np.array([m["reason"] is None for m in meta], bool)
    labels, hist = _kept_stats(meta, slot_pos, slot_count, keep)
    return {
        "files": [(m["path"], m["hash"], m["reason"]) for m in meta],
        "train": np.array([m["split"] == "train" for m in meta], bool),
        "samples": np.array([m["samples"] for m in meta], np.int64),
        "lengths": lengths,
        "labels": labels,
        "hist": hist,
    }


def _layout(fh) -> tuple[int, list[int]] | None:
    """Header length and array sizes of an open chunk file, None when it is torn or foreign
    (its size must match the lead and it must end with the end marker)."""
    total = os.fstat(fh.fileno()).st_size
    lead = fh.read(_LEAD)
    if len(lead) != _LEAD or lead[:8] != _MAGIC:
        return None
    n, *sizes = (int.from_bytes(lead[i : i + 8], "little") for i in range(8, _LEAD, 8))
    if _LEAD + n + sum(sizes) + 8 != total:
        return None
    fh.seek(total - 8)
    if fh.read(8) != _END:
        return None
    fh.seek(_LEAD)
    return n, sizes


def read_chunk(path: Path, arrays: bool = True) -> dict | None:
    """A work unit written by `write_chunk`, or None when the file is torn or foreign.

    ``arrays=False`` skips the tokens (the merge's first pass).
    """
    try:
        with open(path, "rb") as fh:
            lay = _layout(fh)
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


def _chunk_done(path: Path) -> bool:
    """Cheap check for resume: the lead's sizes match the file's and the end marker is there."""
    try:
        with open(path, "rb") as fh:
            return _layout(fh) is not None
    except OSError:
        return False


#: What every worker of a run needs, set once per worker by `_init_worker` (with fork it is
#: inherited, not pickled), so a task is a chunk number.
_JOB: tuple[PrepareConfig, list[SourceFile], list[int], Path] | None = None
#: The parent's ends of the workers' pipes. A forked worker closes the copies it inherited,
#: so that a worker sees end-of-file the moment the parent dies, whoever else still runs.
_PARENT_ENDS: list = []
#: Work units a worker holds at once: one it works on and one waiting in its pipe, so it
#: never waits for the parent between units.
_PREFETCH = 2


def _init_worker(
    cfg_json: dict,
    files: list[SourceFile],
    bounds: list[int],
    work: str,
    file_timeout: float | None = None,
) -> None:
    global _JOB, _FILE_TIMEOUT
    _JOB = (PrepareConfig.from_json(cfg_json), files, bounds, Path(work))
    _FILE_TIMEOUT = file_timeout or None


def run_chunk(c: int) -> dict:
    """Encode work unit `c` into its chunk file (runs in a worker; module level for spawn)."""
    assert _JOB is not None, "the worker's job was not set"
    cfg, files, bounds, work = _JOB
    part = files[bounds[c] : bounds[c + 1]]
    return write_chunk(_chunk_path(work, c), [process_file(f, cfg) for f in part])


def _one_file_main(conn, f: SourceFile, cfg_json: dict, file_timeout: float | None) -> None:
    """A process of its own for one file of a unit whose worker died (module level: spawn)."""
    global _FILE_TIMEOUT
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    _FILE_TIMEOUT = file_timeout or None
    conn.send(process_file(f, PrepareConfig.from_json(cfg_json)))
    conn.close()


#: A 16-bar 4/4 MIDI file (format 0, 4 ticks per quarter): two notes, bars 1 and 16.
_WARM_MIDI = (
    b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x00\x04"
    b"MTrk\x00\x00\x00\x19"
    b"\x00\xff\x58\x04\x04\x02\x18\x08"
    b"\x00\x90\x3c\x50\x04\x80\x3c\x40"
    b"\x81\x6c\x90\x40\x50\x04\x80\x40\x40"
    b"\x00\xff\x2f\x00"
)


def _warm_up(cfg: PrepareConfig) -> None:
    """Encode a tiny built-in file in the parent before forking the workers.

    The first file a process encodes pays for lazy imports (symusic pulls in an HTTP and
    e-mail stack for its soundfont downloader) and first-call set-up: about 20-40 ms. Paid
    once here, every forked worker inherits it instead of paying it again, in every run.
    """
    try:
        encode_file(_WARM_MIDI, cfg)
    except Exception as e:  # never a reason to stop: the workers would just start cold
        log.debug("warm-up encode failed: %s", e)


def _mp_context():
    # fork starts workers in milliseconds (spawn re-imports numpy and symusic per worker);
    # nothing here depends on inherited state, so spawn works too where fork is missing.
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def _keep_heap() -> None:
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


def _worker_main(conn, job: tuple) -> None:
    """A worker's life: encode the units the parent sends, then serve the merge's writes.

    Messages in: ``("encode", c)``, ``("write", tasks)``; end of file or ``("exit", files)``
    (files to remove first) ends it. Out: ``("done", c, counts)``, ``("written", tokens)``,
    ``("error", where, text)``.
    """
    import signal

    for end in _PARENT_ENDS:  # inherited through fork; ours to close, not to use
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
    _keep_heap()
    _init_worker(*job)
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
                out = ("done", msg[1], run_chunk(msg[1]))
            elif kind == "write":
                out = ("written", _write_group(msg[1]))
            else:
                out = ("error", kind, "unknown message")
        except Exception as e:  # disk full, a folder removed under us: the parent says so
            out = ("error", msg[1] if kind == "encode" else kind, f"{type(e).__name__}: {e}")
        try:
            conn.send(out)
        except (BrokenPipeError, OSError):
            return


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


def _isolate_chunk(
    c: int,
    files: list[SourceFile],
    cfg_json: dict,
    work: Path,
    ctx,
    file_timeout: float | None = None,
) -> dict:
    """Re-run a unit whose worker died, one file per process, to find the culprit: a file
    whose process dies is skipped, with the reason its exit status gives."""
    results = []
    for f in files:
        here, there = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_one_file_main, args=(there, f, cfg_json, file_timeout))
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
            r = FileResult(f.path, None, "train", reason, _empty())
        results.append(r)
    return write_chunk(_chunk_path(work, c), results)


class _ForkedProc:
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


class _Workers:
    """The run's worker processes, started once and used by both phases.

    Each worker has its own pipe and holds up to `_PREFETCH` units, so it goes from one unit
    to the next without waiting for the parent, and the parent's part is one small message
    per unit (a process pool's manager thread and per-task futures cost the parent more CPU
    than a chorale unit takes to merge, CPU the workers need on a machine with few cores).
    A unit is only ever sent to one worker, and a worker works through its units in order,
    so when a worker dies the first unit it had not answered is the one that killed it.
    """

    def __init__(self, n: int, job: tuple) -> None:
        self.ctx = _mp_context()
        self.job = job
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
        here, there = self.ctx.Pipe()
        _PARENT_ENDS.append(here)
        if self.ctx.get_start_method() == "fork":
            p = _ForkedProc(_worker_main, (there, self.job))
        else:
            p = self.ctx.Process(
                target=_worker_main, args=(there, self.job), daemon=True, name=f"prepare-{i}"
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
        if conn in _PARENT_ENDS:
            _PARENT_ENDS.remove(conn)

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
                    log.warning("a worker died during the merge: writing its part here")
                    written += _write_group(waiting.pop(i))
                    self._reap(i)
                    self._start(i)
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


class _Pass1:
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
                z = _load_chunk(_chunk_path(self.work, c), arrays=False)
                self._fold(_summary(z["meta"], z["lengths"], z["slot_pos"], z["slot_count"]))
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
            z = _load_chunk(_chunk_path(self.work, self.next), arrays=False)
            labels, hist = _kept_stats(z["meta"], z["slot_pos"], z["slot_count"], k)
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
            self.tasks.append((str(_chunk_path(self.work, self.next)), parts, n_tok))


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


_START_WRITEBACK = sys.platform.startswith("linux") and hasattr(os, "posix_fadvise")
#: A writer's token buffer, kept between work units (a fresh one per unit costs a page
#: fault per 4 KiB, more than the copy itself).
_SCRATCH: list[np.ndarray] = [np.zeros(0, np.uint16)]


def _write_unit(task: tuple) -> int:
    """Write one work unit's samples to their planned places in the shard files.

    ``task = (chunk file, density edges, parts)``; each part is ``(sample ranges, segments)``
    for one split: the unit's samples that go there (ranges of kept files) and where their
    tokens go: ``(shard file, token offset, first, end)`` over those tokens. The parent
    planned every place, so units are written in any order, by any process, with positioned
    writes into pre-sized files.
    """
    path, edges, parts = task
    with open(path, "rb") as fh:
        lay = _layout(fh)
        if lay is None:
            raise PrepareError(f"{path} is damaged: run the same command again to redo it")
        n, sizes = lay
        fh.seek(_LEAD + n)
        n_tok = sizes[0] // 2
        if len(_SCRATCH[0]) < n_tok:
            _SCRATCH[0] = np.empty(max(n_tok, 2 * len(_SCRATCH[0])), np.uint16)
        tokens = _SCRATCH[0][:n_tok]
        if fh.readinto(memoryview(tokens).cast("B")) != sizes[0]:
            raise PrepareError(f"{path} is damaged: run the same command again to redo it")
        lengths = np.frombuffer(fh.read(sizes[1]), np.int64)
        slot_pos = np.frombuffer(fh.read(sizes[2]), np.int64)
        slot_count = np.frombuffer(fh.read(sizes[3]), np.int64)
    if len(slot_pos):
        b = np.searchsorted(np.asarray(edges, np.float64), slot_count, side="left")
        tokens[slot_pos] = DENSITY0 + b
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


def _write_group(tasks: list[tuple]) -> int:
    """A writer's share of the merge, then its shards' data made durable (fdatasync: the
    other writers' pages of a shard are flushed too, which only makes their sync shorter)."""
    return sum(_write_unit(t) for t in tasks)


def _sync(path: str | Path, data_only: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if data_only and hasattr(os, "fdatasync"):
            os.fdatasync(fd)
        else:
            os.fsync(fd)
    finally:
        os.close(fd)


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


def _write_shards(
    out: Path,
    p1: _Pass1,
    edges: Sequence[float],
    workers: _Workers | None,
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
    with ThreadPoolExecutor(max_workers=len(small) + len(shards)) as ex:
        synced = [ex.submit(_sync, tmp) for tmp, _ in small]
        if parallel:
            # Largest first, each to the least loaded worker: one message per worker.
            groups: list[list[tuple]] = [[] for _ in range(workers.n)]
            load = [0] * workers.n
            for j in sorted(range(len(tasks)), key=lambda j: -sizes[j]):
                w = load.index(min(load))
                groups[w].append(tasks[j])
                load[w] += sizes[j] + 1
            workers.send_writes(groups)
            workers.wait_writes()
        else:
            _write_group(tasks)
        synced += [ex.submit(_sync, f) for f, _ in shards]
        for f in synced:
            f.result()
    return shards + small


def _rename_all(pairs: list[tuple[Path, Path]]) -> None:
    for tmp, final in pairs:
        os.replace(tmp, final)


def _fsync_dir(path: Path) -> None:
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


def _write_text(
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
    finally:
        for fh in text.values():
            fh.close()
    return [(tmp_name(out / f"{s}.txt"), out / f"{s}.txt") for s in SPLITS]


def _merge(
    out: Path,
    work: Path,
    cfg: PrepareConfig,
    files_total: int,
    chash: str,
    p1: _Pass1,
    workers: _Workers | None = None,
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
        written = _write_shards(out, p1, edges, workers, [tok])
    else:
        written = _write_text(out, work, n_chunks, keep, edges, vocab)
        tmp = tmp_name(tok[0])
        tmp.write_bytes(tok[1])
        written.append((tmp, tok[0]))
        for t, _ in written:
            _sync(t)
    _rename_all(written)

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


def _check_out(out: Path, chash: str, listing: Listing) -> str:
    """'done' (already finished), 'resume', 'fresh', or 'stale' (ours, but its state file is
    unreadable: start over); refuses a folder that is not ours."""
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
        try:
            s = json.loads(state.read_text())
        except (OSError, ValueError):
            log.warning(
                "%s is unreadable (the machine stopped while it was written?): "
                "starting this folder over",
                state,
            )
            return "stale"
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
        return "resume"
    others = [p for p in out.iterdir() if p.name != WORK] if out.exists() else []
    if others:
        raise PrepareError(f"{out} is not empty: choose a new -o folder, or empty this one")
    return "fresh"


def _run(
    cfg: PrepareConfig,
    cfg_json: dict,
    out: Path,
    work: Path,
    listing: Listing,
    bounds: list[int],
    state: str,
    chash: str,
    procs: _Workers | None,
    progress: bool | None,
    file_timeout: float | None = None,
) -> dict:
    """The work phase and the merge."""
    files = listing.files
    n_chunks = len(bounds) - 1
    fresh = state in ("fresh", "stale")
    units = []
    done_before = []
    done_files = 0
    if fresh:
        # Nothing here is ours to reuse: every unit is (re)done and its file rewritten. A
        # left-over temporary file is never reused (its name has a dead process's id).
        if state == "stale":
            for p in work.glob("chunk-*"):
                p.unlink()
        units = list(range(n_chunks))
    else:
        for p in work.glob("*.tmp*"):
            p.unlink()
        for c in range(n_chunks):
            cp = _chunk_path(work, c)
            if cp.exists() and _chunk_done(cp):
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

    p1 = _Pass1(cfg, work, n_chunks, out)

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
        _write_state(
            work / "state.json",
            {
                "config_hash": chash,
                "listing_hash": listing.hash,
                "chunks": n_chunks,
                "config": cfg_json,
            },
        )
        return by_size()

    try:
        died = procs.encode(units, on_done, meanwhile) if procs else []
        if not procs:
            meanwhile()
        for c in sorted(died):
            part = files[bounds[c] : bounds[c + 1]]
            on_done(c, _isolate_chunk(c, part, cfg_json, work, _mp_context(), file_timeout))
    finally:
        if bar is not None:
            bar.close()
    return _merge(out, work, cfg, len(files), chash, p1, procs)


def _write_state(path: Path, state: dict) -> None:
    """The run's state file, written whole or not at all. Not fsynced: after a power loss
    an unreadable one only means starting the folder over (`_check_out` says so)."""
    tmp = tmp_name(path)
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


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
    state = _check_out(out, chash, listing)
    if state == "done":
        shutil.rmtree(out / WORK, ignore_errors=True)
        log.info("%s already holds this preparation (same arguments): nothing to do", out)
        return json.loads((out / "manifest.json").read_text())
    work = out / WORK
    work.mkdir(parents=True, exist_ok=True)
    lock = _lock(work)  # noqa: F841 (held until this function returns)
    bounds = unit_bounds(len(files), cfg.chunk_files)
    n_chunks = len(bounds) - 1
    cfg_json = cfg.to_json()
    # The workers start as their first units are handed out; fork copies the warmed codec.
    n_proc = min(workers, n_chunks)
    if n_proc and _mp_context().get_start_method() == "fork":
        _warm_up(cfg)
    job = (cfg_json, files, bounds, str(work), file_timeout)
    procs = _Workers(n_proc, job) if n_proc else None
    ok = False
    try:
        manifest = _run(
            cfg, cfg_json, out, work, listing, bounds, state, chash, procs, progress, file_timeout
        )
        ok = True
        # A kill from here on finds the manifest: .work is needed no more. The workers
        # remove their share of it while the renames are made durable (a thread: it waits
        # on the disk) and the parent removes the rest.
        syncing = threading.Thread(target=_fsync_dir, args=(out,))
        syncing.start()
        chunks = [str(_chunk_path(work, c)) for c in range(n_chunks)]
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
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
