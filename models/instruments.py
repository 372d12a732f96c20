"""General MIDI instruments by name: the 128 programs, the 16 families, and what a user types.

Programs are counted from 0, as the token format does. No dependency: pretty_midi has the same
table (``program_to_instrument_name``) but brings its own stack for 128 strings.
"""

from __future__ import annotations

import re

GM_PROGRAMS: tuple[str, ...] = (
    # Piano
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    # Chromatic percussion
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone",
    "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    # Organ
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ",
    "Reed Organ", "Accordion", "Harmonica", "Tango Accordion",
    # Guitar
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)",
    "Electric Guitar (clean)", "Electric Guitar (muted)", "Overdriven Guitar",
    "Distortion Guitar", "Guitar Harmonics",
    # Bass
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass",
    "Slap Bass 1", "Slap Bass 2", "Synth Bass 1", "Synth Bass 2",
    # Strings
    "Violin", "Viola", "Cello", "Contrabass",
    "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani",
    # Ensemble
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2",
    "Choir Aahs", "Voice Oohs", "Synth Voice", "Orchestra Hit",
    # Brass
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet",
    "French Horn", "Brass Section", "Synth Brass 1", "Synth Brass 2",
    # Reed
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax",
    "Oboe", "English Horn", "Bassoon", "Clarinet",
    # Pipe
    "Piccolo", "Flute", "Recorder", "Pan Flute",
    "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    # Synth lead
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)",
    "Lead 5 (charang)", "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    # Synth pad
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)",
    "Pad 5 (bowed)", "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)",
    # Synth effects
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)",
    "FX 5 (brightness)", "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    # Ethnic
    "Sitar", "Banjo", "Shamisen", "Koto",
    "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    # Percussive
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock",
    "Taiko Drum", "Melodic Tom", "Synth Drum", "Reverse Cymbal",
    # Sound effects
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet",
    "Telephone Ring", "Helicopter", "Applause", "Gunshot",
)  # fmt: skip

assert len(GM_PROGRAMS) == 128

#: The 16 families of 8 programs (GM Level 1), family f = programs 8f..8f+7.
GM_FAMILIES: tuple[str, ...] = (
    "Piano", "Chromatic Percussion", "Organ", "Guitar", "Bass", "Strings", "Ensemble", "Brass",
    "Reed", "Pipe", "Synth Lead", "Synth Pad", "Synth Effects", "Ethnic", "Percussive",
    "Sound Effects",
)  # fmt: skip

#: Other words people use for a family (lower case) -> family index.
_FAMILY_WORDS: dict[str, int] = {
    "pianos": 0, "keys": 0, "chromatic": 1, "mallets": 1, "organs": 2, "guitars": 3,
    "basses": 4, "string": 5, "ensembles": 6, "choir": 6, "horns": 7, "sax": 8, "reeds": 8,
    "winds": 9, "flute": 9, "lead": 10, "synth": 10, "pad": 11, "pads": 11, "fx": 12,
    "synth fx": 12, "world": 13, "sfx": 15,
}  # fmt: skip
DRUM_WORDS = ("drums", "drum", "percussion", "drum kit", "kit")


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9+]+", " ", text.lower()).strip()


_BY_NAME: dict[str, int] = {_norm(n): p for p, n in enumerate(GM_PROGRAMS)}
_BY_NAME.update({_norm(n): 8 * f for f, n in enumerate(GM_FAMILIES)})
_BY_NAME.update({_norm(w): 8 * f for w, f in _FAMILY_WORDS.items()})


def family(program: int) -> int:
    return int(program) // 8


def family_name(program: int) -> str:
    return GM_FAMILIES[family(program)]


def parse_instrument(text: str) -> str | int | None:
    """What a user typed as "DRUMS" or a GM program, or None: ``drums``; a number 0-127; a GM
    name ("Electric Bass (finger)", any case and punctuation); a family ("guitar",
    "strings", "Synth Lead") -> the family's first program."""
    key = _norm(str(text))
    if key in DRUM_WORDS:
        return "DRUMS"
    if key.isdigit():
        return int(key) if 0 <= int(key) <= 127 else None
    return _BY_NAME.get(key)


def label_name(label: str, scheme: str = "program") -> str:
    """The name a person reads for an INST label: "DRUMS" -> "Drums", a program its GM name
    (under the gm-family scheme its family: "32" -> "Bass"), a voice title-cased."""
    if label == "DRUMS":
        return "Drums"
    if label.isdigit() and 0 <= int(label) < 128:
        return family_name(int(label)) if scheme == "gm-family" else GM_PROGRAMS[int(label)]
    return label.replace("_", " ").title()


def ordered_labels(labels_seen: tuple[str, ...] | list[str],
                   codec_labels: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A model's trained labels in its vocabulary's order, the one order every picker uses.

    Why not ``labels_seen`` as stored (most frequent first): that order changes with the
    data, so a controller mapped to "CC 21 value 4" would add another instrument after a
    retrain. Vocabulary order is fixed by the codec: the voices in their table order
    (SOPRANO, ALTO, TENOR, BASS), then DRUMS, then GM programs by number (for a gm-family
    model the families: piano, chromatic percussion, organ, guitar, bass, ...).
    """
    rank = {lab: i for i, lab in enumerate(codec_labels)}
    return tuple(sorted(dict.fromkeys(labels_seen), key=lambda lab: rank.get(lab, len(rank))))


def grouped_choices(labels: tuple[str, ...] | list[str],
                    scheme: str = "program") -> list[tuple[str, list[tuple[str, str]]]]:
    """(group heading, [(label, name)]) for a picker: voices under "Voices", DRUMS under
    "Drums", GM programs under their family (a gm-family label is its family, so each
    family holds one entry). Groups in the order of ``labels``."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for lab in labels:
        if lab == "DRUMS":
            head = "Drums"
        elif lab.isdigit() and 0 <= int(lab) < 128:
            head = family_name(int(lab))
        else:
            head = "Voices"
        groups.setdefault(head, []).append((lab, label_name(lab, scheme)))
    return list(groups.items())
