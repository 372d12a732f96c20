"""Synthetic prepared data: mmmtrack-shaped random token samples in the shard layout.

For benchmarks (``bench/train_gpu.py`` measures throughput, not music) and for tests of the
training loop that must not depend on a MIDI corpus. The samples follow the token grammar
(PIECE_START, then per voice TRACK_START INST DENSITY, bars of note on / time / note off,
TRACK_END), so a model trained on them does learn something and its loss falls.
The files follow docs/contracts.md ("Prepared data") exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from bandmate.models.config import CodecConfig
from bandmate.models.vocab import (
    BAR_END,
    BAR_START,
    NOTE_OFF0,
    NOTE_ON0,
    PIECE_START,
    TIME_DELTA0,
    TRACK_END,
    TRACK_START,
)


def synthetic_sample(rng: np.random.Generator, codec: CodecConfig, bars: int = 4) -> np.ndarray:
    """One sample: every voice of the codec, ``bars`` bars of random stepwise melody."""
    vocab = codec.vocab
    out = [PIECE_START]
    voices = codec.voices or ("0",)
    for v, label in enumerate(voices):
        out += [TRACK_START, vocab.inst_id(label)]
        if codec.density_bins:
            out.append(vocab.density_id(int(rng.integers(codec.density_bins))))
        pitch = 72 - 7 * v + int(rng.integers(-3, 4))
        for _ in range(bars):
            out.append(BAR_START)
            left = 16
            while left > 0:
                d = int(min(left, rng.choice([2, 4, 4, 8])))
                pitch = int(np.clip(pitch + rng.integers(-2, 3), 30, 90))
                out += [NOTE_ON0 + pitch, TIME_DELTA0 + d, NOTE_OFF0 + pitch]
                left -= d
            out.append(BAR_END)
        out.append(TRACK_END)
    return np.asarray(out, np.uint16)


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
