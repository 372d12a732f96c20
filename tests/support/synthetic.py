"""Synthetic prepared data: mmmtrack-shaped random token samples in the shard layout.

For benchmarks (``bench/train_gpu.py`` measures throughput, not music) and for tests of the
training loop that must not depend on a MIDI corpus. The samples are random melodies encoded
by the codec (`Codec.sample`), so they have the layout of real samples and a model trained on
them does learn something and its loss falls.
The files follow docs/contracts.md ("Prepared data") exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from bandmate.models.codec import Codec
from bandmate.models.config import CodecConfig
from bandmate.models.types import Note, Piece, Track


def synthetic_piece(
    rng: np.random.Generator, codec: CodecConfig, bars: int = 4
) -> tuple[Piece, list[int | None]]:
    """Every voice of the codec, ``bars`` bars of random stepwise melody filling each bar,
    and a random DENSITY per voice (None without bins): music, not tokens, so that the
    layout comes from the codec like every other sample."""
    voices = codec.voices or ("0",)
    tracks, densities = [], []
    for v, label in enumerate(voices):
        densities.append(int(rng.integers(codec.density_bins)) if codec.density_bins else None)
        pitch = 72 - 7 * v + int(rng.integers(-3, 4))
        notes = []
        for b in range(bars):
            t = b * 16
            while t < (b + 1) * 16:
                d = int(min((b + 1) * 16 - t, rng.choice([2, 4, 4, 8])))
                pitch = int(np.clip(pitch + rng.integers(-2, 3), 30, 90))
                notes.append(Note(t, pitch, t + d))
                t += d
        tracks.append(Track(label, tuple(notes)))
    return Piece(tuple(tracks), bars), densities


def synthetic_sample(rng: np.random.Generator, codec: CodecConfig, bars: int = 4) -> np.ndarray:
    """One sample of a `synthetic_piece`, encoded by the codec."""
    piece, densities = synthetic_piece(rng, codec, bars)
    return Codec.of(codec).sample(piece, densities=densities).astype(np.uint16)


def write_synthetic_data(
    out: str | Path,
    codec: CodecConfig,
    n_train: int = 64,
    n_val: int = 16,
    seed: int = 0,
    shard_tokens: int = 1 << 20,
    bars: int = 4,
) -> Path:
    """Write OUT/manifest.json, tokenizer.json, {split}-NNNNN.bin, {split}.idx.npy."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = {}
    for split, n in (("train", n_train), ("val", n_val)):
        idx = np.zeros((n, 3), np.int64)
        shard, off, buf = 0, 0, []
        for i in range(n):
            s = synthetic_sample(rng, codec, bars)
            if off + len(s) > shard_tokens and buf:
                np.concatenate(buf).tofile(out / f"{split}-{shard:05d}.bin")
                shard, off, buf = shard + 1, 0, []
            idx[i] = (shard, off, len(s))
            buf.append(s)
            off += len(s)
        if buf:
            np.concatenate(buf).tofile(out / f"{split}-{shard:05d}.bin")
        np.save(out / f"{split}.idx.npy", idx)
        counts[split] = {"samples": n, "tokens": int(idx[:, 2].sum())}
    codec.vocab.save(out / "tokenizer.json")
    manifest = {"codec": codec.to_json(), "counts": counts, "synthetic": True, "seed": seed}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out
