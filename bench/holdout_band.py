"""Write bench/holdout/band.txt: the Freedoom pieces held out from every band model.

The rule (deterministic, a function of the file names and contents only):
- a piece is the file name without extension and without history/'s revision prefix
  (`bandmate.training.prepare.piece_key`): current/d_dm01.mid and history/<blob>_d_dm01.mid
  are one piece; and music moved between names in Freedoom's history (history/*_d_e1m5.mid
  is one revision of D_E1M9, one d_map20 of d_map22, one d_map01 of Mogul's Part1) joins the
  pieces: two files whose pitched notes, as (position in 4 bars, pitch, length) sets, have a
  Jaccard similarity >= 0.3 are one piece (connected components; the unrelated pairs
  measured 0.02-0.28);
- a piece is *eligible* when one of its files (current/ first) has a 4-bar window of strict
  4/4 in which a GM bass (programs 32-39) and drums (channel 10) both play;
- the eligible pieces are ranked by blake2b-16 of "band-holdout:" + their key and the first
  max(12, round(10% of all pieces)) are held out, every revision of each. (The salt keeps
  this ranking apart from `prepare --split-by piece`, which puts the pieces of lowest
  unsalted hash in val: without it the held-out pieces would be exactly the val pieces.)

Usage: python bench/holdout_band.py [--data ../shared/data/freedoom] [-o bench/holdout/band.txt]
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
from bandmate.models.config import CodecConfig
from bandmate.models.midi_io import MIDI_SUFFIXES, MidiError, read_segments_arrays
from bandmate.models.types import STEPS_PER_BAR
from bandmate.training.prepare import piece_key

FOLDERS = ("current", "history")
SHARE = 0.10
MIN_PIECES = 12
CODEC = CodecConfig(label_scheme="gm-family")


def band_windows(src: str | Path | bytes, bars: int = 4) -> list[tuple[int, int]]:
    """(segment index, first bar) of every ``bars``-bar window (hop 1) of strict 4/4 in which
    a bass-family track and a drum track both have an onset."""
    try:
        segs = read_segments_arrays(src, CODEC)
    except MidiError:
        return []
    out = []
    for si, seg in enumerate(segs):
        if seg.bars < bars:
            continue
        has = {}
        for t in seg.tracks:
            kind = "drums" if t.is_drum else ("bass" if t.label == "32" else None)
            if kind is None or not len(t.start):
                continue
            per_bar = np.bincount(t.start // STEPS_PER_BAR, minlength=seg.bars)[: seg.bars] > 0
            has[kind] = has.get(kind, np.zeros(seg.bars, bool)) | per_bar
        if len(has) < 2:
            continue
        both = has["bass"] & has["drums"]
        cs = np.concatenate([[0], np.cumsum(both)])
        # a window where both parts play in at least half its bars
        for b in range(seg.bars - bars + 1):
            if cs[b + bars] - cs[b] >= bars // 2:
                out.append((si, b))
    return out


def pieces(data: Path) -> dict[str, list[Path]]:
    """piece key -> its files, current/ first, then history/ sorted by name."""
    out: dict[str, list[Path]] = {}
    for folder in FOLDERS:
        for f in sorted((data / folder).iterdir()):
            if f.suffix.lower() in MIDI_SUFFIXES:
                out.setdefault(piece_key(f.name), []).append(f)
    return out


SIMILAR = 0.3


def fingerprint(path: Path) -> frozenset:
    """(step in a 4-bar cycle, pitch, length) of every pitched note of the file."""
    try:
        segs = read_segments_arrays(path, replace(CODEC, meter="assume-4/4"))
    except MidiError:
        return frozenset()
    out: set = set()
    for seg in segs:
        for t in seg.tracks:
            if not t.is_drum:
                cyc = (t.start % (4 * STEPS_PER_BAR)).tolist()
                out |= set(zip(cyc, t.pitch.tolist(), (t.end - t.start).tolist(), strict=True))
    return frozenset(out)


def join_similar(by_name: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """Name pieces joined into one wherever two of their files are `SIMILAR` (union-find);
    each joined piece is keyed by its smallest name key."""
    keys = sorted(by_name)
    parent = {k: k for k in keys}

    def root(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    files = [(k, fingerprint(f)) for k in keys for f in by_name[k]]
    for i, (ka, fa) in enumerate(files):
        for kb, fb in files[i + 1 :]:
            if ka != kb and fa and fb and len(fa & fb) >= SIMILAR * len(fa | fb):
                ra, rb = root(ka), root(kb)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    out: dict[str, list[Path]] = {}
    for k in keys:
        out.setdefault(root(k), []).extend(by_name[k])
    return out


def digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def rank(key: str) -> str:
    return hashlib.blake2b(f"band-holdout:{key}".encode(), digest_size=16).hexdigest()


def choose(data: Path) -> tuple[list[str], dict[str, list[Path]], int]:
    """The held-out piece keys (in rank order), every piece's files, the eligible count."""
    by_piece = join_similar(pieces(data))
    eligible = [k for k, files in by_piece.items() if any(band_windows(f) for f in files)]
    eligible.sort(key=rank)
    n = max(MIN_PIECES, round(SHARE * len(by_piece)))
    return eligible[:n], by_piece, len(eligible)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/freedoom"))
    ap.add_argument("-o", "--out", type=Path, default=Path("bench/holdout/band.txt"))
    args = ap.parse_args(argv)
    held, by_piece, n_eligible = choose(args.data)
    lines = [
        "# Freedoom pieces held out from every band model, for bench/quality_band.py.",
        "# Rule (bench/holdout_band.py): a piece is a file name without extension, history/",
        "# revision prefix, d_ and -remix, joined with any file whose notes are >= 0.3 similar;",
        "# eligible: a 4-bar window of strict 4/4 where a GM bass (32-39) and drums both play;",
        "# eligible pieces ranked by blake2b-16 of 'band-holdout:' + the piece key; the first",
        f"# max({MIN_PIECES}, 10% of {len(by_piece)} pieces) = {len(held)} held out "
        f"({n_eligible} eligible), every revision listed.",
        "# First word: blake2b-16 content digest (what `bandmate prepare --exclude` reads); then",
        "# the path under ../shared/data/freedoom. Never train on these, never tune on them.",
    ]
    n_files = 0
    for k in held:
        lines.append(f"# piece {k}")
        for f in by_piece[k]:
            lines.append(f"{digest(f)}  {f.parent.name}/{f.name}")
            n_files += 1
    args.out.write_text("\n".join(lines) + "\n")
    print(f"{len(held)} pieces, {n_files} files held out of {len(by_piece)} pieces -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
