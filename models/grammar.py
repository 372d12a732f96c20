"""The mmmtrack bar grammar as a state machine that masks logits (docs/mmmtrack.md).

Generation never trusts the model to follow the format: before every sampled token the state
machine says which ids are legal, so every generated bar decodes with zero repairs. It also
keeps the canonical order the codec writes (NOTE_OFFs before NOTE_ONs at one step, ascending
pitch within a kind, no repeated or trailing TIME_DELTA), which keeps the model in the
distribution it was trained on.

A `BarGrammar` covers one bar, from just after its BAR_START up to and including its
BAR_END; everything around bars (TRACK_START, INST, DENSITY, BAR_START, TRACK_END) is forced
by the generator. Masks are numpy bool arrays over the vocabulary, built from precomputed
slices, because this runs once per sampled token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from bandmate.models.types import STEPS_PER_BAR
from bandmate.models.vocab import BAR_END, NOTE_OFF0, NOTE_ON0, TIME_DELTA0

S = STEPS_PER_BAR

#: Phases inside one step: what the last token was.
_START, _AFTER_DELTA, _AFTER_OFF, _AFTER_ON = range(4)

#: Major and natural minor scales as pitch classes, for ``scale_mask``.
SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
}
PITCH_CLASSES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def pitch_mask(
    pitch_range: tuple[int, int] | None = None, scale: Iterable[int] | str | None = None
) -> np.ndarray:
    """Which of the 128 pitches NOTE_ON may use: a range (inclusive) and/or pitch classes.

    ``scale`` is pitch classes (0 = C) or a name like "D minor" / "Bb major".
    """
    allowed = np.ones(128, bool)
    if pitch_range is not None:
        lo, hi = int(pitch_range[0]), int(pitch_range[1])
        if not 0 <= lo <= hi <= 127:
            raise ValueError(
                f"pitch_range must be (lo, hi) with 0 <= lo <= hi <= 127, got {pitch_range}"
            )
        allowed[:lo] = False
        allowed[hi + 1 :] = False
    if scale is not None:
        pcs = parse_scale(scale)
        allowed &= np.isin(np.arange(128) % 12, list(pcs))
    return allowed


def parse_scale(scale: Iterable[int] | str) -> tuple[int, ...]:
    """Pitch classes of a scale given as ints or as "<tonic> major|minor" ("F# minor")."""
    if isinstance(scale, str):
        parts = scale.strip().split()
        if len(parts) != 2 or parts[1].lower() not in SCALES:
            raise ValueError(
                f"scale must look like 'C major' or 'F# minor' (modes: {', '.join(SCALES)}), "
                f"got {scale!r}"
            )
        name = parts[0]
        if not name or name[0].upper() not in PITCH_CLASSES:
            raise ValueError(f"unknown tonic {name!r}: use A..G with an optional # or b")
        pc = PITCH_CLASSES[name[0].upper()]
        for acc in name[1:]:
            if acc == "#":
                pc += 1
            elif acc == "b":
                pc -= 1
            else:
                raise ValueError(f"unknown tonic {name!r}: use A..G with an optional # or b")
        return tuple(sorted((pc + i) % 12 for i in SCALES[parts[1].lower()]))
    pcs = tuple(sorted({int(p) for p in scale}))
    if not pcs or not all(0 <= p <= 11 for p in pcs):
        raise ValueError(f"scale pitch classes must be a non-empty set of 0..11, got {scale}")
    return pcs


@dataclass
class BarGrammar:
    """The legal continuations inside one bar, updated token by token.

    ``allowed_on`` restricts NOTE_ON pitches (range / scale). When ``closing`` is set (the
    bar's token budget or the context is running out), no new notes start: sounding notes
    are closed and the bar ends in at most ``len(sounding) + 2`` tokens. ``must_play`` (set
    per bar, cleared by `reset`) forbids an empty bar: the generator sets it on the last bar of
    a track the user asked for when that track is still silent, because "Add bass" that
    returns no bass is a failed request, not a musical choice.
    """

    vocab_size: int
    allowed_on: np.ndarray | None = None
    max_tokens: int = 192
    end_token: int = BAR_END  # FILL_END for an infilled bar

    def __post_init__(self) -> None:
        self.t = 0
        self.phase = _START
        self.last_pitch = -1  # last pitch of the current kind at this step
        self.sounding = np.zeros(128, bool)
        self.onset = np.zeros(128, np.int64)
        self.n_tokens = 0
        self.closing = False
        self.must_play = False
        self.done = False
        self._on_ok = np.ones(128, bool) if self.allowed_on is None else self.allowed_on.copy()
        self._mask = np.zeros(self.vocab_size, bool)

    def reset(self) -> None:
        """Start a new bar (reuses the buffers)."""
        self.t = 0
        self.phase = _START
        self.last_pitch = -1
        self.sounding[:] = False
        self.n_tokens = 0
        self.closing = False
        self.must_play = False
        self.done = False

    # ------------------------------------------------------------------ masks
    def mask(self) -> np.ndarray:
        """Bool array over the vocabulary: True where the next token is legal."""
        m = self._mask
        m[:] = False
        closing = self.closing or self.n_tokens >= self.max_tokens
        any_sounding = bool(self.sounding.any())
        t, ph = self.t, self.phase
        # NOTE_OFF: only sounding pitches started before this step, before any NOTE_ON here.
        if ph in (_START, _AFTER_DELTA, _AFTER_OFF) and any_sounding:
            offs = self.sounding.copy()
            if ph == _AFTER_OFF:
                offs[: self.last_pitch + 1] = False
            if t >= S:  # at the bar end every open note closes now, lowest pitch first
                first = int(np.argmax(self.sounding))
                offs[:] = False
                offs[first] = True
            m[NOTE_OFF0 : NOTE_OFF0 + 128] = offs
        # NOTE_ON: not at the bar end, not for a sounding pitch, ascending within the step.
        if t < S and not closing:
            ons = self._on_ok & ~self.sounding
            if ph == _AFTER_ON:
                ons[: self.last_pitch + 1] = False
            m[NOTE_ON0 : NOTE_ON0 + 128] = ons
        # TIME_DELTA: never twice in a row, never past step 16; reaching 16 only to close notes.
        if ph != _AFTER_DELTA and t < S:
            if closing:
                if any_sounding:
                    m[TIME_DELTA0 + S - t] = True  # straight to the bar end, notes close there
            else:
                # A rest (delta with nothing sounding) must lead to a note that may start.
                top = S - t if any_sounding else (S - t - 1 if self._on_ok.any() else 0)
                if top >= 1:
                    m[TIME_DELTA0 + 1 : TIME_DELTA0 + top + 1] = True
        # BAR_END: nothing sounding, no trailing delta; not before the first token of a bar
        # that must play (a rest there already has to lead to a note).
        if not any_sounding and ph != _AFTER_DELTA and not (self.must_play and self.n_tokens == 0):
            m[self.end_token] = True
        if not m.any():  # e.g. a delta into a step where the pitch mask allows no NOTE_ON
            if any_sounding:
                m[NOTE_OFF0 : NOTE_OFF0 + 128] = self.sounding
            else:
                m[self.end_token] = True
        return m

    # ------------------------------------------------------------------ transitions
    def advance(self, tok: int) -> tuple[int, int, int] | None:
        """Take one token; returns (pitch, start, end) in bar steps when it closed a note."""
        self.n_tokens += 1
        if tok == self.end_token:
            self.done = True
            return None
        if TIME_DELTA0 + 1 <= tok <= TIME_DELTA0 + S:
            self.t += tok - TIME_DELTA0
            self.phase = _AFTER_DELTA
            self.last_pitch = -1
            return None
        if NOTE_OFF0 <= tok < NOTE_OFF0 + 128:
            p = tok - NOTE_OFF0
            self.sounding[p] = False
            self.phase = _AFTER_OFF
            self.last_pitch = p
            return p, int(self.onset[p]), self.t
        if NOTE_ON0 <= tok < NOTE_ON0 + 128:
            p = tok - NOTE_ON0
            self.sounding[p] = True
            self.onset[p] = self.t
            self.phase = _AFTER_ON
            self.last_pitch = p
            return None
        raise ValueError(f"token {tok} is not legal inside a bar")

    def forced(self) -> int | None:
        """The only legal next token, when there is exactly one (fed without sampling)."""
        m = self.mask()
        idx = np.flatnonzero(m)
        return int(idx[0]) if len(idx) == 1 else None


def check_bar(tokens: Sequence[int], vocab_size: int) -> None:
    """Raise ValueError when a bar body (after BAR_START, through BAR_END) breaks the grammar.

    Used by tests and by `--tokens` debugging: the generator itself never needs it.
    """
    g = BarGrammar(vocab_size)
    for i, tok in enumerate(tokens):
        if g.done:
            raise ValueError(f"token {i} after BAR_END")
        if not g.mask()[tok]:
            raise ValueError(f"token {tok} at {i} is illegal (t={g.t}, phase={g.phase})")
        g.advance(int(tok))
    if not g.done:
        raise ValueError("bar not closed by BAR_END")
