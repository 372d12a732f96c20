"""What a model folder says it can do, checked before any work: fills, labels it trained on.

Why: a model asked for an instrument it never saw (drums from the chorale model) writes
nonsense without complaint, and `--infill` on a model without fills used to fail only after
loading. `bandmate.json` says both (``fills``, ``labels_seen``), so the CLI and the app ask it
first and say what the model can do instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from bandmate.models.midi_merge import summarise


def read_model_meta(folder: Path | str | None) -> dict:
    """``bandmate.json`` of a model folder (None: the shipped model), or {} when missing or
    unreadable (loading the model then says why)."""
    from bandmate.models.session import default_model_dir

    path = Path(folder) if folder is not None else default_model_dir()
    try:
        return json.loads((path / "bandmate.json").read_text())
    except (OSError, ValueError):
        return {}


def shipped_models_with(label: str) -> list[str]:
    """Names of the models shipped in the package that trained on ``label``."""
    from bandmate.models.session import default_model_dir

    root = default_model_dir().parent
    out = []
    for meta_path in sorted(root.glob("*/bandmate.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if label in (meta.get("labels_seen") or ()):
            out.append(str(meta.get("name") or meta_path.parent.name))
    return out


def unseen_label_message(model: str, label: str, seen: Sequence[str]) -> str:
    """Why a label is refused, what the model knows, and which shipped model has it."""
    others = [m for m in shipped_models_with(label) if m != model]
    where = f"; shipped model(s) trained on it: {', '.join(others)}" if others else ""
    return (
        f"model {model} never trained on {label}, so it would write nonsense for it: it "
        f"knows {summarise(list(seen), 12, ', ')}{where}. Pick one of those, another model "
        "(--model DIR), or --force to try anyway"
    )


def check_can_infill(meta: dict, model: str) -> None:
    """Raise ValueError when the model folder says it cannot infill."""
    if meta and not meta.get("fills", False):
        raise ValueError(
            f"model {model} was trained without fills, so it cannot --infill: use --continue "
            "or --add-track, or a model exported from a run prepared with fills"
        )
