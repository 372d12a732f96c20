"""The codec configuration: everything that decides which tokens a MIDI file becomes.

It travels inside every artifact (prepared data manifest, ``bandmate.json`` of a model), so a
model folder alone says how to encode prompts for it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from bandmate.models.vocab import Vocab, inst_labels

METERS = ("strict", "assume-4/4")
#: The help of every ``--meter`` option that reads a user's file (generate, the app).
METER_HELP = (
    "strict: read only a file's 4/4 bars; assume-4/4: read every bar as 4/4 (for files whose "
    "time signature is wrong); default: the model's"
)
#: How tracks get INST labels (docs/codec.md): "program" (voice names, else the GM program:
#: the chorale models) or "gm-family" (DRUMS, else the first program of the GM family).
LABEL_SCHEMES = ("program", "gm-family")
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
    label_scheme: str = field(
        default="program",
        metadata={
            "help": "program: voice names (by order or track name), else the GM program; "
            "gm-family: DRUMS, else the GM family's first program (band material)"
        },
    )

    def __post_init__(self) -> None:
        if self.bars not in BAR_CHOICES:
            raise ValueError(f"bars must be one of {BAR_CHOICES}, got {self.bars}")
        if self.meter not in METERS:
            raise ValueError(f"meter must be one of {METERS}, got {self.meter!r}")
        if self.label_scheme not in LABEL_SCHEMES:
            raise ValueError(
                f"label_scheme must be one of {LABEL_SCHEMES}, got {self.label_scheme!r}"
            )
        if self.label_scheme == "gm-family" and self.voices:
            raise ValueError("voices (labels by track order) need label_scheme 'program'")
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
        if self.label_scheme == "gm-family":
            return inst_labels(())  # DRUMS and 0..127; only DRUMS and the 16 families occur
        return inst_labels(self.voices + self.voice_table)

    def track_label(self, name: str, program: int, is_drum: bool, order: int) -> str:
        """The INST label of a track read from MIDI (``order``: its index among the
        non-drum tracks with notes)."""
        if is_drum:
            return "DRUMS"
        if self.label_scheme == "gm-family":
            return gm_family_label(program)
        if self.voices:
            return self.voices[order] if order < len(self.voices) else str(program)
        key = name.strip().upper()
        return key if key in self.voice_table else str(program)

    def model_label(self, label: str) -> str:
        """A label from elsewhere (another model's reading, live capture, a program number)
        as this model writes it: the identity under "program"; under "gm-family" a program
        becomes its family, BASS the bass family, any other word piano ("0")."""
        if self.label_scheme != "gm-family" or label == "DRUMS":
            return label
        if label.isdigit() and 0 <= int(label) <= 127:
            return gm_family_label(int(label))
        return "32" if label.upper() == "BASS" else "0"

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


def gm_family_label(program: int) -> str:
    """The first program of a GM program's family of 8, as a label: 33 -> "32" (basses)."""
    return str(min(max(int(program), 0), 127) // 8 * 8)
