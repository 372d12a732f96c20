"""The plans of `bandmate.models.generate`: what each task writes, window by window.

A job (`ContinueJob`, `AddJob`, `InfillJob`) checks a request, cuts the prompt until a
window fits the model's context, and lists its windows; for each window and batch row,
``Job.plan`` returns the actions the loop in `bandmate.models.generate` carries out: tokens
to `Force` (prompt bars, headers), one to `Choose` among a few (an added track's DENSITY),
a `Bar` to sample under the bar grammar, an event to `Emit` (`BarDone`). The jobs choose
which tracks and bars a window holds (the module docstring of `bandmate.models.generate`
describes it) and write them through the model's codec (`session.codec`: headers, bar runs,
whole tracks, fill placeholders), so a prompt has the layout of a training sample; the loop
knows the model, the KV cache and the sampler. A `Row` is one batch row: its plan, its
grammar and random generator, and the notes it has written so far.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from bandmate.models.codec import EMPTY_BAR
from bandmate.models.generate_types import BarDone, GenerationError
from bandmate.models.grammar import BarGrammar, pitch_mask
from bandmate.models.midi_merge import summarise
from bandmate.models.sampler import SamplingConfig
from bandmate.models.session import ModelSession
from bandmate.models.types import DRUM_CHANNEL, STEPS_PER_BAR, Note, Piece, Track
from bandmate.models.vocab import (
    BAR_END,
    BAR_START,
    DENSITY0,
    FILL_END,
    FILL_START,
    PIECE_START,
    TRACK_END,
)

log = logging.getLogger("bandmate.models.generate")  # the name these messages always had
S = STEPS_PER_BAR

#: Tokens reserved per bar to be written when checking that a request fits the context.
MIN_ROOM_PER_BAR = 24


# ------------------------------------------------------------------------------ plans


@dataclass(frozen=True)
class Force:
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Choose:
    """Sample one of ``ids`` (e.g. the DENSITY of a new track) and remember it as ``key``."""

    ids: tuple[int, ...]
    key: str


@dataclass(frozen=True)
class Bar:
    track: int
    bar: int
    start: int = BAR_START
    end: int = BAR_END


@dataclass(frozen=True)
class Emit:
    event: object


Action = Force | Choose | Bar | Emit


def cost(a: Action) -> int:
    """Fewest tokens an action can take (for the context guard)."""
    if isinstance(a, Force):
        return len(a.ids)
    if isinstance(a, Bar):
        return 2
    if isinstance(a, Choose):
        return 1
    return 0


@dataclass
class Row:
    """One sequence being written: its plan for the current window and its results."""

    index: int
    rng: np.random.Generator
    grammar: BarGrammar
    notes: dict[int, list[Note]]
    choices: dict[str, int] = field(default_factory=dict)
    plan: list[Action] = field(default_factory=list)
    suffix: list[int] = field(default_factory=list)
    ip: int = 0
    pending: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    windows: list[list[int]] = field(default_factory=list)
    sampled: int = 0

    def start(self, plan: list[Action]) -> None:
        self.plan = plan
        costs = [cost(a) for a in plan]
        self.suffix = [*(int(x) for x in np.cumsum(costs[::-1])[::-1][1:]), 0]
        self.ip = 0
        self.pending = []
        self.tokens = []

    @property
    def action(self) -> Action | None:
        return self.plan[self.ip] if self.ip < len(self.plan) else None


class Job:
    """What a task asks for: the result skeleton and a plan builder per window and row."""

    def __init__(self, session: ModelSession, result: Piece, sampling: SamplingConfig) -> None:
        self.session = session
        self.result = result  # prompt tracks plus any new track, at the final bar count
        self.sampling = sampling
        self.windows: list[object] = []
        self.cuts: list[str] = []

    def plan(self, row: Row, window: object) -> list[Action]:  # pragma: no cover - abstract
        raise NotImplementedError

    def must_play(self, row: Row, bar: Bar) -> bool:
        """Whether ``bar`` may not be left empty (see BarGrammar.must_play)."""
        return False

    def row_piece(self, row: Row) -> Piece:
        """The result piece as far as ``row`` has written it (prompt notes + its notes)."""
        tracks = []
        for i, t in enumerate(self.result.tracks):
            extra = row.notes.get(i)
            tracks.append(t.with_notes(list(t.notes) + extra) if extra else t)
        return replace(self.result, tracks=tuple(tracks))

# ------------------------------------------------------------------------------ helpers


def _bar_runs(session: ModelSession, piece: Piece, start_bar: int, n_bars: int) -> list[list[int]]:
    """Per track, the tokens of bars ``start_bar .. start_bar + n_bars - 1``."""
    if n_bars <= 0:
        return [[] for _ in piece.tracks]
    tb = session.codec.bars(piece, start_bar, n_bars)
    return [tb.window(i, 0, n_bars).tolist() for i in range(len(piece.tracks))]


def _nonempty(run: list[int], n_bars: int) -> bool:
    """Whether a run of ``n_bars`` bar tokens holds any event (empty bars are 2 tokens)."""
    return len(run) > 2 * n_bars


def _free_channel(prompt: Piece, label: str) -> int:
    if label == "DRUMS":
        return DRUM_CHANNEL
    used = {t.channel for t in prompt.tracks}
    return next((c for c in range(16) if c != DRUM_CHANNEL and c not in used), 0)


def pitch_filter(session: ModelSession, sampling: SamplingConfig, label: str) -> np.ndarray | None:
    if sampling.pitch_range is None and sampling.scale is None:
        return None
    if label == "DRUMS":  # drum "pitches" are instruments: a key or range means nothing there
        return None
    return pitch_mask(sampling.pitch_range, sampling.scale)


# ------------------------------------------------------------------------------ continue


class ContinueJob(Job):
    def __init__(
        self,
        session: ModelSession,
        prompt: Piece,
        bars: int,
        tracks: Sequence[int] | None,
        sampling: SamplingConfig,
    ) -> None:
        if bars < 1:
            raise GenerationError(f"bars to continue must be >= 1, got {bars}")
        if not prompt.tracks:
            raise GenerationError("the prompt has no tracks: open a MIDI file with notes first")
        chosen = list(range(len(prompt.tracks))) if tracks is None else sorted(set(tracks))
        bad = [i for i in chosen if not 0 <= i < len(prompt.tracks)]
        if bad or not chosen:
            raise GenerationError(
                f"tracks must be indices 0..{len(prompt.tracks) - 1} of the prompt, got {tracks}"
            )
        super().__init__(session, replace(prompt, bars=prompt.bars + bars), sampling)
        self.prompt = prompt
        self.chosen = chosen
        w = session.bars
        known = min(w - 1, prompt.bars)
        self.known = known
        self.context_tracks = list(range(len(prompt.tracks)))
        # Fixed DENSITY per track: its note count over the prompt's last W bars.
        self.density: dict[int, int | None] = {}
        lo = max(0, prompt.bars - w) * S
        for i, t in enumerate(prompt.tracks):
            n = sum(1 for x in t.notes if x.start >= lo)
            self.density[i] = session.codec.density(n, min(w, prompt.bars) or 1)
        self.windows = list(range(prompt.bars, prompt.bars + bars))
        self._fit()

    def _fit(self) -> None:
        """Cut context tracks, then the oldest known bars, until a window fits."""
        n_pos = self.session.n_positions
        room = len(self.chosen) * (MIN_ROOM_PER_BAR + 2)
        def size() -> int:
            # Generated bars are estimated by the prompt's last bars (same tracks, same style).
            runs = _bar_runs(self.session, self.prompt, self.prompt.bars - self.known, self.known)
            n = 1
            for i in self.context_tracks:
                chosen = i in self.chosen
                if chosen or _nonempty(runs[i], self.known):
                    n += 4 + len(runs[i]) + (0 if chosen else 2)
            return n

        # The prompt is what history can hold; generated bars are estimated like the prompt's.
        while size() + room > n_pos:
            extra = [i for i in self.context_tracks if i not in self.chosen]
            if extra:
                drop = extra[-1]
                self.context_tracks.remove(drop)
                self.cuts.append(f"context track {drop} ({self.prompt.tracks[drop].inst}) left out")
            elif self.known > 0:
                self.known -= 1
                self.cuts.append(f"context cut to {self.known} bar(s) before each new bar")
            else:
                raise GenerationError(
                    f"continuing {len(self.chosen)} track(s) does not fit this model's context of "
                    f"{n_pos} tokens even without history: continue fewer tracks at once"
                )
        if self.cuts:
            log.info("prompt cut to fit %d tokens: %s", n_pos, summarise(self.cuts))

    def plan(self, row: Row, window: object) -> list[Action]:
        b = int(window)  # type: ignore[call-overload]
        known = min(self.known, b)
        piece = self.row_piece(row)
        codec = self.session.codec
        runs = _bar_runs(self.session, piece, b - known, known)
        plan: list[Action] = [Force((PIECE_START,))]
        for i in self.context_tracks:
            t = piece.tracks[i]
            chosen = i in self.chosen
            if not chosen and not _nonempty(runs[i], known):  # silent in the window: left out
                continue
            plan.append(Force(tuple(codec.header(t.inst, self.density[i]) + runs[i])))
            plan.append(Bar(i, b) if chosen else Force(EMPTY_BAR))
            plan.append(Force((TRACK_END,)))
        plan.append(Emit(BarDone(b)))
        return plan


# ------------------------------------------------------------------------------ add track


def resolve_instrument(session: ModelSession, instrument: str) -> tuple[str, int]:
    """(INST label, GM program for playback) from what a user typed: a model label, "bass",
    "drums", a GM name ("Electric Bass (finger)"), a family ("guitar", "strings") or a
    program number. A gm-family model gets the family label; the program stays the one asked
    for, so the new part sounds as chosen."""
    from bandmate.models.instruments import parse_instrument

    text = str(instrument).strip()
    cfg = session.config
    labels = session.vocab.labels
    if text.lower() == "bass":
        label = session.bass_label
        return label, int(label) if label.isdigit() else 0
    if text.upper() in labels and not text.isdigit():
        label = cfg.model_label(text.upper())
        return label, int(label) if label.isdigit() else 0
    found = parse_instrument(text)
    if found == "DRUMS":
        return "DRUMS", 0
    if isinstance(found, int):
        return cfg.model_label(str(found)), found
    seen = ", ".join(session.labels_seen) or ", ".join(labels[:6])
    raise GenerationError(
        f"unknown instrument {instrument!r}: use one of this model's labels ({seen}), 'bass', "
        "'drums', a General MIDI name or family ('Electric Bass (finger)', 'guitar') or a "
        "program number 0-127"
    )


def resolve_label(session: ModelSession, instrument: str) -> str:
    """The INST label of what a user typed (see `resolve_instrument`)."""
    return resolve_instrument(session, instrument)[0]


class AddJob(Job):
    def __init__(
        self,
        session: ModelSession,
        prompt: Piece,
        instrument: str,
        density: int | None,
        sampling: SamplingConfig,
    ) -> None:
        if prompt.bars < 1:
            raise GenerationError("the prompt has no bars: a new track needs bars to play over")
        label, program = resolve_instrument(session, instrument)
        bins = session.config.density_bins
        if density is not None and bins and not 0 <= density < bins:
            raise GenerationError(f"density must be 0..{bins - 1} for this model, got {density}")
        new = Track(
            label,
            (),
            program=program,
            channel=_free_channel(prompt, label),
            name=label.title() if not label.isdigit() else "",
        )
        super().__init__(session, replace(prompt, tracks=(*prompt.tracks, new)), sampling)
        self.prompt = prompt
        self.label = label
        self.new_index = len(prompt.tracks)
        self.density = density if bins else None
        self.context_tracks = list(range(len(prompt.tracks)))
        self.window = min(session.bars, prompt.bars)
        self.allowed = pitch_filter(session, sampling, label)
        self._fit()
        # Window 0 writes bars 0..w-1; each later window writes one more bar.
        w = self.window
        self.windows = [(0, w)] + [(b - w + 1, b + 1) for b in range(w, prompt.bars)]

    def _fit(self) -> None:
        n_pos = self.session.n_positions
        while True:
            worst = 0
            for b0 in range(0, max(1, self.prompt.bars - self.window + 1)):
                runs = _bar_runs(self.session, self.prompt, b0, self.window)
                n = 1 + sum(
                    4 + len(runs[i]) for i in self.context_tracks if _nonempty(runs[i], self.window)
                )
                worst = max(worst, n)
            need = worst + 4 + self.window * (MIN_ROOM_PER_BAR + 2)
            if need <= n_pos:
                break
            if len(self.context_tracks) > 1:
                drop = self.context_tracks.pop()
                self.cuts.append(f"context track {drop} ({self.prompt.tracks[drop].inst}) left out")
            elif self.window > 1:
                self.window -= 1
                self.cuts.append(f"window cut to {self.window} bar(s)")
            else:
                raise GenerationError(
                    f"the prompt does not fit this model's context of {n_pos} tokens even cut to "
                    "one track and one bar: use a shorter or simpler prompt"
                )
        if self.cuts:
            log.info("prompt cut to fit %d tokens: %s", n_pos, summarise(self.cuts))

    def must_play(self, row: Row, bar: Bar) -> bool:
        """The new track's last bar plays when every bar before it came out empty."""
        return (
            bar.track == self.new_index
            and bar.bar == self.prompt.bars - 1
            and not row.notes.get(self.new_index)
        )

    def plan(self, row: Row, window: object) -> list[Action]:
        b0, b1 = window  # type: ignore[misc]
        piece = self.row_piece(row)
        n = b1 - b0
        codec = self.session.codec
        tb = codec.bars(piece, b0, n)
        plan: list[Action] = [Force((PIECE_START,))]
        for i in self.context_tracks:
            count = int(tb.onsets[i].sum())
            if count:
                dens = codec.density(count, n)
                plan.append(Force(tuple(codec.track(tb, i, piece.tracks[i].inst, dens))))
        first = b0 == 0
        new_from = b0 if first else b1 - 1  # bars before this one were written by earlier windows
        d = self.density
        if d is None and "density" in row.choices:
            d = row.choices["density"] - DENSITY0
        if self.session.config.density_bins and d is None:  # the model picks it, once
            plan.append(Force(tuple(codec.header(self.label))))
            plan.append(Choose(codec.density_ids(), "density"))
            head = []
        else:
            head = codec.header(self.label, d)
        known = tb.window(self.new_index, 0, new_from - b0).tolist()
        plan.append(Force(tuple(head + known)))
        for b in range(new_from, b1):
            plan.append(Bar(self.new_index, b))
            plan.append(Emit(BarDone(b)))
        plan.append(Force((TRACK_END,)))
        return plan


# ------------------------------------------------------------------------------ infill


class InfillJob(Job):
    def __init__(
        self,
        session: ModelSession,
        prompt: Piece,
        track: int,
        bars: Sequence[int],
        sampling: SamplingConfig,
    ) -> None:
        if not session.fills:
            raise GenerationError(
                f"model {session.name} was trained without fills (FILL_IN / FILL_START), so it "
                "cannot infill bars: use Continue or Add track, or a model exported with fills"
            )
        if not 0 <= track < len(prompt.tracks):
            raise GenerationError(f"track must be 0..{len(prompt.tracks) - 1}, got {track}")
        fill = sorted(set(int(b) for b in bars))
        w = session.bars
        if not fill or fill[0] < 0 or fill[-1] >= prompt.bars:
            raise GenerationError(f"bars to infill must be in 0..{prompt.bars - 1}, got {bars}")
        if fill[-1] - fill[0] >= w:
            raise GenerationError(
                f"infill at most {w} neighbouring bars at a time (the model's window)"
            )
        t = prompt.tracks[track]
        kept = []
        for x in t.notes:  # notes in the fill bars go; notes running into them are cut there
            if x.start // S in fill:
                continue
            cut = next((b * S for b in fill if x.start < b * S < x.end), None)
            kept.append(x if cut is None else Note(x.start, x.pitch, cut))
        tracks = list(prompt.tracks)
        tracks[track] = t.with_notes(kept)
        super().__init__(session, replace(prompt, tracks=tuple(tracks)), sampling)
        self.track = track
        self.fill = fill
        start = min(max(0, fill[0] - (w - (fill[-1] - fill[0] + 1)) // 2), max(0, prompt.bars - w))
        self.windows = [(start, min(prompt.bars, start + w))]

    def plan(self, row: Row, window: object) -> list[Action]:
        b0, b1 = window  # type: ignore[misc]
        n = b1 - b0
        piece = self.row_piece(row)
        codec = self.session.codec
        tb = codec.bars(piece, b0, n)
        plan: list[Action] = [Force((PIECE_START,))]
        for i, t in enumerate(piece.tracks):
            count = int(tb.onsets[i].sum())
            if i != self.track and count == 0:
                continue
            fills = [b - b0 for b in self.fill] if i == self.track else ()
            plan.append(Force(tuple(codec.track(tb, i, t.inst, codec.density(count, n), fills))))
        for b in self.fill:
            plan.append(Bar(self.track, b, FILL_START, FILL_END))
            plan.append(Emit(BarDone(b)))
        return plan
