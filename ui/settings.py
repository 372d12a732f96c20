"""The app's persistent settings as one validated dataclass, stored through any QSettings-like.

Kept Qt-free so the rules (allowed values, defaults, what survives a bad stored value) are unit
tested without a window; `load_settings` / `save_settings` take anything with
``value(key)`` / ``setValue(key, value)``, which QSettings is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from bandmate.models.sampler import DEFAULT_TEMPERATURE

log = logging.getLogger(__name__)

CLOCK_SOURCES = ("daw", "internal")
BAR_CHOICES = (4, 8)
MIDI_APIS = ("auto", "jack", "alsa", "coremidi", "winmm")
SETTINGS_KEY = "settings/json"


@dataclass(frozen=True)
class AppSettings:
    """Everything the window remembers between runs."""

    midi_api: str = field(default="auto", metadata={"help": "MIDI API: " + ", ".join(MIDI_APIS)})
    in_port: str = field(default="", metadata={"help": "MIDI input port name; '' = virtual"})
    out_port: str = field(default="", metadata={"help": "MIDI output port name; '' = virtual"})
    clock_source: str = field(default="daw", metadata={"help": "daw: follow MIDI clock"})
    tempo: float = field(default=120.0, metadata={"help": "internal tempo in BPM"})
    model_dir: str = field(default="", metadata={"help": "exported model folder; '' = shipped"})
    bars: int = field(default=4, metadata={"help": "bars to generate: 4 or 8"})
    temperature: float = field(
        default=DEFAULT_TEMPERATURE, metadata={"help": "sampling temperature 0.1..2.0"}
    )
    density: int = field(default=-1, metadata={"help": "note density bucket; -1 = automatic"})
    instrument: str = field(default="BASS", metadata={"help": "INST label for Add track"})
    variations: int = field(default=1, metadata={"help": "takes per click, 1..4"})
    last_dir: str = field(default="", metadata={"help": "folder of the last opened file"})

    def __post_init__(self) -> None:
        if self.midi_api not in MIDI_APIS:
            raise ValueError(f"midi_api must be one of {MIDI_APIS}, got {self.midi_api!r}")
        if self.clock_source not in CLOCK_SOURCES:
            raise ValueError(
                f"clock_source must be one of {CLOCK_SOURCES}, got {self.clock_source!r}"
            )
        if not 20.0 <= self.tempo <= 300.0:
            raise ValueError(f"tempo must be 20..300 BPM, got {self.tempo}")
        if self.bars not in BAR_CHOICES:
            raise ValueError(f"bars must be one of {BAR_CHOICES}, got {self.bars}")
        if not 0.1 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be 0.1..2.0, got {self.temperature}")
        if not -1 <= self.density <= 64:
            raise ValueError(f"density must be -1 (automatic) or 0..64, got {self.density}")
        if not 1 <= self.variations <= 4:
            raise ValueError(f"variations must be 1..4, got {self.variations}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> AppSettings:
        """Build from stored JSON; unknown keys are ignored and bad values fall back to defaults.

        A settings file written by another version must never stop the app from opening.
        """
        out = cls()
        for f in fields(cls):
            if f.name not in d:
                continue
            try:
                value = type(getattr(out, f.name))(d[f.name])
                out = cls(**{**asdict(out), f.name: value})
            except (TypeError, ValueError) as e:
                log.warning("ignoring stored setting %s=%r: %s", f.name, d[f.name], e)
        return out


class SettingsStore(Protocol):
    def value(self, key: str) -> Any: ...
    def setValue(self, key: str, value: Any) -> None: ...


def load_settings(store: SettingsStore) -> AppSettings:
    """The stored settings, or the defaults when nothing (or garbage) is stored."""
    raw = store.value(SETTINGS_KEY)
    if not raw:
        return AppSettings()
    try:
        data = json.loads(str(raw))
    except json.JSONDecodeError:
        log.warning("stored settings are not JSON; using defaults")
        return AppSettings()
    return AppSettings.from_json(data if isinstance(data, dict) else {})


def save_settings(store: SettingsStore, settings: AppSettings) -> None:
    store.setValue(SETTINGS_KEY, json.dumps(settings.to_json()))
