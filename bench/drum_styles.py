"""How often the drums of a prepared band corpus play a backbeat: the ceiling a model trained on
it starts from.

A model that adds drums learns the drum styles of its training windows. This script decodes a
sample of a prepared folder's training windows, keeps those the band benchmark would pick (a
bass-family track and drums in every bar of 4, another pitched part; `quality_band.band_windows`)
and scores their own drums with the benchmark's figures (`quality_band.drum_figures`): kick on
beat 1, snare or clap on beats 2 and 4. Transposed copies of a window share its drums, so the
figures weight windows by how often training sees them. It reads training data only, never the
held-out pieces.

Why it exists: the shipped band model's backbeat (0.54 on the held-out pieces) equals its
training windows' (0.53), while the held-out pieces' own drummers play 0.73; the goal of 0.8 x
own (0.58) asks for more backbeat than the data holds (docs/band.md).

Usage: python bench/drum_styles.py data/band-fd [--n 8000] [--seed 1]
Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_band as Q


def drum_styles(data: Path, n: int = 8000, seed: int = 1, split: str = "train") -> dict:
    """Kick-on-1 and backbeat rates of the drums in ``n`` sampled windows of ``data``: all
    windows with drums and a band, the benchmark-like ones, and drums-only windows."""
    from bandmate.models.codec import Codec
    from bandmate.models.config import CodecConfig
    from bandmate.training.data import open_data

    manifest = json.loads((Path(data) / "manifest.json").read_text(encoding="utf-8"))
    codec = Codec.of(CodecConfig.from_json(manifest["codec"]))
    if codec.config.label_scheme != "gm-family":
        raise ValueError(f"{data}: not a gm-family corpus (labels {codec.config.label_scheme})")
    samples = open_data(data, split)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(samples), min(n, len(samples)), replace=False)
    sums: dict[str, dict[str, int]] = {}
    for i in picks.tolist():
        piece = codec.decode(np.asarray(samples[i])).piece
        drums = [t for t in piece.tracks if t.is_drum and t.notes]
        if not drums or piece.bars < Q.BARS:
            continue
        pitched = [t for t in piece.tracks if not t.is_drum and t.notes]
        kinds = ["band"] if pitched else ["drums only"]
        # A decoded gm-family track plays its family's first program (basses: 32), which
        # band_windows knows as a bass.
        if pitched and Q.band_windows(piece, need_next=False)[:1] == [0]:
            kinds.append("benchmark-like")
        figs = Q.drum_figures(sorted(n for t in drums for n in t.notes), Q.BARS)
        for kind in kinds:
            s = sums.setdefault(kind, {"windows": 0, "bars": 0, "kick_on_1": 0, "backbeats": 0})
            s["windows"] += 1
            s["bars"] += figs["bars"]
            s["kick_on_1"] += figs["kick_on_1"]
            s["backbeats"] += figs["backbeats"]
    return {
        "data": str(data),
        "split": split,
        "sampled": len(picks),
        "seed": seed,
        **{
            kind: {
                "windows": s["windows"],
                "kick_on_1": round(s["kick_on_1"] / s["bars"], 4),
                "backbeat": round(s["backbeats"] / (2 * s["bars"]), 4),
            }
            for kind, s in sums.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="a folder written by `bandmate prepare`")
    ap.add_argument("--n", type=int, default=8000, help="windows to sample")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--split", choices=("train", "val"), default="train")
    args = ap.parse_args(argv)
    try:
        res = drum_styles(args.data, args.n, args.seed, args.split)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
