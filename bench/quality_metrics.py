"""Music measures for bench/quality.py: pure functions over notes (16th-note steps).

Why these: a composer hears an added bass as wrong when it clashes with the tune on the beat
(consonance with the soprano at the bass's onsets), sounds like a textbook mistake (parallel
fifths and octaves against the outer voice), tangles the voices (crossing) or leaves the
singers' range. A continuation is wrong when it leaves the key, or lazy when it copies the
prompt note for note. Each measure is taken for the model, for the chorale's own part and for
random pitches on the real rhythm, so "good" reads against what real music and noise score.

Counts are pooled over all chorales (a ratio of sums, not a mean of ratios), so a file with
many notes weighs more than one with few.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

#: Unison/octave, minor and major thirds, fifth, minor and major sixths.
CONSONANT = frozenset({0, 3, 4, 7, 8, 9})
PERFECT = frozenset({0, 7})
ORDER = ("SOPRANO", "ALTO", "TENOR", "BASS")
#: Lowest and highest pitch of each voice over the training chorales (1,140 JS Fakes, the
#: held-out 60 not read), untransposed: the range the model was shown.
RANGES = {"SOPRANO": (54, 81), "ALTO": (43, 78), "TENOR": (44, 73), "BASS": (36, 64)}
#: Krumhansl-Kessler key profiles (C major, C minor).
MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10, 11)  # natural minor and the harmonic minor's leading tone


def sounding(notes: Iterable, step: int) -> list[int]:
    return [n.pitch for n in notes if n.start <= step < n.end]


def _ref_voice(voice: str) -> str:
    """The outer voice a part is judged against: the soprano for the bass, else the bass."""
    return "SOPRANO" if voice == "BASS" else "BASS"


def _line(notes: Sequence, voice: str, step: int) -> int | None:
    """The part's pitch at a step (the lowest for the bass, else the highest sounding)."""
    p = sounding(notes, step)
    if not p:
        return None
    return min(p) if voice == "BASS" else max(p)


def voice_figures(voice: str, notes: Sequence, ctx: dict, bars: int) -> dict:
    """Counts for one part against the chorale's other voices (``ctx``: label -> Track)."""
    notes = sorted(notes, key=lambda n: (n.start, n.pitch))
    ref_name = _ref_voice(voice)
    ref = ctx[ref_name].notes
    cons = cons_n = 0
    for n in notes:
        r = _line(ref, ref_name, n.start)
        if r is not None:
            cons_n += 1
            cons += abs(n.pitch - r) % 12 in CONSONANT
    # Parallel perfect intervals between consecutive events of the two parts.
    times = sorted({n.start for n in notes} | {n.start for n in ref})
    moves = par = 0
    prev = None
    for t in times:
        a, r = _line(notes, voice, t), _line(ref, ref_name, t)
        if a is None or r is None:
            prev = None
            continue
        if prev is not None:
            a0, r0 = prev
            if a != a0:
                moves += 1
                ic0, ic1 = abs(a0 - r0) % 12, abs(a - r) % 12
                same_way = (a - a0) * (r - r0) > 0
                par += same_way and ic0 == ic1 and ic1 in PERFECT
        prev = (a, r)
    # Crossing: above the voice above it or below the voice below it, at its onsets.
    i = ORDER.index(voice)
    above = ctx[ORDER[i - 1]].notes if i > 0 else ()
    below = ctx[ORDER[i + 1]].notes if i < len(ORDER) - 1 else ()
    cross = 0
    for n in notes:
        up, down = sounding(above, n.start), sounding(below, n.start)
        cross += bool((up and n.pitch > min(up)) or (down and n.pitch < max(down)))
    lo, hi = RANGES[voice]
    in_range = sum(lo <= n.pitch <= hi for n in notes)
    return {
        "notes": len(notes),
        "consonant": (cons, cons_n),
        "parallel": (par, moves),
        "crossing": (cross, len(notes)),
        "in_range": (in_range, len(notes)),
        "notes_per_bar": (len(notes), bars),
    }


def random_on_rhythm(notes: Sequence, pitch_range: tuple[int, int], rng) -> list:
    """The real part's rhythm with uniformly random pitches in the voice's range."""
    lo, hi = pitch_range
    return [type(n)(n.start, int(rng.integers(lo, hi + 1)), n.end) for n in notes]


def estimate_key(notes: Iterable) -> tuple[int, str]:
    """Krumhansl-Schmuckler: the (tonic, mode) whose profile best matches the duration-weighted
    pitch-class histogram."""
    hist = np.zeros(12)
    for n in notes:
        hist[n.pitch % 12] += n.end - n.start
    best = (-2.0, 0, "major")
    for tonic in range(12):
        for mode, prof in (("major", MAJOR), ("minor", MINOR)):
            r = np.corrcoef(hist, np.roll(prof, tonic))[0, 1] if hist.any() else 0.0
            if r > best[0]:
                best = (r, tonic, mode)
    return best[1], best[2]


def continuation_figures(prompt, new: dict) -> dict:
    """In key (the prompt's estimated key) and copying (same track, pitch and step in the bar
    as some prompt note) of the new notes (``new``: label -> notes)."""
    tonic, mode = estimate_key(n for t in prompt.tracks for n in t.notes)
    scale = {(tonic + d) % 12 for d in (MAJOR_SCALE if mode == "major" else MINOR_SCALE)}
    seen = {(t.inst, n.pitch, n.start % 16) for t in prompt.tracks for n in t.notes}
    total = in_key = copied = 0
    for inst, notes in new.items():
        for n in notes:
            total += 1
            in_key += n.pitch % 12 in scale
            copied += (inst, n.pitch, n.start % 16) in seen
    return {"in_key": (in_key, total), "copying": (copied, total), "notes": total}


def _ratio(pairs: Iterable[tuple[int, int]]) -> float | None:
    k = n = 0
    for a, b in pairs:
        k, n = k + a, n + b
    return round(k / n, 4) if n else None


def summarise_add(voice: str, results: list[dict]) -> dict:
    ok = [r for r in results if r["ok"]]
    out: dict = {"success": f"{len(ok)}/{len(results)}"}
    for who in ("model", "own", "random"):
        figs = [r[who] for r in ok]
        out[who] = {
            k: _ratio(f[k] for f in figs)
            for k in ("consonant", "parallel", "crossing", "in_range", "notes_per_bar")
        }
    return out


def summarise_continue(results: list[dict]) -> dict:
    ok = [r for r in results if r["ok"]]
    out: dict = {"success": f"{len(ok)}/{len(results)}"}
    for who in ("model", "own"):
        figs = [r[who] for r in ok if who in r]
        out[who] = {k: _ratio(f[k] for f in figs) for k in ("in_key", "copying")}
        out[who]["notes"] = sum(f["notes"] for f in figs)
    return out


def repairs(windows: list[list[int]], config) -> int:
    """What the decoder had to repair in the tokens the model produced (0 for a clean run)."""
    from bandmate.models.codec import decode

    return sum(len(decode(w, config).repairs) for w in windows)


GOALS = {
    "add_consonance_ratio_min": 0.95,
    "parallel_excess_max": 0.02,
    "crossing_excess_max": 0.02,
    "in_key_deficit_max": 0.03,
    "copying_excess_max": 0.15,
}


def headline(r: dict) -> dict:
    """The figures the musical-quality issue sets goals on, and whether each is met."""
    h: dict = {}
    goals: dict = {}
    for v, a in r["add"].items():
        m, o, x = a["model"], a["own"], a["random"]
        ratio = m["consonant"] / o["consonant"] if m["consonant"] and o["consonant"] else None
        h[v] = {
            "consonance": [m["consonant"], o["consonant"], x["consonant"]],
            "consonance_ratio": round(ratio, 3) if ratio is not None else None,
            "parallel": [m["parallel"], o["parallel"], x["parallel"]],
            "crossing": [m["crossing"], o["crossing"], x["crossing"]],
            "in_range": m["in_range"],
        }
        goals[f"{v.lower()}_consonance"] = ratio is not None and ratio >= 0.95
        goals[f"{v.lower()}_parallel"] = (m["parallel"] or 0) <= (o["parallel"] or 0) + 0.02
        goals[f"{v.lower()}_crossing"] = (m["crossing"] or 0) <= (o["crossing"] or 0) + 0.02
        goals[f"{v.lower()}_in_range"] = m["in_range"] == 1.0
    c = r["continue"]
    h["continue"] = {
        "in_key": [c["model"]["in_key"], c["own"]["in_key"]],
        "copying": [c["model"]["copying"], c["own"]["copying"]],
    }
    if c["model"]["in_key"] is not None and c["own"]["in_key"] is not None:
        goals["continue_in_key"] = c["model"]["in_key"] >= c["own"]["in_key"] - 0.03
        goals["continue_copying"] = (c["model"]["copying"] or 0) <= (
            c["own"]["copying"] or 0
        ) + 0.15
    goals["success"] = r["success_rate"] == 1.0
    goals["repairs"] = r["repairs"] == 0
    h["order"] = "model, own, random"
    h["goals_met"] = f"{sum(goals.values())}/{len(goals)}"
    h["goals"] = goals
    return h


def sweep_score(r: dict) -> float:
    """One number to rank sampling settings on the tuning set: consonance against the real
    parts, minus every excess of parallels and crossing, plus the key, minus copying beyond
    the allowance. Larger is better."""
    s = 0.0
    for a in r["add"].values():
        m, o = a["model"], a["own"]
        s += (m["consonant"] or 0) / max(o["consonant"] or 1e-9, 1e-9)
        s -= max(0.0, (m["parallel"] or 0) - (o["parallel"] or 0))
        s -= max(0.0, (m["crossing"] or 0) - (o["crossing"] or 0))
    s /= len(r["add"])
    c = r["continue"]
    s += (c["model"]["in_key"] or 0) - (c["own"]["in_key"] or 0)
    s -= max(0.0, (c["model"]["copying"] or 0) - (c["own"]["copying"] or 0) - 0.15)
    return round(s - (1 - r["success_rate"]), 4)


class Scorer:
    """Full-sequence log-likelihoods from a model folder's contract graph (no sampling)."""

    def __init__(self, model: str | Path | None) -> None:
        from bandmate.models.session import ModelSession

        self.s = ModelSession.load(model, fast=False)

    def note_on_nll(self, piece, config) -> float | None:
        """Mean NLL (nats) of the last track's NOTE_ON tokens, the piece encoded as the model
        saw its training samples."""
        from bandmate.models.codec import Codec
        from bandmate.models.vocab import NOTE_ON0, TRACK_START

        ids = np.asarray(Codec.of(config).sample(piece), np.int64)
        n = len(ids)
        if n > self.s.n_positions:
            return None
        feed = {
            "input_ids": ids[None],
            "attention_mask": np.ones((1, n), np.int64),
            "position_ids": np.arange(n, dtype=np.int64)[None],
        }
        empty = np.zeros((1, self.s.n_head, 0, self.s.head_dim), np.float32)
        for name in self.s.past_names:
            feed[name] = empty
        logits = self.s.onnx_session.run(["logits"], feed)[0][0].astype(np.float64)
        start = int(np.flatnonzero(ids == TRACK_START)[-1])
        pos = [i for i in range(start + 1, n) if NOTE_ON0 <= ids[i] < NOTE_ON0 + 128]
        if not pos:
            return None
        lg = logits[[i - 1 for i in pos]]
        mx = lg.max(axis=1, keepdims=True)
        logz = (mx + np.log(np.exp(lg - mx).sum(axis=1, keepdims=True)))[:, 0]
        return float(np.mean(logz - lg[np.arange(len(pos)), ids[pos]]))
