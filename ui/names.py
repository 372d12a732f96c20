"""Human names for the model's INST labels, because composers think "Fretless Bass", not "35".

Voice labels (SOPRANO, BASS) are title-cased, DRUMS is "Drums", and General MIDI program
numbers get their GM Level 1 names (programs counted from 0, as the token format does).
"""

from __future__ import annotations

from bandmate.models.instruments import GM_FAMILIES, GM_PROGRAMS  # noqa: F401 (re-exported)


def instrument_name(label: str) -> str:
    """The name a person reads for an INST label: "BASS" -> "Bass", "33" -> GM name."""
    if label == "DRUMS":
        return "Drums"
    if label.isdigit() and 0 <= int(label) < 128:
        return GM_PROGRAMS[int(label)]
    return label.replace("_", " ").title()


def instrument_choices(labels_seen: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """(label, human name) pairs for the Add-track picker, in the model's order.

    The model lists the labels it saw in training most frequent first; offering labels it never
    saw would only produce noise, so those are the choices.
    """
    out: list[tuple[str, str]] = []
    for label in labels_seen:
        if all(label != seen for seen, _ in out):
            out.append((label, instrument_name(label)))
    return out
