"""The musical benchmark: does the model write real four-part harmony?

    python bench/quality.py [--model DIR] [--n N] [--seed S] [--temperature T] [--top-p P]
                            [--files holdout|tune] [--sweep]

It reads JS Fake Chorales the model never trained on (bench/holdout/jsfakes.txt: 60 chorales
listed by content digest; the shipped model's `bandmate prepare --exclude` left exactly those
out, and this script refuses a model whose bandmate.json does not record that exclusion unless
`--allow-unverified` is given) and asks the model, through the public API the app uses
(`ModelSession`, `add_track`, `continue_piece`), to:

- add each voice to the other three over bars 1-4 (BASS under S/A/T, SOPRANO over A/T/B, ...);
- continue bars 1-4 by 4 bars;

and measures the notes against the chorale's own part and against random pitches on the real
rhythm (the metrics are in `quality_metrics.py`). It also scores the context gain: the mean NLL
of each voice's NOTE_ON tokens given its own chorale's other voices, against given another
chorale's (a model that listens to the other voices gains; one that does not, does not).

`--files tune` reads the tuning set instead (the chorales `bandmate prepare` put in the
validation split, not trained on and not held out): `--sweep` picks the sampling defaults there,
never on the held-out files. Prints one JSON line last.

A General MIDI band model (codec label_scheme "gm-family", e.g. `--model band`) is measured on
its own tasks and held-out pieces instead (add bass, add drums, continue; bench/holdout/band.txt):
see bench/quality_band.py; `--n` then counts 4-bar windows (default 40), and `--files tune` /
`--sweep` use the band tuning pieces (the Freedoom pieces of prepare's validation split).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_metrics as Q

ROOT = Path(__file__).resolve().parent.parent
JSF = ROOT.parent / "shared" / "data" / "jsfakes"
HOLDOUT = ROOT / "bench" / "holdout" / "jsfakes.txt"
VOICES = ("SOPRANO", "ALTO", "TENOR", "BASS")
PROMPT_BARS = 4
SWEEP = [(t, p) for t in (0.6, 0.8, 1.0) for p in (0.9, 0.95, 1.0)]


def holdout_list() -> list[tuple[str, str]]:
    out = []
    for line in HOLDOUT.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2:
            out.append((words[0], words[1]))
    return out


def tune_list(limit: int) -> list[Path]:
    """Chorales in prepare's validation split (by content) and not held out: for tuning."""
    from bandmate.training.prepare import content_split

    held = {d for d, _ in holdout_list()}
    out = []
    for f in sorted(JSF.rglob("*.mid")):
        digest = hashlib.blake2b(f.read_bytes(), digest_size=16).digest()
        if digest.hex() not in held and content_split(digest, 0.05) == "val":
            out.append(f)
    return out[:limit]


def verify_holdout(meta: dict) -> bool:
    """Whether the model's training data excluded every held-out chorale (by its manifest)."""
    cfg = meta.get("training", {}).get("manifest", {}).get("config", {})
    return {d for d, _ in holdout_list()} <= set(cfg.get("exclude", []))


def load_pieces(paths: list[Path], config) -> list[tuple[str, object]]:
    from bandmate.models.midi_io import read_midi

    out = []
    for p in paths:
        piece = read_midi(p, config)
        if piece.bars >= PROMPT_BARS and [t.inst for t in piece.tracks] == list(VOICES):
            out.append((str(p.relative_to(JSF)), piece))
    return out


def by_voice(piece) -> dict[str, object]:
    return {t.inst: t for t in piece.tracks}


def add_voice_task(session, piece, voice: str, sampling, rng) -> dict:
    """One added voice: model, own and random-on-rhythm figures for this chorale."""
    from bandmate.models.generate import Done, stream_add_track

    window = piece.slice_bars(0, PROMPT_BARS)
    others = tuple(t for t in window.tracks if t.inst != voice)
    prompt = replace(window, tracks=others)
    done = None
    try:
        for ev in stream_add_track(session, prompt, voice, None, sampling):
            if isinstance(ev, Done):
                done = ev
    except Exception as e:  # a failure is a figure, not a crash of the benchmark
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    if done is None:
        return {"ok": False, "error": "no result"}
    new = done.piece.tracks[-1]
    ctx = by_voice(window)
    own = ctx[voice]
    rand = Q.random_on_rhythm(own.notes, Q.RANGES[voice], rng)
    rep = Q.repairs(done.stats.get("tokens", []), session.config)
    return {
        "ok": True,
        "repairs": rep,
        "model": Q.voice_figures(voice, new.notes, ctx, PROMPT_BARS),
        "own": Q.voice_figures(voice, own.notes, ctx, PROMPT_BARS),
        "random": Q.voice_figures(voice, rand, ctx, PROMPT_BARS),
    }


def continue_task(session, piece, sampling) -> dict:
    from bandmate.models.generate import Done, stream_continue

    prompt = piece.slice_bars(0, PROMPT_BARS)
    done = None
    try:
        for ev in stream_continue(session, prompt, PROMPT_BARS, None, sampling):
            if isinstance(ev, Done):
                done = ev
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    if done is None:
        return {"ok": False, "error": "no result"}
    rep = Q.repairs(done.stats.get("tokens", []), session.config)
    lo, hi = PROMPT_BARS * 16, 2 * PROMPT_BARS * 16
    model_new = {t.inst: [n for n in t.notes if n.start >= lo] for t in done.piece.tracks}
    fig = {"ok": True, "repairs": rep, "model": Q.continuation_figures(prompt, model_new)}
    if piece.bars >= 2 * PROMPT_BARS:
        own_new = {
            t.inst: [n for n in t.notes if lo <= n.start < hi] for t in piece.tracks
        }
        fig["own"] = Q.continuation_figures(prompt, own_new)
    return fig


def context_gain(scorer, pieces, config) -> dict:
    """Mean NLL of each voice's NOTE_ON tokens (voice last, as when adding it) with its own
    chorale's other voices, and with the next chorale's."""
    out = {}
    n = len(pieces)
    for voice in VOICES:
        own_nll, other_nll = [], []
        for i, (_, piece) in enumerate(pieces):
            w = piece.slice_bars(0, PROMPT_BARS)
            w2 = pieces[(i + 1) % n][1].slice_bars(0, PROMPT_BARS)
            target = by_voice(w)[voice]
            for src, acc in ((w, own_nll), (w2, other_nll)):
                ctx = [t for t in src.tracks if t.inst != voice]
                nll = scorer.note_on_nll(replace(w, tracks=(*ctx, target)), config)
                if nll is not None:
                    acc.append(nll)
        if own_nll:
            out[voice] = {
                "nll_own_context": round(float(np.mean(own_nll)), 4),
                "nll_other_context": round(float(np.mean(other_nll)), 4),
                "gain": round(float(np.mean(other_nll) - np.mean(own_nll)), 4),
            }
    return out


def run(model, pieces, sampling, seed: int, gain: bool = True) -> dict:
    from bandmate.models.session import ModelSession

    session = ModelSession.load(model)
    rng = np.random.default_rng(seed)
    results: dict[str, list[dict]] = {v: [] for v in VOICES}
    cont: list[dict] = []
    t0 = time.perf_counter()
    for k, (_, piece) in enumerate(pieces):
        for j, voice in enumerate(VOICES):
            s = replace(sampling, seed=seed * 100_003 + k * 8 + j)
            results[voice].append(add_voice_task(session, piece, voice, s, rng))
        s = replace(sampling, seed=seed * 100_003 + k * 8 + 7)
        cont.append(continue_task(session, piece, s))
    out = {
        "add": {v: Q.summarise_add(v, r) for v, r in results.items()},
        "continue": Q.summarise_continue(cont),
        "generation_s": round(time.perf_counter() - t0, 1),
    }
    if gain:
        out["context_gain"] = context_gain(Q.Scorer(model), pieces, session.config)
    tasks = [x for r in results.values() for x in r] + cont
    out["success_rate"] = round(sum(x["ok"] for x in tasks) / max(len(tasks), 1), 4)
    out["repairs"] = int(sum(x.get("repairs", 0) for x in tasks))
    out["errors"] = sorted({x["error"] for x in tasks if not x["ok"]})[:5]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=None, help="a shipped model's name or a model folder")
    ap.add_argument("--n", type=int, default=60, help="chorales to use (of 60 held out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=None, help="default: the CLI's")
    ap.add_argument("--top-p", type=float, default=None, help="default: the CLI's")
    ap.add_argument("--files", choices=("holdout", "tune"), default="holdout")
    ap.add_argument("--sweep", action="store_true", help="temperature x top-p grid (tune set)")
    ap.add_argument("--write-default", action="store_true",
                    help="band models, with --sweep: record the best setting in the model "
                    "folder as its own sampling defaults")
    ap.add_argument("--no-gain", action="store_true", help="skip the context-gain scoring")
    ap.add_argument(
        "--allow-unverified",
        action="store_true",
        help="run on a model whose training data is not recorded as excluding the held-out set "
        "(its figures are then not a fair test: the JSON says holdout_verified false)",
    )
    args = ap.parse_args(argv)

    from bandmate.models.registry import resolve_model
    from bandmate.models.session import ModelSession, default_model_dir

    model = resolve_model(args.model) or default_model_dir()  # a shipped name or a folder
    if not (model / "bandmate.json").is_file():
        print(f"bench/quality.py: {model} is not a model folder (no bandmate.json)",
              file=sys.stderr)
        return 2
    meta = json.loads((model / "bandmate.json").read_text())
    if meta.get("codec", {}).get("label_scheme") == "gm-family":
        return _band(model, args)  # a band model: its own tasks and held-out pieces
    verified = verify_holdout(meta)
    if args.files == "holdout" and not verified and not args.allow_unverified:
        print(
            f"bench/quality.py: {model}'s bandmate.json does not record that its training data "
            "excluded bench/holdout/jsfakes.txt (prepare --exclude): its figures would not be a "
            "fair test. Pass --allow-unverified to measure it anyway.",
            file=sys.stderr,
        )
        return 2
    session = ModelSession.load(model)
    config = session.config
    if args.files == "tune" or args.sweep:
        paths = tune_list(args.n)
    else:
        paths = [JSF / rel for _, rel in holdout_list()][: args.n]
    pieces = load_pieces(paths, config)
    base = session.default_sampling()  # the defaults the CLI and the app use
    sampling = replace(
        base,
        temperature=base.temperature if args.temperature is None else args.temperature,
        top_p=base.top_p if args.top_p is None else args.top_p,
    )
    head = {
        "model": meta.get("name"),
        "model_dir": str(model),
        "files": "tune" if args.sweep else args.files,
        "chorales": len(pieces),
        "holdout_verified": verified,
        "seed": args.seed,
    }
    if args.sweep:
        rows = []
        for t, p in SWEEP:
            s = replace(sampling, temperature=t, top_p=p)
            r = run(model, pieces, s, args.seed, gain=False)
            score = Q.sweep_score(r)
            rows.append({"temperature": t, "top_p": p, "score": score, **Q.headline(r)})
            print(json.dumps(rows[-1]), flush=True)
        best = max(rows, key=lambda r: r["score"])
        print(json.dumps({**head, "sweep": rows, "best": best}))
        return 0
    r = run(model, pieces, sampling, args.seed, gain=not args.no_gain)
    out = {
        **head,
        "settings": {"temperature": sampling.temperature, "top_p": sampling.top_p},
        "headline": Q.headline(r),
        **r,
    }
    print(json.dumps(out))
    return 0


def _band(model: Path, args: argparse.Namespace) -> int:
    """bench/quality_band.py's figures for a General MIDI (gm-family) model."""
    import quality_band as QB

    meta = json.loads((model / "bandmate.json").read_text())
    if not QB.verify_holdout(meta) and not args.allow_unverified:
        print(f"bench/quality.py: {model}'s bandmate.json does not record that its training "
              "data excluded bench/holdout/band.txt (prepare --exclude): its figures would not "
              "be a fair test. Pass --allow-unverified to see them anyway.", file=sys.stderr)
        return 2
    n = 40 if args.n == 60 else args.n  # --n counts held-out windows here (default 40)
    res = QB.run_cli(model, n, args.seed, args.files, args.sweep, args.temperature, args.top_p,
                     write=args.write_default)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
