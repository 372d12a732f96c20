"""What a sample is: windows of a 4/4 stretch, their transpositions, and their tokens.

Why a module of its own: this is the pure core of ``bandmate prepare`` (numpy in, numpy
out; no files written, no processes), the part a reader checks against docs/mmmtrack.md and
docs/prepare.md ("What a sample is"). All per-note work is numpy: the codec tokenises every
bar of a segment at once (`Codec.bars`) and lays out the samples of every window in one
gather of ranges of that array (`Codec.windows`: the layout lives only in the codec); this
module chooses the windows and adds the transpositions, one masked add per shift
(`encode_segment`). DENSITY needs corpus statistics, so a sample leaves a slot per track and
records its note count; the merge fills the slots from the quantiles of those counts
(`density_edges_from_hist`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from bandmate.models.codec import Codec
from bandmate.models.midi_io import MidiError, SegmentArrays, read_segments_arrays
from bandmate.models.vocab import NOTE_OFF0, NOTE_ON0, Vocab
from bandmate.training.corpus.config import PrepareConfig

_NOTE_END = NOTE_OFF0 + 128  # NOTE_ON and NOTE_OFF ids are [NOTE_ON0, _NOTE_END)
#: Tracks x bars of one 4/4 stretch above which a file is refused: the per-bar arrays would
#: take gigabytes (a damaged delta time can put a note days after the others).
MAX_TRACK_BARS = 8_000_000


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


def empty_encoded() -> Encoded:
    """No samples (a skipped file)."""
    z = np.zeros(0, np.int64)
    return Encoded(np.zeros(0, np.uint16), z, 0, z, z)


def _window_min(x: np.ndarray, starts: np.ndarray, n: int, op: Callable) -> np.ndarray:
    """``op`` (np.min or np.max) over each window of ``n`` values of ``x`` at ``starts``."""
    return op(np.lib.stride_tricks.sliding_window_view(x, n)[starts], axis=1)


def encode_segment(
    seg: SegmentArrays,
    codec: Codec,
    bars: int,
    hop: int,
    shifts: Sequence[int] = (),
    density: bool = False,
) -> tuple[list[tuple[np.ndarray, ...]], int]:
    """Samples of every ``bars``-bar window of a 4/4 segment (window starts ``0, hop, ...``).

    The layout is the codec's (`Codec.windows`: PIECE_START, then per track with notes in the
    window its header, bars and TRACK_END); what is prepare's own is which windows, and the
    transpositions. Returns parts ``(tokens, lengths, slot_pos, slot_count)``: the
    un-augmented samples, then one part per valid transposition, and the number of
    un-augmented samples.
    """
    n_tracks, n_bars_seg = len(seg.tracks), seg.bars
    if n_tracks == 0 or n_bars_seg < bars:
        return [], 0
    tb = codec.bars(seg)
    starts = np.arange(0, n_bars_seg - bars + 1, hop, dtype=np.int64)
    w = codec.windows(tb, [t.label for t in seg.tracks], starts, bars, density)
    if w is None:
        return [], 0
    starts, tokens, lengths, ww = w.starts, w.tokens, w.lengths, w.window
    n_win = len(starts)
    if density:
        slot_pos, slot_count = w.slot_pos, w.slot_count
    else:
        slot_pos = slot_count = np.zeros(0, np.int64)
    parts = [(tokens, lengths, slot_pos, slot_count)]
    if not shifts:
        return parts, n_win
    pitched = ~np.fromiter((t.is_drum for t in seg.tracks), bool, n_tracks)
    if not pitched.any():
        return parts, n_win  # drums are never transposed: every shift would be a copy
    # Which tokens move: NOTE_ON/NOTE_OFF in the bars of pitched tracks.
    movable = w.body_mask(pitched[w.track])
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
        return empty_encoded()
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
def prepare_codec(cfg: PrepareConfig, meter: str | None = None) -> Codec:
    """Built once per run: a Vocab costs more to build than a small file costs to encode."""
    config = cfg.codec()
    if meter is not None and meter != config.meter:
        config = replace(config, meter=meter)
    codec = Codec.of(config)
    if codec.vocab.size > 0xFFFF:
        raise ValueError(f"a vocabulary of {codec.vocab.size} tokens does not fit in uint16")
    return codec


def encode_file(
    src: str | os.PathLike | bytes,
    cfg: PrepareConfig,
    augment: bool = True,
    meter: str | None = None,
) -> Encoded:
    """All samples of one MIDI file (raises MidiError when the file is unusable);
    ``meter`` overrides the config's (a per-source meter)."""
    codec = prepare_codec(cfg, meter)
    segs = read_segments_arrays(src, codec.config)
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
        parts, n = encode_segment(seg, codec, cfg.bars, cfg.window_hop, shifts, density)
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


def label_counts(tokens: np.ndarray, vocab: Vocab) -> dict[str, int]:
    """How many tracks of each INST label the samples hold (done in the workers)."""
    t = tokens[tokens >= vocab.inst0].astype(np.int64) - vocab.inst0
    c = np.bincount(t, minlength=len(vocab.labels))
    return {vocab.labels[i]: int(c[i]) for i in np.flatnonzero(c)}
