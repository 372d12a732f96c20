"""The mmmtrack codec: notes <-> token ids (docs/mmmtrack.md is the contract).

`Codec` is the one writer of the sample layout: corpus preparation, generation's prompt plans,
the synthetic data of tests and benchmarks and the tests all build their tokens through it, so
a change to the format (a new token kind) is one edit here. Encoding is vectorised over every
note of every track of a segment at once, because corpus preparation encodes hundreds of
thousands of files; windows of bars are then slices of a per-track token array (`TrackBars`),
and the samples of many windows one gather (`Codec.windows`). Decoding, a tolerant state
machine that reads model output, lives in `bandmate.models.decoder` and is re-exported here.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from bandmate.models.config import CodecConfig
from bandmate.models.decoder import Decoded, decode
from bandmate.models.midi_io import SegmentArrays, TrackArrays
from bandmate.models.types import STEPS_PER_BAR, Note, Piece, Track
from bandmate.models.vocab import (
    BAR_END,
    BAR_START,
    DENSITY0,
    FILL_IN,
    NOTE_OFF0,
    NOTE_ON0,
    PIECE_START,
    TIME_DELTA0,
    TRACK_END,
    TRACK_START,
    Vocab,
)

__all__ = [
    "EMPTY_BAR",
    "FILL_BAR",
    "Codec",
    "Decoded",
    "TrackBars",
    "Windows",
    "decode",
    "density_bucket",
    "encode_bars",
    "encode_piece",
    "encode_track",
    "fill_density_slots",
    "piece_bars",
    "segment_bars",
    "split_at_bars",
]

S = STEPS_PER_BAR


@dataclass(frozen=True)
class TrackBars:
    """Every bar of every track of a segment, tokenised once.

    Bar b of track t is ``ids[offsets[t, b]:offsets[t, b + 1]]`` (``BAR_START ... BAR_END``), so
    a window of bars is one slice; ``onsets[t, b]`` counts that bar's NOTE_ONs (for DENSITY).
    """

    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64, (tracks, bars + 1)
    onsets: np.ndarray  # int64, (tracks, bars)

    def window(self, track: int, start_bar: int, n_bars: int) -> np.ndarray:
        o = self.offsets[track]
        return self.ids[o[start_bar] : o[start_bar + n_bars]]


def encode_bars(
    trk: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    pitch: np.ndarray,
    n_tracks: int,
    n_bars: int,
) -> TrackBars:
    """Tokenise notes (track index, start, end, pitch; steps from 0) into per-bar token runs.

    Notes must lie in ``[0, n_bars * 16]`` and must not overlap per (track, pitch); notes that
    cross a bar line are split there (re-struck), as the format says.
    """
    trk = np.asarray(trk, np.int64)
    start = np.asarray(start, np.int64)
    end = np.asarray(end, np.int64)
    pitch = np.asarray(pitch, np.int64)
    n_groups = n_tracks * n_bars
    # Split notes at bar lines.
    b0 = start // S
    k = (end - 1) // S - b0 + 1
    if len(k) and (k > 1).any():
        idx = np.repeat(np.arange(len(k)), k)
        first = np.cumsum(k) - k
        bar = b0[idx] + (np.arange(len(idx)) - first[idx])
        trk, pitch, start, end = trk[idx], pitch[idx], start[idx], end[idx]
    else:
        bar = b0
    on_t = np.maximum(start - bar * S, 0)
    off_t = np.minimum(end - bar * S, S)
    grp = trk * n_bars + bar
    m = len(grp)
    # Events: offs sort before ons at the same step, ascending pitch within a kind.
    g2 = np.concatenate([grp, grp])
    t2 = np.concatenate([off_t, on_t])
    kind = np.concatenate([np.zeros(m, np.int64), np.ones(m, np.int64)])
    p2 = np.concatenate([pitch, pitch])
    key = ((g2 * (S + 1) + t2) * 2 + kind) * 128 + p2
    order = np.argsort(key, kind="stable")
    g2, t2, kind, p2 = g2[order], t2[order], kind[order], p2[order]
    tok = np.where(kind == 1, NOTE_ON0 + p2, NOTE_OFF0 + p2)
    first_in_group = np.searchsorted(g2, g2, side="left")
    ar = np.arange(len(g2))
    prev_t = np.where(ar == first_in_group, 0, np.concatenate([[0], t2[:-1]]))
    delta = t2 - prev_t
    need = (delta > 0).astype(np.int64)
    w = 1 + need
    counts = np.bincount(g2, weights=w, minlength=n_groups).astype(np.int64)
    sizes = counts + 2
    group_start = np.zeros(n_groups + 1, np.int64)
    np.cumsum(sizes, out=group_start[1:])
    excl = np.cumsum(w) - w
    rel = excl - excl[first_in_group] if len(excl) else excl
    pos = group_start[g2] + 1 + rel + need
    ids = np.empty(int(group_start[-1]), np.int32)
    ids[group_start[:-1]] = BAR_START
    ids[group_start[1:] - 1] = BAR_END
    ids[pos] = tok
    dm = need.astype(bool)
    ids[pos[dm] - 1] = TIME_DELTA0 + delta[dm]
    onsets = np.bincount(grp, minlength=n_groups).reshape(n_tracks, n_bars)
    offsets = np.empty((n_tracks, n_bars + 1), np.int64)
    gs = group_start[:-1].reshape(n_tracks, n_bars)
    offsets[:, :n_bars] = gs
    offsets[:, n_bars] = gs[:, -1] + sizes.reshape(n_tracks, n_bars)[:, -1] if n_bars else 0
    return TrackBars(ids, offsets, onsets)


def segment_bars(seg: SegmentArrays) -> TrackBars:
    """`encode_bars` over every track of a parsed segment (empty tracks included)."""
    ts = seg.tracks
    if not ts:
        return encode_bars(*(np.zeros(0, np.int64),) * 4, 0, seg.bars)
    trk = np.repeat(np.arange(len(ts)), [len(t.start) for t in ts])
    return encode_bars(
        trk,
        np.concatenate([t.start for t in ts]),
        np.concatenate([t.end for t in ts]),
        np.concatenate([t.pitch for t in ts]),
        len(ts),
        seg.bars,
    )


def density_bucket(count: int, edges: Sequence[float]) -> int:
    """The DENSITY bucket of a note count: bucket d holds counts <= edges[d]."""
    return int(np.searchsorted(np.asarray(edges, np.float64), count, side="left"))


def fill_density_slots(
    tokens: np.ndarray, slot_pos: np.ndarray, counts: np.ndarray, edges: Sequence[float]
) -> None:
    """Write the DENSITY of each slot left by `Codec.windows` (bucketed as `density_bucket`),
    in place: prepare knows the edges only after counting every file."""
    if len(slot_pos):
        b = np.searchsorted(np.asarray(edges, np.float64), counts, side="left")
        tokens[slot_pos] = DENSITY0 + b


def _track_arrays(track: Track) -> TrackArrays:
    n = track.notes
    return TrackArrays(
        track.inst,
        track.program,
        track.is_drum,
        track.name,
        track.velocity,
        np.fromiter((x.start for x in n), np.int64, len(n)),
        np.fromiter((x.end for x in n), np.int64, len(n)),
        np.fromiter((x.pitch for x in n), np.int64, len(n)),
    )


def piece_bars(piece: Piece, start_bar: int = 0, n_bars: int | None = None) -> TrackBars:
    """Tokenise bars ``start_bar ..`` of every track of a piece (notes cut at the window)."""
    n_bars = piece.bars - start_bar if n_bars is None else n_bars
    if start_bar < 0 or n_bars < 0:
        raise ValueError("start_bar and n_bars must be >= 0")
    sub = piece.slice_bars(start_bar, n_bars) if (start_bar or n_bars != piece.bars) else piece
    seg = SegmentArrays(n_bars, sub.tempo, tuple(_track_arrays(t) for t in sub.tracks), 0)
    return segment_bars(seg)


# ------------------------------------------------------------------------------ the codec

#: A bar the model writes later, in a FILL_START..FILL_END block after the tracks (infilling).
FILL_BAR = (BAR_START, FILL_IN, BAR_END)
#: A bar with no events (a context track's slot beside a bar being written).
EMPTY_BAR = (BAR_START, BAR_END)
#: Where `Codec.header` puts a track's DENSITY token (prepare fills these slots after the fact).
_DENSITY_AT = 2
#: The ranges a sample is gathered from, per (window, track) pair (`Codec._layout`).
_PS, _HEAD, _BODY, _END = range(4)


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lens)])`` without a loop."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    excl = np.cumsum(lens) - lens
    return np.arange(total, dtype=np.int64) + np.repeat(starts - excl, lens)


@dataclass(frozen=True)
class Windows:
    """The samples of many windows of one segment, back to back (`Codec.windows`).

    A pair is one track in one sample: ``window[p]`` (index of the sample) and ``track[p]``
    (index of the track), window-major, tracks in order; ``counts[p]`` its NOTE_ONs. Kept as
    arrays because prepare's augmentation and DENSITY statistics work on them without a loop.
    """

    tokens: np.ndarray  # int32
    lengths: np.ndarray  # int64, per sample
    starts: np.ndarray  # int64, first bar of each sample's window
    window: np.ndarray  # int64, per pair
    track: np.ndarray  # int64, per pair
    counts: np.ndarray  # int64, per pair
    slot_pos: np.ndarray  # int64, position in tokens of each pair's DENSITY, if its header has one
    slot_count: np.ndarray  # int64, the note count of each of those slots
    range_len: np.ndarray  # int64 (pairs, 4): lengths of PIECE_START, header, bars, TRACK_END

    def body_mask(self, pairs: np.ndarray) -> np.ndarray:
        """Per token: whether it lies in the bars (not a header) of a pair where ``pairs``."""
        sel = np.zeros(self.range_len.shape, bool)
        sel[:, _BODY] = pairs
        return np.repeat(sel.ravel(), self.range_len.ravel())


@dataclass(frozen=True)
class _Heads:
    """The track headers of a sample as the constants its gather reads (`Codec._layout`)."""

    src: np.ndarray  # int32: PIECE_START, TRACK_END, then every header back to back
    at: np.ndarray  # int64, per track: where its header starts in src
    length: np.ndarray  # int64, per track
    slotted: np.ndarray  # bool, per track: its header has a DENSITY

    @classmethod
    def of(cls, heads: Sequence[Sequence[int]]) -> _Heads:
        length = np.fromiter((len(h) for h in heads), np.int64, len(heads))
        src = np.array([PIECE_START, TRACK_END, *(x for h in heads for x in h)], np.int32)
        return cls(src, 2 + np.cumsum(length) - length, length, length > _DENSITY_AT)


class Codec:
    """The mmmtrack layout of one codec configuration: headers, bars, samples, fills.

    One object, in the spirit of a MidiTok tokenizer, because the layout of a sample was once
    spelled out separately by prepare, generation, the synthetic data and the tests. Built
    from a `CodecConfig` (``Codec.of(config)`` caches one per config: a `Vocab` costs more to
    build than a small file costs to encode).
    """

    def __init__(self, config: CodecConfig, vocab: Vocab | None = None) -> None:
        self.config = config
        self.vocab = vocab if vocab is not None else config.vocab
        self._inst: dict[str, int] = {}
        self._heads: dict[tuple[tuple[str, ...], bool], _Heads] = {}  # for `windows`

    @classmethod
    @functools.lru_cache(maxsize=16)
    def of(cls, config: CodecConfig) -> Codec:
        """The shared codec of ``config`` (built once per configuration)."""
        return cls(config)

    def __repr__(self) -> str:
        return f"Codec({self.config!r})"

    # ---------------------------------------------------------------- the parts of a sample

    def inst_id(self, label: str) -> int:
        """The INST id of a label as this model writes it: a prompt read under another label
        scheme (a live capture, another model) is mapped (`CodecConfig.model_label`)."""
        i = self._inst.get(label)
        if i is None:
            i = self._inst[label] = self.vocab.inst_id(self.config.model_label(label))
        return i

    def header(self, label: str, density: int | None = None) -> list[int]:
        """``TRACK_START INST=<label> [DENSITY=<d>]``: DENSITY only when given and the model
        has bins, so a model trained without it never sees one."""
        h = [TRACK_START, self.inst_id(label)]
        if density is not None and self.vocab.density_bins:
            h.append(self.vocab.density_id(density))
        return h

    def density(self, count: int, bars: int | None = None) -> int | None:
        """The DENSITY of a track playing ``count`` notes in ``bars`` bars (default: a sample's),
        scaled to the model's window because the bucket edges count notes per sample; None for
        a model without DENSITY, the middle bucket for one whose edges are not known yet."""
        cfg = self.config
        if not cfg.density_bins:
            return None
        if not cfg.density_edges:
            return cfg.density_bins // 2
        scaled = count if bars is None else count * cfg.bars / max(bars, 1)
        return min(density_bucket(round(scaled), cfg.density_edges), cfg.density_bins - 1)

    def density_ids(self) -> tuple[int, ...]:
        """Every DENSITY token id (what a new track may choose from)."""
        return tuple(range(DENSITY0, DENSITY0 + self.vocab.density_bins))

    def bars(
        self, src: Piece | SegmentArrays, start_bar: int = 0, n_bars: int | None = None
    ) -> TrackBars:
        """Every bar of every track tokenised at once: a parsed segment (prepare's numpy fast
        path, whole) or bars ``start_bar ..`` of a piece (notes cut at the window)."""
        if isinstance(src, SegmentArrays):
            if start_bar or (n_bars is not None and n_bars != src.bars):
                raise ValueError("a segment is tokenised whole: slice windows of its TrackBars")
            return segment_bars(src)
        return piece_bars(src, start_bar, n_bars)

    def track(
        self,
        tb: TrackBars,
        index: int,
        label: str,
        density: int | None = None,
        fills: Collection[int] = (),
    ) -> list[int]:
        """Header, every bar of track ``index`` of ``tb`` and TRACK_END; the bars in ``fills``
        (indices into ``tb``) become FILL_IN placeholders, for an infilling prompt."""
        o = tb.offsets[index]
        out = self.header(label, density)
        if not fills:
            out += tb.ids[o[0] : o[-1]].tolist()
        else:
            for b in range(len(o) - 1):
                out += FILL_BAR if b in fills else tb.ids[o[b] : o[b + 1]].tolist()
        out.append(TRACK_END)
        return out

    # ---------------------------------------------------------------- whole samples

    def sample(
        self,
        piece: Piece,
        start_bar: int = 0,
        n_bars: int | None = None,
        densities: dict[int, int] | Sequence[int | None] | None = None,
        keep_empty: bool = False,
    ) -> np.ndarray:
        """``PIECE_START`` and every track with notes in the window, in track order (all of
        them with ``keep_empty``: a prompt may name a silent part).

        ``densities`` overrides the DENSITY of track i; otherwise it is bucketed from the note
        count with the config's edges (omitted while the config has none).
        """
        n_bars = piece.bars - start_bar if n_bars is None else n_bars
        tb = self.bars(piece, start_bar, n_bars)
        counts = tb.onsets.sum(axis=1)
        present = (counts > 0) | keep_empty
        heads = []
        for i, t in enumerate(piece.tracks):
            d = None
            if present[i] and densities is not None:
                d = densities.get(i) if isinstance(densities, dict) else densities[i]
            if present[i] and d is None and self.config.density_edges:
                d = self.density(int(counts[i]))
            heads.append(self.header(t.inst, d) if present[i] else [])
        w = self._layout(
            tb, _Heads.of(heads), np.zeros(1, np.int64), n_bars, present[:, None], counts[:, None]
        )
        return np.array([PIECE_START], np.int32) if w is None else w.tokens

    def windows(
        self,
        tb: TrackBars,
        labels: Sequence[str],
        starts: np.ndarray,
        n_bars: int,
        density: bool,
    ) -> Windows | None:
        """The samples of the ``n_bars``-bar windows at ``starts`` of a tokenised segment, at
        once (prepare's fast path: a few numpy calls per segment, none per sample). A window
        without notes is no sample (None when none has notes). With ``density`` each header
        gets a placeholder DENSITY=0 whose position and note count are returned, because the
        bucket edges come from the whole corpus and are known only after every file."""
        n_tracks, n_seg = tb.onsets.shape
        cs = np.zeros((n_tracks, n_seg + 1), np.int64)
        np.cumsum(tb.onsets, axis=1, out=cs[:, 1:])
        counts = cs[:, starts + n_bars] - cs[:, starts]  # (tracks, windows)
        present = counts > 0
        keep = present.any(axis=0)
        if not keep.all():
            if not keep.any():
                return None
            starts, counts, present = starts[keep], counts[:, keep], present[:, keep]
        key = (tuple(labels), density)
        heads = self._heads.get(key)
        if heads is None:  # a corpus has few label lists: build each once
            if len(self._heads) > 4096:
                self._heads.clear()
            lists = [self.header(lab, 0 if density else None) for lab in labels]
            heads = self._heads[key] = _Heads.of(lists)
        return self._layout(tb, heads, starts, n_bars, present, counts)

    def _layout(
        self,
        tb: TrackBars,
        heads: _Heads,
        starts: np.ndarray,
        n_bars: int,
        present: np.ndarray,
        counts: np.ndarray,
    ) -> Windows | None:
        """The sample layout, written once: per window, PIECE_START, then per present track
        its header, its bars and TRACK_END; one gather of ranges of ``tb.ids`` and constants."""
        ww, tt = np.nonzero(present.T)  # pairs (window, track), window-major, tracks in order
        n_pairs = len(ww)
        if not n_pairs:
            return None
        body_start = tb.offsets[tt, starts[ww]]
        body_len = tb.offsets[tt, starts[ww] + n_bars] - body_start
        n_ids = len(tb.ids)
        src = np.concatenate([tb.ids, heads.src])
        head_len = heads.length[tt]
        first = np.ones(n_pairs, bool)
        first[1:] = ww[1:] != ww[:-1]
        rs = np.empty((n_pairs, 4), np.int64)
        rl = np.ones((n_pairs, 4), np.int64)
        rs[:, _PS] = n_ids
        rl[:, _PS] = first
        rs[:, _HEAD] = heads.at[tt] + n_ids
        rl[:, _HEAD] = head_len
        rs[:, _BODY] = body_start
        rl[:, _BODY] = body_len
        rs[:, _END] = n_ids + 1
        tokens = src[_ranges(rs.ravel(), rl.ravel())]
        pair_len = head_len + body_len + first + 1
        lengths = np.add.reduceat(pair_len, np.flatnonzero(first))
        pair_counts = counts[tt, ww]
        slot_pos = np.cumsum(pair_len) - pair_len + first + _DENSITY_AT
        slot_count = pair_counts
        if not heads.slotted.all():
            slotted = heads.slotted[tt]
            slot_pos, slot_count = slot_pos[slotted], pair_counts[slotted]
        return Windows(tokens, lengths, starts, ww, tt, pair_counts, slot_pos, slot_count, rl)

    def decode(self, ids: Iterable[int], bars: int | None = None, tempo: float = 120.0) -> Decoded:
        """Token ids -> Piece (`bandmate.models.decoder.decode`: never raises)."""
        return decode(ids, self.vocab, bars, tempo)


# ------------------------------------------------------------------------------ functions


def encode_track(
    track: Track,
    config: CodecConfig,
    start_bar: int = 0,
    n_bars: int | None = None,
    density: int | None = None,
) -> np.ndarray:
    """``TRACK_START INST [DENSITY] bar* TRACK_END`` for one track (empty bars included);
    `Codec.sample` of that track alone, without PIECE_START."""
    n = n_bars if n_bars is not None else _bars_of(track) - start_bar
    piece = Piece((track,), max(start_bar + n, _bars_of(track)))  # notes past the window too
    return Codec.of(config).sample(piece, start_bar, n, [density], keep_empty=True)[1:]


def _bars_of(track: Track) -> int:
    last = max((n.end for n in track.notes), default=0)
    return max(1, -(-last // S))


def encode_piece(
    piece: Piece,
    config: CodecConfig,
    start_bar: int = 0,
    n_bars: int | None = None,
    densities: dict[int, int] | Sequence[int | None] | None = None,
    keep_empty: bool = False,
) -> np.ndarray:
    """`Codec.sample` of ``config``'s codec (kept for callers that hold only a config)."""
    return Codec.of(config).sample(piece, start_bar, n_bars, densities, keep_empty)


def split_at_bars(notes: Iterable[Note]) -> list[Note]:
    """Notes as the format stores them: cut (and re-struck) at every bar line."""
    out = []
    for n in notes:
        s = n.start
        while s < n.end:
            e = min(n.end, (s // S + 1) * S)
            out.append(Note(s, n.pitch, e))
            s = e
    return sorted(out)
