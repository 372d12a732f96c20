"""Sampling settings and the masked temperature / top-k / top-p sampler.

Sampling runs on the grammar-masked logits of one row (a few hundred ids), in numpy, once per
token: it works only on the legal ids, so its cost does not grow with the vocabulary's
illegal part. Each row has its own `numpy.random.Generator` seeded from (seed, row), so the
same seed gives the same notes whatever else runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
from bandmate.models.grammar import parse_scale

#: The defaults of the CLI, the app and the live engine, picked by bench/quality.py --sweep on
#: the tuning chorales (never the held-out ones): docs/generation.md, "Sampling defaults".
DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 0.9


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn (the generation stage's config)."""

    temperature: float = field(
        default=DEFAULT_TEMPERATURE,
        metadata={"help": "softmax temperature; 0 = always the likeliest token"},
    )
    top_k: int = field(default=0, metadata={"help": "keep the k likeliest legal tokens; 0 = all"})
    top_p: float = field(
        default=DEFAULT_TOP_P,
        metadata={"help": "nucleus: keep the likeliest tokens up to this mass"},
    )
    seed: int | None = field(default=None, metadata={"help": "same seed, same notes"})
    pitch_range: tuple[int, int] | None = field(
        default=None, metadata={"help": "lowest and highest MIDI pitch new notes may use"}
    )
    scale: tuple[int, ...] | str | None = field(
        default=None, metadata={"help": "keep it in key: pitch classes or e.g. 'D minor'"}
    )
    max_bar_tokens: int = field(
        default=192, metadata={"help": "tokens one bar of one track may take before it closes"}
    )

    def __post_init__(self) -> None:
        if not (0.0 <= self.temperature <= 10.0):
            raise ValueError(f"temperature must be 0..10 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.seed is not None and not 0 <= int(self.seed) < 2**63:
            raise ValueError(f"seed must be a non-negative integer or None, got {self.seed}")
        if self.pitch_range is not None:
            lo, hi = (int(x) for x in self.pitch_range)
            if not 0 <= lo <= hi <= 127:
                raise ValueError(
                    "pitch_range must be (lo, hi) with 0 <= lo <= hi <= 127, "
                    f"got {self.pitch_range}"
                )
            object.__setattr__(self, "pitch_range", (lo, hi))
        if self.scale is not None:
            if not isinstance(self.scale, str):
                object.__setattr__(self, "scale", tuple(int(p) for p in self.scale))
            parse_scale(self.scale)  # raises ValueError naming the allowed forms
        if self.max_bar_tokens < 8:
            raise ValueError(f"max_bar_tokens must be >= 8, got {self.max_bar_tokens}")

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("pitch_range", "scale"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d

    @classmethod
    def from_json(cls, d: dict | str) -> SamplingConfig:
        if isinstance(d, str):
            d = json.loads(d)
        kw = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("pitch_range", "scale"):
            if isinstance(kw.get(k), list):
                kw[k] = tuple(kw[k])
        return cls(**kw)


def row_rng(seed: int | None, row: int) -> np.random.Generator:
    """The generator of one batch row: independent rows, reproducible per (seed, row)."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([int(seed), int(row)])


def sample(
    logits: np.ndarray, mask: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator
) -> int:
    """One token id from ``logits`` restricted to ``mask`` (at least one True)."""
    idx = np.flatnonzero(mask)
    if len(idx) == 1:
        return int(idx[0])
    x = logits[idx].astype(np.float64)
    if cfg.temperature == 0.0:
        return int(idx[int(np.argmax(x))])
    x /= cfg.temperature
    if 0 < cfg.top_k < len(idx):
        keep = np.argpartition(-x, cfg.top_k - 1)[: cfg.top_k]
        idx, x = idx[keep], x[keep]
    x -= x.max()
    p = np.exp(x)
    p /= p.sum()
    if cfg.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        n = int(np.searchsorted(cum, cfg.top_p, side="left")) + 1
        order = order[:n]
        idx, p = idx[order], p[order]
        p = p / p.sum()
    c = np.cumsum(p)
    k = int(np.searchsorted(c, rng.random() * c[-1], side="right"))
    return int(idx[min(k, len(idx) - 1)])
