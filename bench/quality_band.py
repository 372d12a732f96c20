"""Musical quality of a band model on held-out Freedoom pieces: add bass, add drums, continue.

Windows: 4-bar windows (hop 4) of the held-out pieces (bench/holdout/band.txt, one file per
piece: the first listed, current/ before history/) where a GM bass (programs 32-39) and the
drums both play in every bar and another pitched part plays; chosen round-robin over the
pieces with the seed. Each task is scored for the model (through the public generation API,
as the app calls it), for the piece's own part, and for random pitches on the real rhythm:

- bass (add a bass to the other parts, drums included): the share of the bass's onsets whose
  pitch class sounds in the other pitched parts at that step ("chord tones"; onsets where no
  other pitched part sounds are not counted);
- drums (add drums to the band without its drums): bars with hits; bars with a kick (35/36)
  on beat 1; beats 2 and 4 with a snare or clap (38/39/40); hits on the 16th grid (1.0 for
  anything decoded from tokens: a check) and on the 8th grid (straight time);
- continue (4 new bars after the window): the share of new pitched notes in the key of the
  prompt (Krumhansl-Schmuckler estimate over the prompt's pitched notes, weighted by length;
  major or natural minor scale) and copying: the share of new pitched notes whose (track,
  pitch, step in bar) occurs in the prompt. "own" is the piece's real next 4 bars.

Success: the call returned and the new part/bars have notes; repairs: what the codec's
decoder had to repair in every token window the engine wrote (0 under the grammar).
``ci95``: 95% intervals of the model's bass, kick, backbeat and in-key figures and of their
ratio to the own parts, by resampling whole pieces (`intervals`): with 16 held-out pieces they
are wide, so compare two models by their intervals, not by a 0.05 difference.

Usage: python bench/quality.py --model band (bench/quality.py hands a gm-family model to
this module), or python bench/quality_band.py --model band --n 40 --seed 0 [--out FILE].
``--files tune`` reads the tuning pieces instead: the Freedoom pieces `bandmate prepare
--split-by piece` put in the validation split (not trained on, not held out); ``--sweep``
scores a temperature x top-p grid there (`sweep_score`), never on the held-out pieces, and
``--write-default`` records its best as the model's own sampling defaults.
It runs against any model folder; the JSON figures are on the last line, with
``holdout_verified`` (the model's manifest excluded every held-out file) and the goals.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from bandmate.models.types import DRUM_CHANNEL, STEPS_PER_BAR, Note, Piece, Track

ROOT = Path(__file__).resolve().parents[1]
HOLDOUT = ROOT / "bench/holdout/band.txt"
DATA = ROOT.parent / "shared/data/freedoom"
BARS = 4
BASS_PROGRAMS = range(32, 40)
KICKS, SNARES = (35, 36), (38, 39, 40)
MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}

log = logging.getLogger("bench.quality_band")


# ------------------------------------------------------------------------- held-out windows


def holdout_files(holdout: Path = HOLDOUT, data: Path = DATA) -> list[Path]:
    """One file per held-out piece: the first path listed after each '# piece' line (every
    listed file when the list has no piece headers)."""
    lines = holdout.read_text(encoding="utf-8").splitlines()
    by_piece = any(ln.startswith("# piece") for ln in lines)
    out: list[Path] = []
    take = True
    for line in lines:
        if line.startswith("# piece"):
            take = True
            continue
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and take:
            out.append(data / words[1])
            take = not by_piece
    return out


def tune_files(data: Path = DATA, holdout: Path = HOLDOUT, val_fraction: float = 0.05
               ) -> list[Path]:
    """One file per tuning piece: a piece `bandmate prepare --split-by piece` sends to the
    validation split (the same hash of the same piece key), none of whose files is held out;
    the current/ file when the piece has one. Sampling is tuned here, never on the held-out
    pieces."""
    import hashlib

    from bandmate.training.prepare import content_split, piece_key

    held = holdout_digests(holdout)
    by_piece: dict[str, list[Path]] = {}
    for f in sorted((data / "current").glob("*.mid")) + sorted((data / "history").glob("*.mid")):
        key = piece_key(str(f.relative_to(data)))
        split = content_split(hashlib.blake2b(key.encode(), digest_size=16).digest(), val_fraction)
        if split == "val":
            by_piece.setdefault(key, []).append(f)
    out = []
    for files in by_piece.values():
        digests = {hashlib.blake2b(f.read_bytes(), digest_size=16).hexdigest() for f in files}
        if not digests & held:
            out.append(files[0])
    return out


def sweep_score(res: dict) -> float:
    """One number for a sampling setting: the mean of the model/own ratios of bass chord
    tones, kick on 1, backbeat and continuation in key (each capped at 1: beating the real
    part is no goal), less what continuation copies beyond own + 0.15 (a low temperature
    repeats the prompt) and the share of failed calls."""
    def ratio(task: str, key: str) -> float:
        m, o = res[task]["model"].get(key), res[task]["own"].get(key)
        return min(m / o, 1.0) if m is not None and o else 0.0

    tasks = ("bass", "drums", "continue")
    parts = [ratio("bass", "chord_tones"), ratio("drums", "kick_on_1"),
             ratio("drums", "backbeat"), ratio("continue", "in_key")]  # fmt: skip
    cm, co = res["continue"]["model"].get("copying"), res["continue"]["own"].get("copying")
    copy_pen = max(0.0, cm - co - 0.15) if cm is not None and co is not None else 0.0
    fail = sum(1.0 - (res[t]["model"].get("success") or 0.0) for t in tasks) / len(tasks)
    return round(sum(parts) / len(parts) - copy_pen - fail, 4)


#: The grid ``--sweep`` scores on the tuning pieces.
SWEEP = [(t, p) for t in (0.4, 0.5, 0.6, 0.8) for p in (0.9, 1.0)]


def holdout_digests(holdout: Path = HOLDOUT) -> set[str]:
    """Every file of the held-out pieces, by content digest (the first word of each line)."""
    out = set()
    for line in holdout.read_text(encoding="utf-8").splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2:
            out.add(words[0])
    return out


def verify_holdout(meta: dict, holdout: Path = HOLDOUT) -> bool:
    """Whether the model's training data excluded every file of the held-out pieces (its
    manifest's ``exclude``, written by ``bandmate prepare --exclude``)."""
    cfg = meta.get("training", {}).get("manifest", {}).get("config", {})
    return holdout_digests(holdout) <= set(cfg.get("exclude", []))


def goals(res: dict) -> dict[str, bool]:
    """The band model's goals (issue: beyond chorales): bass chord tones >= 0.9 x own, kick on
    1 and backbeat >= 0.8 x own, every call a success, no repairs."""
    def ratio_ok(task: str, key: str, k: float) -> bool:
        m, o = res[task]["model"].get(key), res[task]["own"].get(key)
        return m is not None and o is not None and m >= k * o

    tasks = ("bass", "drums", "continue")
    return {
        "bass_chord_tones": ratio_ok("bass", "chord_tones", 0.9),
        "drums_kick_on_1": ratio_ok("drums", "kick_on_1", 0.8),
        "drums_backbeat": ratio_ok("drums", "backbeat", 0.8),
        "success": all(res[t]["model"].get("success") == 1.0 for t in tasks),
        "repairs": all(res[t]["model"].get("repairs") == 0 for t in tasks),
    }


def is_bass(t: Track) -> bool:
    return not t.is_drum and t.program in BASS_PROGRAMS


def _bars_with_onsets(t: Track, bars: int) -> np.ndarray:
    have = np.zeros(bars, bool)
    for n in t.notes:
        if n.start // STEPS_PER_BAR < bars:
            have[n.start // STEPS_PER_BAR] = True
    return have


def band_windows(piece: Piece, need_next: bool = True) -> list[int]:
    """First bars of the 4-bar windows (hop 4) where a bass and drums play in every bar and
    another pitched part plays; with ``need_next`` only windows followed by 4 more bars."""
    out = []
    span = 2 * BARS if need_next else BARS
    for b in range(0, piece.bars - span + 1, BARS):
        w = piece.slice_bars(b, BARS)
        bass = [t for t in w.tracks if is_bass(t)]
        drums = [t for t in w.tracks if t.is_drum]
        other = [t for t in w.tracks if not t.is_drum and not is_bass(t) and t.notes]
        if not (bass and drums and other):
            continue
        if all(
            any(_bars_with_onsets(t, BARS)[i] for t in bass)
            and any(_bars_with_onsets(t, BARS)[i] for t in drums)
            for i in range(BARS)
        ):
            out.append(b)
    return out


def pick_windows(
    files: Sequence[Path], config, n: int, seed: int
) -> list[tuple[str, Piece, int]]:
    """Up to ``n`` (file name, whole stretch, first bar), round-robin over the files."""
    from bandmate.models.midi_io import MidiError, read_midi_segments

    rng = np.random.default_rng(seed)
    per_file: list[list[tuple[str, Piece, int]]] = []
    for f in files:
        try:
            segs = read_midi_segments(f, config)
        except (MidiError, OSError) as e:
            log.warning("%s: %s", f, e)
            continue
        wins = [(f.name, seg, b) for seg in segs for b in band_windows(seg)]
        if wins:
            rng.shuffle(wins)
            per_file.append(wins)
    out: list[tuple[str, Piece, int]] = []
    k = 0
    while len(out) < n and any(k < len(w) for w in per_file):
        out += [w[k] for w in per_file if k < len(w)]
        k += 1
    return out[:n]


# ------------------------------------------------------------------------------ metrics


def sounding_pcs(tracks: Sequence[Track], step: int) -> set[int]:
    return {n.pitch % 12 for t in tracks for n in t.notes if n.start <= step < n.end}


def chord_tone_rate(bass: Sequence[Note], others: Sequence[Track]) -> tuple[int, int]:
    """(onsets whose pitch class sounds in ``others``, onsets where something sounds)."""
    hit = counted = 0
    for n in bass:
        pcs = sounding_pcs(others, n.start)
        if pcs:
            counted += 1
            hit += n.pitch % 12 in pcs
    return hit, counted


def drum_figures(notes: Sequence[Note], bars: int) -> dict[str, int]:
    """Counts: bars, bars with hits, kicks on 1, backbeats (of 2 * bars), hits, on 16th/8th."""
    on1 = np.zeros(bars, bool)
    hits_bar = np.zeros(bars, bool)
    back = set()
    for n in notes:
        bar, pos = divmod(n.start, STEPS_PER_BAR)
        if bar >= bars:
            continue
        hits_bar[bar] = True
        if pos == 0 and n.pitch in KICKS:
            on1[bar] = True
        if pos in (4, 12) and n.pitch in SNARES:
            back.add((bar, pos))
    starts = [n.start for n in notes]
    return {
        "bars": bars,
        "bars_with_hits": int(hits_bar.sum()),
        "kick_on_1": int(on1.sum()),
        "backbeats": len(back),
        "hits": len(starts),
        "on_16th": len(starts),  # decoded notes are on the 16th grid by construction
        "on_8th": sum(1 for s in starts if s % 2 == 0),
    }


def estimate_key(tracks: Sequence[Track]) -> tuple[int, str]:
    """Krumhansl-Schmuckler: (tonic pitch class, "major"/"minor") of the pitched notes."""
    hist = np.zeros(12)
    for t in tracks:
        if not t.is_drum:
            for n in t.notes:
                hist[n.pitch % 12] += n.end - n.start
    best, key = -2.0, (0, "major")
    if hist.sum() == 0:
        return key
    for mode, prof in (("major", MAJOR), ("minor", MINOR)):
        for tonic in range(12):
            r = float(np.corrcoef(hist, np.roll(prof, tonic))[0, 1])
            if r > best:
                best, key = r, (tonic, mode)
    return key


def in_key_and_copy(prompt: Piece, new: Sequence[tuple[int, Note]]) -> tuple[int, int, int]:
    """(new pitched notes in the prompt's key, copied from the prompt, all new pitched notes);
    ``new`` holds (track index, note) with times relative to the new bars."""
    tonic, mode = estimate_key(prompt.tracks)
    scale = {(tonic + d) % 12 for d in SCALES[mode]}
    seen = {
        (i, n.pitch, n.start % STEPS_PER_BAR)
        for i, t in enumerate(prompt.tracks)
        if not t.is_drum
        for n in t.notes
    }
    in_key = copied = total = 0
    for i, n in new:
        if prompt.tracks[i].is_drum:
            continue
        total += 1
        in_key += n.pitch % 12 in scale
        copied += (i, n.pitch, n.start % STEPS_PER_BAR) in seen
    return in_key, copied, total


def _random_pitches(notes: Sequence[Note], lo: int, hi: int, rng) -> list[Note]:
    return [Note(n.start, int(rng.integers(lo, hi + 1)), n.end) for n in notes]


def _repairs(session, done_stats: dict) -> int:
    from bandmate.models.codec import decode

    return sum(len(decode(w, session.config).repairs) for w in done_stats.get("tokens", []))


class _Tally:
    """Sums of counts per (task, who); rates at the end. Counts are also kept per piece (the
    one set by `at`), for the piece-level bootstrap of `intervals`."""

    def __init__(self) -> None:
        self.c: dict[str, dict[str, dict[str, float]]] = {}
        self.by_piece: dict[str, _Tally] = {}
        self._piece: _Tally | None = None

    def add(self, task: str, who: str, **counts: float) -> None:
        for tally in (self, self._piece) if self._piece else (self,):
            d = tally.c.setdefault(task, {}).setdefault(who, {})
            for k, v in counts.items():
                d[k] = d.get(k, 0) + v

    def get(self, task: str, who: str, key: str) -> float:
        return self.c.get(task, {}).get(who, {}).get(key, 0)

    def at(self, piece: str) -> None:
        """Count what follows for ``piece`` too."""
        self._piece = self.by_piece.setdefault(piece, _Tally())


#: The figures `intervals` bootstraps: (task, numerator, denominator, denominator factor).
CI_FIGURES = {
    "bass_chord_tones": ("bass", "hit", "counted", 1),
    "drums_kick_on_1": ("drums", "kick_on_1", "bars", 1),
    "drums_backbeat": ("drums", "backbeats", "bars", 2),
    "continue_in_key": ("continue", "in_key", "notes", 1),
}


def intervals(tally: _Tally, resamples: int = 2000, seed: int = 0) -> dict:
    """95% intervals of the model's figures and of model / own, resampling whole pieces.

    Why pieces: the windows of one piece share its style (a piece whose drummer plays half
    time gives the model's drums a low backbeat in every window), so the windows are not
    independent and a window-level interval would be too narrow. With 16 pieces a 0.05 gap
    between two models is usually inside the interval: read them before calling a change a
    gain.
    """
    pieces = sorted(tally.by_piece)
    if not pieces:
        return {}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(pieces), (resamples, len(pieces)))
    out: dict[str, dict[str, list[float | None]]] = {}
    for name, (task, num, den, k) in CI_FIGURES.items():
        sums = {
            who: np.array([[p.get(task, who, num), p.get(task, who, den) * k]
                           for p in (tally.by_piece[q] for q in pieces)])
            for who in ("model", "own")
        }  # fmt: skip
        tot = {who: sums[who][draws].sum(axis=1) for who in sums}  # (resamples, 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            model = tot["model"][:, 0] / tot["model"][:, 1]
            ratio = model / (tot["own"][:, 0] / tot["own"][:, 1])
        out[name] = {"model": _ci95(model), "model_over_own": _ci95(ratio)}
    return out


def _ci95(x: np.ndarray) -> list[float | None]:
    """The 2.5 and 97.5 percentiles of the finite draws ([None, None] when none is)."""
    x = x[np.isfinite(x)]
    if not len(x):
        return [None, None]
    return [round(float(v), 4) for v in np.percentile(x, [2.5, 97.5])]


def _rate(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


# ------------------------------------------------------------------------------ the bench


def _run_task(session, fn, tally: _Tally, task: str) -> object | None:
    from bandmate.models import generate as G

    try:
        events = list(fn())
    except G.GenerationError as e:
        log.warning("%s failed: %s", task, e)
        tally.add(task, "model", tries=1)
        return None
    done = events[-1]
    tally.add(task, "model", tries=1, repairs=_repairs(session, done.stats))
    return done


def band_quality(
    model_dir: str | Path | None,
    n: int = 40,
    seed: int = 0,
    holdout: Path = HOLDOUT,
    data: Path = DATA,
    temperature: float | None = None,
    top_p: float | None = None,
    files: Sequence[Path] | None = None,
) -> dict:
    """The figures of the module docstring for ``n`` held-out windows (model_dir: a folder or
    a shipped model's name; None = the default model). Sampling: the model's defaults (as
    the CLI and the app use them) unless ``temperature`` / ``top_p`` are given. ``files``:
    other pieces than the held-out ones (`tune_files`)."""
    from bandmate.models import generate as G
    from bandmate.models.session import ModelSession

    t0 = time.perf_counter()
    session = ModelSession.load(model_dir)
    base = session.default_sampling()  # the model's own defaults, as the CLI and app use
    base = replace(base, temperature=base.temperature if temperature is None else temperature,
                   top_p=base.top_p if top_p is None else top_p)
    config = replace(session.config, meter="strict")
    which = "holdout" if files is None else "given"
    files = holdout_files(holdout, data) if files is None else list(files)
    windows = pick_windows(files, config, n, seed)
    rng = np.random.default_rng(seed)
    tally = _Tally()
    for k, (name, seg, b) in enumerate(windows):
        win = seg.slice_bars(b, BARS)
        nxt = seg.slice_bars(b + BARS, BARS)
        keep = [i for i, t in enumerate(win.tracks) if t.notes]
        tracks = [win.tracks[i] for i in keep]
        bass_i = max((i for i, t in enumerate(tracks) if is_bass(t)),
                     key=lambda i: len(tracks[i].notes))  # fmt: skip
        own_bass = tracks[bass_i]
        others = [t for t in tracks if not t.is_drum and not is_bass(t)]
        drums = [t for t in tracks if t.is_drum]
        sampling = replace(base, seed=seed * 100_003 + k)
        log.info("window %d/%d: %s bars %d-%d", k + 1, len(windows), name, b, b + BARS - 1)
        tally.at(name)

        # Add bass: every bass-family track out, the rest (drums too) as the prompt.
        prompt = replace(win, tracks=tuple(t for t in tracks if not is_bass(t)))
        done = _run_task(
            session,
            lambda p=prompt, s=sampling: G.stream_add_track(session, p, "bass", sampling=s),
            tally,
            "bass",
        )
        if done is not None:
            new = done.piece.tracks[-1].notes
            ok = bool(new) and len(done.piece.tracks) == len(prompt.tracks) + 1
            h, c = chord_tone_rate(new, others)
            tally.add("bass", "model", ok=ok, hit=h, counted=c, notes=len(new))
        h, c = chord_tone_rate(own_bass.notes, others)
        tally.add("bass", "own", hit=h, counted=c, notes=len(own_bass.notes))
        rnd = _random_pitches(own_bass.notes, 28, 55, rng)
        h, c = chord_tone_rate(rnd, others)
        tally.add("bass", "random", hit=h, counted=c, notes=len(rnd))

        # Add drums to the band without its drums.
        prompt = replace(win, tracks=tuple(t for t in tracks if not t.is_drum))
        done = _run_task(
            session,
            lambda p=prompt, s=sampling: G.stream_add_track(session, p, "drums", sampling=s),
            tally,
            "drums",
        )
        if done is not None:
            new_t = done.piece.tracks[-1]
            ok = bool(new_t.notes) and new_t.channel == DRUM_CHANNEL
            tally.add("drums", "model", ok=ok, **drum_figures(new_t.notes, BARS))
        own_notes = sorted(n for t in drums for n in t.notes)
        tally.add("drums", "own", **drum_figures(own_notes, BARS))
        rnd = _random_pitches(own_notes, 35, 81, rng)
        tally.add("drums", "random", **drum_figures(rnd, BARS))

        # Continue 4 bars.
        prompt = replace(win, tracks=tuple(tracks))
        done = _run_task(
            session,
            lambda p=prompt, s=sampling: G.stream_continue(session, p, BARS, sampling=s),
            tally,
            "continue",
        )
        if done is not None:
            lo = BARS * STEPS_PER_BAR
            new = [
                (i, Note(n.start - lo, n.pitch, n.end - lo))
                for i, t in enumerate(done.piece.tracks[: len(tracks)])
                for n in t.notes
                if n.start >= lo
            ]
            ok = done.piece.bars == 2 * BARS and bool(new)
            ik, cp, tot = in_key_and_copy(prompt, new)
            tally.add("continue", "model", ok=ok, in_key=ik, copied=cp, notes=tot)
        own_new = [(j, n) for j, i in enumerate(keep) for n in nxt.tracks[i].notes]
        ik, cp, tot = in_key_and_copy(prompt, own_new)
        tally.add("continue", "own", in_key=ik, copied=cp, notes=tot)
        rnd_new = []
        for i, n in own_new:
            ps = [m.pitch for m in tracks[i].notes] or [60]
            rnd_new.append((i, Note(n.start, int(rng.integers(min(ps), max(ps) + 1)), n.end)))
        ik, cp, tot = in_key_and_copy(prompt, rnd_new)
        tally.add("continue", "random", in_key=ik, copied=cp, notes=tot)

    def who(task: str, w: str) -> dict:
        g = lambda key: tally.get(task, w, key)  # noqa: E731
        if task == "bass":
            out = {"chord_tones": _rate(g("hit"), g("counted")), "notes": int(g("notes"))}
        elif task == "drums":
            bars = g("bars")
            out = {
                "bars_with_hits": _rate(g("bars_with_hits"), bars),
                "kick_on_1": _rate(g("kick_on_1"), bars),
                "backbeat": _rate(g("backbeats"), 2 * bars),
                "on_16th": _rate(g("on_16th"), g("hits")),
                "on_8th": _rate(g("on_8th"), g("hits")),
                "hits": int(g("hits")),
            }
        else:
            out = {
                "in_key": _rate(g("in_key"), g("notes")),
                "copying": _rate(g("copied"), g("notes")),
                "notes": int(g("notes")),
            }
        if w == "model":
            out["success"] = _rate(g("ok"), g("tries"))
            out["repairs"] = int(g("repairs"))
        return out

    res = {
        "model": session.name,
        "model_dir": str(session.path),
        "label_scheme": session.config.label_scheme,
        "holdout_verified": verify_holdout(session.meta, holdout),
        "files": which,
        "windows": len(windows),
        "pieces": len({w[0] for w in windows}),
        "seed": seed,
        "settings": {"temperature": base.temperature, "top_p": base.top_p},
        **{
            task: {w: who(task, w) for w in ("model", "own", "random")}
            for task in ("bass", "drums", "continue")
        },
        "ci95": intervals(tally, seed=seed),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    g = goals(res)
    res["goals"] = g
    res["goals_met"] = f"{sum(g.values())}/{len(g)}"
    return res


def write_default(model, best: dict, res: dict) -> Path:
    """Record the sweep's best setting as the model's own sampling defaults (bandmate.json
    ``sampling``, read by `ModelSession.default_sampling`: the CLI, jam, the app and this
    benchmark then play it so), with how it was picked. Written whole or not at all."""
    import os
    import tempfile

    from bandmate.models.model_folder import META_NAME
    from bandmate.models.registry import resolve_model

    path = Path(resolve_model(model)) / META_NAME
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["sampling"] = {
        "temperature": best["temperature"],
        "top_p": best["top_p"],
        "picked_by": f"bench/quality_band.py --sweep: best sweep_score ({best['score']}) of "
                     f"{len(res['sweep'])} settings on {res['windows']} windows of "
                     f"{res['pieces']} tuning pieces (seed {res['seed']}), not the held-out ones",
    }  # fmt: skip
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".bandmate.json.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def run_cli(model, n: int, seed: int, which: str = "holdout", sweep: bool = False,
            temperature: float | None = None, top_p: float | None = None,
            holdout: Path = HOLDOUT, data: Path = DATA, write: bool = False) -> dict:
    """What the command line asks for: the figures on the held-out or the tuning pieces, or
    (``sweep``) the grid on the tuning pieces with its best setting, which ``write`` records
    in the model folder (`write_default`). Prints each sweep row as it is done (minutes)."""
    files = tune_files(data, holdout) if which == "tune" or sweep else None
    if not sweep:
        res = band_quality(model, n, seed, holdout, data, temperature, top_p, files)
        res["files"] = which
        return res
    rows = []
    for t, p in SWEEP:
        r = band_quality(model, n, seed, holdout, data, t, p, files)
        row = {"temperature": t, "top_p": p, "score": sweep_score(r),
               "bass": r["bass"]["model"]["chord_tones"],
               "kick_on_1": r["drums"]["model"]["kick_on_1"],
               "backbeat": r["drums"]["model"]["backbeat"],
               "in_key": r["continue"]["model"]["in_key"],
               "copying": r["continue"]["model"]["copying"]}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = {"model": r["model"], "files": "tune", "windows": r["windows"], "pieces": r["pieces"],
            "own": {"bass": r["bass"]["own"]["chord_tones"],
                    "kick_on_1": r["drums"]["own"]["kick_on_1"],
                    "backbeat": r["drums"]["own"]["backbeat"],
                    "in_key": r["continue"]["own"]["in_key"],
                    "copying": r["continue"]["own"]["copying"]},
            "seed": seed, "sweep": rows, "best": max(rows, key=lambda x: x["score"])}  # fmt: skip
    if write:
        out["written"] = str(write_default(model, out["best"], out))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="band", help="a shipped model's name or a model folder")
    ap.add_argument("--n", type=int, default=40, help="held-out windows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=None, help="default: the CLI's")
    ap.add_argument("--top-p", type=float, default=None, help="default: the CLI's")
    ap.add_argument("--holdout", type=Path, default=HOLDOUT)
    ap.add_argument("--data", type=Path, default=DATA, help="the Freedoom folder")
    ap.add_argument("--files", choices=("holdout", "tune"), default="holdout",
                    help="tune: the validation split's pieces (see the module docstring)")
    ap.add_argument("--sweep", action="store_true", help="temperature x top-p grid (tune set)")
    ap.add_argument("--write-default", action="store_true",
                    help="with --sweep: record the best setting as the model's own sampling "
                    "defaults (its bandmate.json 'sampling')")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        if args.write_default and not args.sweep:
            raise ValueError("--write-default needs --sweep (it records the sweep's best)")
        res = run_cli(args.model, args.n, args.seed, args.files, args.sweep, args.temperature,
                      args.top_p, args.holdout, args.data, args.write_default)  # fmt: skip
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(res)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
