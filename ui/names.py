"""Human names for the model's INST labels, because composers think "Fretless Bass", not "35".

Voice labels (SOPRANO, BASS) are title-cased, DRUMS is "Drums", and General MIDI program
numbers get their GM Level 1 names (programs counted from 0, as the token format does).
"""

from __future__ import annotations

from bandmate.models.instruments import GM_FAMILIES, GM_PROGRAMS, grouped_choices, label_name

__all__ = ["GM_FAMILIES", "GM_PROGRAMS", "add_button_text", "instrument_choices",
           "instrument_groups", "instrument_name"]


def instrument_name(label: str, scheme: str = "program") -> str:
    """The name a person reads for an INST label: "BASS" -> "Bass", "33" -> GM name (a
    gm-family model's "32" -> the family, "Bass")."""
    return label_name(label, scheme)


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


def instrument_groups(labels: list[str] | tuple[str, ...],
                      scheme: str = "program") -> list[tuple[str, list[tuple[str, str]]]]:
    """(heading, [(label, name)]) for the Instrument picker: the model's add-track labels
    (vocabulary order) grouped as a composer looks for them: voices, Drums, GM families.
    A gm-family model's labels are families, named as such ("32" -> "Bass")."""
    return grouped_choices(list(dict.fromkeys(labels)), scheme)


def add_button_text(label: str, name: str) -> str:
    """"Add Bass track", but "Add Drums": drums are a kit, not a track of one instrument."""
    if label == "DRUMS":
        return "Add Drums"
    return f"Add {name or label_name(label)} track"
