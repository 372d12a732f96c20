"""The layout of a training run folder, shared by ``bandmate train`` and ``bandmate export``.

A run folder is self-describing so that export (or a resumed run on another machine) needs
nothing else::

    RUN/train_config.json      the TrainConfig that made it
    RUN/model_config.json      the GPT2Config (Hugging Face JSON; kept for older readers)
    RUN/codec.json             the codec config of the data (density edges filled in)
    RUN/tokenizer.json         the vocabulary (+ tokenizer_config.json for AutoTokenizer)
    RUN/data_summary.json      what the data held (samples, tokens, labels by frequency)
    RUN/job.json               written by rank 0 at every start: every rank checks it sees it
    RUN/log.jsonl              one JSON line per logged step / evaluation
    RUN/tb/                    TensorBoard event files
    RUN/checkpoints/step-0000123/
        model.safetensors      the weights (tied lm_head stored once, as save_pretrained does)
        optim.safetensors      AdamW moments; optim.json: param groups, loss scaler
        state.json             step, tokens, val loss (written last)
        config.json, generation_config.json, tokenizer.json, tokenizer_config.json, codec.json
                               so that the folder is a Hugging Face model folder as it is
    RUN/checkpoints/latest     the name of the newest complete checkpoint
    RUN/{config.json, generation_config.json, model.safetensors}   the final model, at the end

Runs written before the Hugging Face files existed (model_config.json only, checkpoints with
the four training files) resume and export unchanged.

No pickles: weights and optimizer tensors are safetensors, everything else JSON. Crash
safety: every file of a checkpoint and the checkpoint folder itself are fsynced before
``latest`` moves; ``latest`` is replaced atomically (temp file, fsync, rename, fsync of the
folder). A checkpoint that still cannot be read (a disk that lied, a copy cut short) is
skipped on resume with a warning, for the previous one (`checkpoint_candidates`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
LATEST = "latest"
PREFIX = "step-"


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes the names in it durable)."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the rename still happened
        if not Path(path).is_dir():
            raise
    finally:
        os.close(fd)


def exclusive_lock(path: Path) -> IO | None:
    """An exclusive lock on ``path`` for as long as the returned file stays open (None where
    there are no advisory locks: Windows); BlockingIOError when another process holds it.
    Shared by `bandmate prepare` (OUT/.work/lock) and `bandmate train` (RUN/train.lock), so
    two runs never write one folder at once.

    A POSIX record lock (`lockf`), not `flock`: it belongs to this process only, so forked
    workers do not inherit it and a killed run frees it at once, even while its orphaned
    workers are still exiting.
    """
    try:
        import fcntl
    except ImportError:  # Windows: running twice is the user's call
        return None
    fh = open(path, "a")  # noqa: SIM115 (kept open: the lock lives with it)
    try:
        fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        fh.close()
        raise BlockingIOError(f"{path} is locked by another process") from e
    return fh


def write_text_durable(path: Path, text: str) -> None:
    """Write a text file atomically and durably: temp file, fsync, rename, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically and durably so a kill or a crash never leaves half a file."""
    write_text_durable(Path(path), json.dumps(obj, indent=1) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def checkpoint_dir(run: Path, step: int) -> Path:
    return Path(run) / CKPT_DIR / f"{PREFIX}{step:07d}"


def checkpoint_step(ckpt: Path) -> int:
    """The step of a checkpoint folder named step-NNNNNNN (ValueError for any other name)."""
    name = Path(ckpt).name
    if not name.startswith(PREFIX):
        raise ValueError(f"{ckpt} is not a checkpoint folder (step-NNNNNNN)")
    return int(name[len(PREFIX) :])


def _steps(root: Path) -> list[Path]:
    out = []
    for p in root.glob(PREFIX + "*"):
        try:
            checkpoint_step(p)
        except ValueError:
            continue
        if p.is_dir():
            out.append(p)
    return sorted(out, key=checkpoint_step)


def latest_checkpoint(run: Path) -> Path | None:
    """The checkpoint ``latest`` points at, or None when it has none yet (or it is gone)."""
    pointer = Path(run) / CKPT_DIR / LATEST
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    if not name:
        return None
    d = Path(run) / CKPT_DIR / name
    return d if (d / "state.json").exists() else None


def checkpoint_candidates(run: Path) -> list[Path]:
    """The checkpoints to try on resume, best first: the one ``latest`` names, then every
    older complete one (state.json present), newest first.

    Folders newer than ``latest`` are left out: they were never marked complete.
    """
    root = Path(run) / CKPT_DIR
    if not root.is_dir():
        return []
    first = latest_checkpoint(run)
    limit = checkpoint_step(first) if first is not None else None
    rest = [
        p
        for p in reversed(_steps(root))
        if (p / "state.json").exists()
        and p != first
        and (limit is None or checkpoint_step(p) < limit)
    ]
    return ([first] if first is not None else []) + rest


def mark_latest(run: Path, ckpt: Path, keep: int = 2) -> None:
    """Make ``ckpt`` durable, point ``latest`` at it, and delete all but the ``keep`` newest
    checkpoints (and any stale folder of a later step, left by a run that resumed earlier)."""
    root = Path(run) / CKPT_DIR
    for f in Path(ckpt).iterdir():
        if f.is_file():
            fsync_path(f)
    fsync_path(ckpt)
    fsync_path(root)
    write_text_durable(root / LATEST, ckpt.name + "\n")
    step = checkpoint_step(ckpt)
    olds = [p for p in _steps(root) if p != ckpt]
    stale = [p for p in olds if checkpoint_step(p) > step]
    olds = [p for p in olds if checkpoint_step(p) < step]
    for p in stale + olds[: max(len(olds) - (keep - 1), 0)]:
        shutil.rmtree(p, ignore_errors=True)
