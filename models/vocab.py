"""The deterministic mmmtrack vocabulary and its Hugging Face ``tokenizer.json``.

Token ids of the fixed part (specials, structure, NOTE_ON, NOTE_OFF, TIME_DELTA) never move,
so vectorised code can use constant offsets; DENSITY and INST follow and depend only on the
number of density bins and the label list of the codec config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

SPECIALS = ("[PAD]", "[UNK]")
STRUCTURE = (
    "PIECE_START",
    "TRACK_START",
    "TRACK_END",
    "BAR_START",
    "BAR_END",
    "FILL_IN",
    "FILL_START",
    "FILL_END",
)
PAD, UNK = 0, 1
PIECE_START, TRACK_START, TRACK_END, BAR_START, BAR_END, FILL_IN, FILL_START, FILL_END = range(
    2, 10
)
NOTE_ON0 = 10  # NOTE_ON=p  -> NOTE_ON0 + p
NOTE_OFF0 = NOTE_ON0 + 128  # NOTE_OFF=p -> NOTE_OFF0 + p
TIME_DELTA0 = NOTE_OFF0 + 128 - 1  # TIME_DELTA=t (1..16) -> TIME_DELTA0 + t
DENSITY0 = TIME_DELTA0 + 16 + 1  # DENSITY=d -> DENSITY0 + d

#: The General MIDI labels every vocabulary carries, after the model's voice labels.
GM_LABELS: tuple[str, ...] = ("DRUMS", *(str(p) for p in range(128)))


def inst_labels(voices: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """All INST labels of a vocabulary: the named voices first, then DRUMS and 0..127."""
    out: list[str] = []
    for v in list(voices) + list(GM_LABELS):
        if v not in out:
            out.append(v)
    return tuple(out)


@dataclass(frozen=True)
class Vocab:
    """Token <-> id maps for one codec configuration."""

    density_bins: int
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.density_bins <= 64:
            raise ValueError(f"density_bins must be 0..64, got {self.density_bins}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("INST labels must be unique")

    @cached_property
    def tokens(self) -> tuple[str, ...]:
        toks = list(SPECIALS + STRUCTURE)
        toks += [f"NOTE_ON={p}" for p in range(128)]
        toks += [f"NOTE_OFF={p}" for p in range(128)]
        toks += [f"TIME_DELTA={t}" for t in range(1, 17)]
        toks += [f"DENSITY={d}" for d in range(self.density_bins)]
        toks += [f"INST={lab}" for lab in self.labels]
        return tuple(toks)

    @cached_property
    def ids(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def inst0(self) -> int:
        return DENSITY0 + self.density_bins

    def inst_id(self, label: str) -> int:
        try:
            return self.inst0 + self.labels.index(label)
        except ValueError:
            raise ValueError(
                f"INST={label} is not in this model's vocabulary; known labels: "
                f"{', '.join(self.labels[:8])}{' ...' if len(self.labels) > 8 else ''}"
            ) from None

    def density_id(self, d: int) -> int:
        if not 0 <= d < self.density_bins:
            raise ValueError(f"density must be 0..{self.density_bins - 1}, got {d}")
        return DENSITY0 + d

    def encode(self, tokens: list[str]) -> list[int]:
        ids = self.ids
        return [ids.get(t, UNK) for t in tokens]

    def decode(self, ids: list[int] | np.ndarray) -> list[str]:
        toks = self.tokens
        n = len(toks)
        return [toks[i] if 0 <= i < n else "[UNK]" for i in (int(x) for x in ids)]

    def tokenizer_json(self) -> dict:
        """A WordLevel / whitespace tokenizer that `tokenizers` and transformers both load;
        decoding gives "PIECE_START TRACK_START ..." (tokens separated by one space)."""
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": i,
                    "content": t,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
                for i, t in enumerate(SPECIALS)
            ],
            "normalizer": None,
            "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": None,
            # Joins tokens with single spaces (no "##" token exists), so a decoded id list is
            # the space-separated token text that encode() reads back exactly.
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False},
            "model": {"type": "WordLevel", "vocab": self.ids, "unk_token": "[UNK]"},
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.tokenizer_json(), indent=1) + "\n")

    @classmethod
    def from_tokenizer_json(cls, path: str | Path) -> Vocab:
        """Rebuild from a saved ``tokenizer.json``, checking it matches the fixed layout."""
        vocab: dict[str, int] = json.loads(Path(path).read_text())["model"]["vocab"]
        by_id = sorted(vocab, key=vocab.__getitem__)
        bins = sum(1 for t in by_id if t.startswith("DENSITY="))
        labels = tuple(t[len("INST=") :] for t in by_id if t.startswith("INST="))
        v = cls(bins, labels)
        if list(v.tokens) != by_id:
            raise ValueError(f"{path}: not an mmmtrack vocabulary of this version")
        return v
