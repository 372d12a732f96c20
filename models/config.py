"""The codec configuration: everything that decides which tokens a MIDI file becomes.

It travels inside every artifact (prepared data manifest, ``bandmate.json`` of a model), so a
model folder alone says how to encode prompts for it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from bandmate.models.vocab import Vocab, inst_labels

METERS = ("strict", "assume-4/4")
BAR_CHOICES = (4, 8, 16)
DEFAULT_VOICE_TABLE = ("SOPRANO", "ALTO", "TENOR", "BASS")


@dataclass(frozen=True)
class CodecConfig:
    """How MIDI becomes mmmtrack tokens (see docs/mmmtrack.md)."""

    bars: int = field(default=4, metadata={"help": "bars per sample: 4, 8 or 16"})
    voices: tuple[str, ...] = field(
        default=(),
        metadata={"help": "label tracks by order with these voice names (e.g. the chorales)"},
    )
    voice_table: tuple[str, ...] = field(
        default=DEFAULT_VOICE_TABLE,
        metadata={"help": "track names (case-insensitive) that become a voice label"},
    )
    density_bins: int = field(default=0, metadata={"help": "DENSITY buckets; 0 = no DENSITY"})
    density_edges: tuple[float, ...] = field(
        default=(),
        metadata={"help": "upper note-count edges of buckets 0..K-2, from the training data"},
    )
    meter: str = field(
        default="strict",
        metadata={"help": "strict: skip non-4/4 bars; assume-4/4: ignore time signatures"},
    )

    def __post_init__(self) -> None:
        if self.bars not in BAR_CHOICES:
            raise ValueError(f"bars must be one of {BAR_CHOICES}, got {self.bars}")
        if self.meter not in METERS:
            raise ValueError(f"meter must be one of {METERS}, got {self.meter!r}")
        object.__setattr__(self, "voices", tuple(v.upper() for v in self.voices))
        object.__setattr__(self, "voice_table", tuple(v.upper() for v in self.voice_table))
        object.__setattr__(self, "density_edges", tuple(float(e) for e in self.density_edges))
        for v in self.voices + self.voice_table:
            if not v or not v.replace("_", "").isalnum() or v.isdigit() or v == "DRUMS":
                raise ValueError(f"voice label {v!r} must be a word (letters, digits, _)")
        if not 0 <= self.density_bins <= 64:
            raise ValueError(f"density_bins must be 0..64, got {self.density_bins}")
        if self.density_edges and len(self.density_edges) != max(self.density_bins - 1, 0):
            raise ValueError("density_edges needs density_bins - 1 values")

    @property
    def labels(self) -> tuple[str, ...]:
        return inst_labels(self.voices + self.voice_table)

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.density_bins, self.labels)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> CodecConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)
