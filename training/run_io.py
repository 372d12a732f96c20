"""The layout of a training run folder, shared by ``bandmate train`` and ``bandmate export``.

A run folder is self-describing so that export (or a resumed run on another machine) needs
nothing else::

    RUN/train_config.json      the TrainConfig that made it
    RUN/model_config.json      the GPT2Config (Hugging Face JSON)
    RUN/codec.json             the codec config of the data (density edges filled in)
    RUN/tokenizer.json         the vocabulary
    RUN/data_summary.json      what the data held (samples, tokens, labels by frequency)
    RUN/log.jsonl              one JSON line per logged step / evaluation
    RUN/tb/                    TensorBoard event files
    RUN/checkpoints/step-000123/{model.safetensors, optim.safetensors, state.json}
    RUN/checkpoints/latest     the name of the newest complete checkpoint

No pickles: weights and optimizer tensors are safetensors, everything else JSON. A checkpoint
becomes visible only once ``latest`` is rewritten (atomic rename), so a run killed while
writing one resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

CKPT_DIR = "checkpoints"
LATEST = "latest"


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename) so a kill never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def checkpoint_dir(run: Path, step: int) -> Path:
    return Path(run) / CKPT_DIR / f"step-{step:07d}"


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none yet."""
    pointer = Path(run) / CKPT_DIR / LATEST
    if not pointer.exists():
        return None
    d = Path(run) / CKPT_DIR / pointer.read_text().strip()
    return d if (d / "state.json").exists() else None


def mark_latest(run: Path, ckpt: Path, keep: int = 2) -> None:
    """Point ``latest`` at ``ckpt`` and delete all but the ``keep`` newest checkpoints."""
    root = Path(run) / CKPT_DIR
    tmp = root / (LATEST + ".tmp")
    tmp.write_text(ckpt.name + "\n")
    os.replace(tmp, root / LATEST)
    olds = sorted(p for p in root.glob("step-*") if p.is_dir() and p != ckpt)
    for p in olds[: max(len(olds) - (keep - 1), 0)]:
        shutil.rmtree(p, ignore_errors=True)
