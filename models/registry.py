"""Shipped models by name: ``--model default``, ``--model band``, ``bandmate models``.

A shipped model is a folder under the package's models/ (``bandmate.models``) holding a
``bandmate.json``. The registry only reads JSON and file sizes: listing never opens ONNX.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

from bandmate.models.config import CodecConfig
from bandmate.models.instruments import ordered_labels

#: name -> (folder under models/, what it is for); in the order `bandmate models` lists them.
SHIPPED: dict[str, tuple[str, str]] = {
    "default": ("default", "four-part chorales (SOPRANO, ALTO, TENOR, BASS)"),
    "band": ("band", "General MIDI band material: adds bass, drums, any GM family"),
}
#: The help text of every ``--model`` option.
MODEL_HELP = (
    "a shipped model by name (" + ", ".join(SHIPPED) + "; 'bandmate models' lists them) "
    "or a model folder made by 'bandmate export'"
)


class UnknownModel(ValueError):
    """A name that is neither a shipped model here nor a model folder."""


@dataclass(frozen=True)
class ShippedModel:
    name: str
    path: Path
    purpose: str
    label_scheme: str
    labels: tuple[str, ...]  # Add-track labels in vocabulary order (ModelDescription.add_labels)
    size_bytes: int
    title: str  # the model card's first heading, or the folder's model name


def models_root() -> Path:
    from bandmate import models

    return Path(models.__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    return models_root() / SHIPPED[name][0]


def installed() -> list[str]:
    """Names of the shipped models present in this installation."""
    return [n for n in SHIPPED if (shipped_dir(n) / "bandmate.json").is_file()]


def resolve_model(value: str | Path | None) -> Path | None:
    """A ``--model`` value as a folder: None stays None (the caller's default), a shipped
    name is its folder, anything else a path. Raises UnknownModel for a shipped name that
    is not installed, or a word that is neither a name nor an existing path."""
    if value is None:
        return None
    text = str(value)
    if text in SHIPPED:
        folder = shipped_dir(text)
        if not (folder / "bandmate.json").is_file():
            have = ", ".join(installed()) or "none"
            raise UnknownModel(
                f"the shipped model {text!r} is not in this installation ({folder} has no "
                f"bandmate.json); installed: {have}"
            )
        return folder
    path = Path(text).expanduser()
    if not path.exists() and "/" not in text and "\\" not in text and not text.startswith("."):
        raise UnknownModel(
            f"no model {text!r}: use a shipped model ({', '.join(installed())}) "
            "or the path of a model folder"
        )
    return path


def describe(name: str) -> ShippedModel:
    folder = shipped_dir(name)
    meta = json.loads((folder / "bandmate.json").read_text())
    codec = meta.get("codec", {})
    seen = tuple(meta.get("labels_seen") or codec.get("voices") or ())
    try:
        labels = ordered_labels(seen, CodecConfig.from_json(codec).labels)
    except (TypeError, ValueError):  # a codec this version cannot read: the stored order
        labels = seen
    title = str(meta.get("name") or name)
    card = folder / "MODEL_CARD.md"
    if card.is_file():
        for line in card.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                title = line[2:].strip()
                break
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return ShippedModel(
        name,
        folder,
        SHIPPED[name][1],
        str(codec.get("label_scheme", "program")),
        labels,
        size,
        title,
    )


def help_lines() -> list[str]:
    """One line per shipped model for ``bandmate --help`` (installed or not)."""
    have = set(installed())
    return [
        f"  {n:<8} {purpose}{'' if n in have else ' (not installed)'}"
        for n, (_, purpose) in SHIPPED.items()
    ]


def _labels_text(labels: tuple[str, ...], scheme: str) -> str:
    """Numbered as ``bandmate jam``'s CC 21 value picks them: "1 Soprano, 2 Alto, ..."."""
    from bandmate.models.instruments import label_name

    return ", ".join(f"{i} {label_name(lab, scheme)}" for i, lab in enumerate(labels, 1))


def format_table() -> str:
    rows = []
    for n in SHIPPED:
        if n not in installed():
            rows.append(f"{n:<8}  (not installed: {shipped_dir(n)} has no bandmate.json)")
            continue
        m = describe(n)
        labels = _labels_text(m.labels, m.label_scheme) or "-"
        rows.append(
            f"{m.name:<8}  {m.title}\n"
            + textwrap.fill(f"add-track labels ({m.label_scheme}; jam's CC 21 value): {labels}",
                            width=92, initial_indent=" " * 10, subsequent_indent=" " * 12)
            + "\n"
            f"          {m.size_bytes / 1e6:.1f} MB  {m.path}"
        )
    return "\n".join(rows)


# ------------------------------------------------------------------ `bandmate models`


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the list as JSON")


def run(args: argparse.Namespace) -> int:
    if args.json:
        out = []
        for n in installed():
            m = describe(n)
            out.append({
                "name": m.name, "title": m.title, "path": str(m.path),
                "label_scheme": m.label_scheme, "labels": list(m.labels),
                "size_bytes": m.size_bytes,
            })  # fmt: skip
        print(json.dumps(out, indent=1))
        return 0
    print(format_table())
    return 0
