"""The options of ``bandmate prepare``: `PrepareConfig`, its checks, and the hash of it.

Why a module of its own: every part of the corpus package reads the configuration (the
encoder, the listing, the workers, the merge), and none of them should need the encoder or
the process pool to do so. `config_hash` lives here too: it is what ties a prepared folder,
or an interrupted run, to the arguments that made it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from bandmate.models.config import BAR_CHOICES, METERS, CodecConfig
from bandmate.training.shards import DEFAULT_SHARD_TOKENS

from bandmate import __version__

FORMATS = ("bin", "text")
#: How files are put in train or val: by content hash, or by piece (`piece_key`).
SPLIT_BY = ("content", "piece")
#: Seconds one file may take in a worker before it is given up (`--file-timeout`). A large
#: real file reads in well under a second; only a damaged one that loops the parser gets here.
DEFAULT_FILE_TIMEOUT = 120.0


class PrepareError(Exception):
    """A problem the user must fix (arguments, output folder); the message says how."""


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that decides the bytes of a prepared folder (``--workers`` does not)."""

    sources: tuple[str, ...] = field(metadata={"help": "MIDI files or folders, walked recursively"})
    bars: int = field(default=4, metadata={"help": "bars per sample: 4, 8 or 16"})
    hop: int = field(default=0, metadata={"help": "bars between window starts; 0 = bars/4"})
    transpose: tuple[int, int] = field(
        default=(-5, 6), metadata={"help": "train-only transpositions LO..HI semitones"}
    )
    val_fraction: float = field(default=0.05, metadata={"help": "share of files held out"})
    density_bins: int = field(default=4, metadata={"help": "DENSITY buckets; 0 = none"})
    density_edges: tuple[float, ...] = field(
        default=(), metadata={"help": "fixed bucket edges instead of training quantiles"}
    )
    voices: tuple[str, ...] = field(default=(), metadata={"help": "label tracks by order"})
    meter: str = field(
        default="strict",
        metadata={"help": "strict or assume-4/4; or one per source, separated by commas"},
    )
    label_scheme: str = field(
        default="program", metadata={"help": "INST labels: program or gm-family (docs/codec.md)"}
    )
    split_by: str = field(
        default="content",
        metadata={"help": "train/val by file content, or by piece (the file name, see piece_key)"},
    )
    shard: tuple[int, int] = field(default=(0, 1), metadata={"help": "this part I of N"})
    format: str = field(default="bin", metadata={"help": "bin (uint16 shards) or text"})
    chunk_files: int = field(default=0, metadata={"help": "files per work unit; 0 = auto"})
    shard_tokens: int = field(default=DEFAULT_SHARD_TOKENS, metadata={"help": "tokens/shard"})
    exclude: tuple[str, ...] = field(
        default=(),
        metadata={"help": "content digests (blake2b-16 hex) of files to leave out entirely"},
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "sources", tuple(str(s) for s in self.sources))
        set_(self, "transpose", tuple(int(x) for x in self.transpose))
        set_(self, "shard", tuple(int(x) for x in self.shard))
        set_(self, "voices", tuple(v.upper() for v in self.voices))
        set_(self, "density_edges", tuple(float(e) for e in self.density_edges))
        set_(self, "exclude", tuple(sorted({str(d).lower() for d in self.exclude})))
        bad = [d for d in self.exclude if not re.fullmatch(r"[0-9a-f]{32}", d)]
        if bad:
            raise ValueError(
                f"exclude takes blake2b-16 content digests (32 hex digits), got {bad[0]!r}"
            )
        if not self.sources:
            raise ValueError("give at least one MIDI file or folder")
        if self.bars not in BAR_CHOICES:
            raise ValueError(f"bars must be one of {BAR_CHOICES}, got {self.bars}")
        if not 0 <= self.hop <= 64:
            raise ValueError(f"hop must be 1..64 bars (0 = bars/4), got {self.hop}")
        lo, hi = self.transpose
        if not -24 <= lo <= 0 <= hi <= 24:
            raise ValueError(f"transpose LO:HI needs -24 <= LO <= 0 <= HI <= 24, got {lo}:{hi}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.density_bins <= 64:
            raise ValueError(f"density_bins must be 0..64, got {self.density_bins}")
        if self.density_edges:
            if len(self.density_edges) != self.density_bins - 1:
                raise ValueError(
                    f"density_edges needs density_bins - 1 = {self.density_bins - 1} values"
                )
            if list(self.density_edges) != sorted(self.density_edges):
                raise ValueError("density_edges must be ascending")
        meters = self.meters
        bad_m = [m for m in meters if m not in METERS]
        if bad_m:
            raise ValueError(f"meter must be one of {METERS}, got {bad_m[0]!r}")
        if len(meters) not in (1, len(self.sources)):
            raise ValueError(
                f"meter: one value, or one per source ({len(self.sources)}), got {len(meters)}"
            )
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"split_by must be one of {SPLIT_BY}, got {self.split_by!r}")
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"shard I/N needs 0 <= I < N, got {i}/{n}")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.chunk_files < 0:
            raise ValueError("chunk_files must be >= 0 (0 = automatic)")
        if self.shard_tokens < 1:
            raise ValueError("shard_tokens must be >= 1")
        self.codec()  # validates the voice labels

    @property
    def window_hop(self) -> int:
        """Default: a quarter of the window, so every bar is in about 4 samples."""
        return self.hop or max(1, self.bars // 4)

    @property
    def shifts(self) -> tuple[int, ...]:
        lo, hi = self.transpose
        return tuple(k for k in range(lo, hi + 1) if k != 0)

    @property
    def meters(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.meter.split(","))

    def meter_of(self, source_index: int) -> str:
        """The meter files of source ``source_index`` are read with."""
        m = self.meters
        return m[source_index] if len(m) > 1 else m[0]

    def codec(self, edges: Sequence[float] = ()) -> CodecConfig:
        """The model's codec (with per-source meters, the first source's meter: the one a
        prompt is read with)."""
        return CodecConfig(
            bars=self.bars,
            voices=self.voices,
            density_bins=self.density_bins,
            density_edges=tuple(edges),
            meter=self.meters[0],
            label_scheme=self.label_scheme,
        )

    def to_json(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_json(cls, d: dict) -> PrepareConfig:
        names = {f.name for f in fields(cls)}
        return cls(
            **{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        )


#: Fields added after prepared folders existed: left out of the hash at their defaults, so a
#: run started before them resumes.
_NEW_DEFAULTS = {"label_scheme": "program", "split_by": "content"}


def config_hash(cfg: PrepareConfig) -> str:
    """What a prepared folder and an interrupted run are checked against: every argument
    (the sources as absolute paths) and the bandmate version."""
    d = cfg.to_json()
    for k, v in _NEW_DEFAULTS.items():
        if d.get(k) == v:
            del d[k]
    d["sources"] = [str(Path(s).resolve()) for s in cfg.sources]
    d["version"] = __version__
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
