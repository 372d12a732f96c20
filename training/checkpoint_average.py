"""Checkpoint averaging for `bandmate export --average K`: the element-wise mean of the weights
of a run's K newest checkpoints up to the one exported.

Late in a run successive checkpoints differ by the noise of their last batches; their mean is a
smoother model (as in Vaswani et al. 2017); on the band model a single checkpoint's drum style
flips from one save to the next. Only safetensors are read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from bandmate.training.hf_folder import WEIGHTS
from bandmate.training.run_folder import checkpoint_candidates, checkpoint_step


def averaged_checkpoints(run: Path | None, ckpt: Path, k: int) -> list[Path]:
    """The ``k`` newest complete checkpoints of ``run`` up to ``ckpt`` (included), oldest
    first: what ``bandmate export --average k`` takes the mean of."""
    if k < 1:
        raise ValueError(f"--average takes the number of checkpoints (1 or more), got {k}")
    if k == 1:
        return [ckpt]
    if run is None:
        raise ValueError(f"--average {k} needs a run folder or one of its checkpoints, "
                         f"not a model folder ({ckpt})")  # fmt: skip
    last = checkpoint_step(ckpt)
    older = [c for c in checkpoint_candidates(run) if checkpoint_step(c) < last]
    if len(older) < k - 1:
        raise ValueError(
            f"--average {k}: {run} has {len(older) + 1} complete checkpoint(s) up to step "
            f"{last}; average fewer, or keep more with `bandmate train --keep-checkpoints`"
        )
    return [*sorted(older[: k - 1], key=checkpoint_step), ckpt]


def mean_weights(folders: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise float32 mean of the folders' weights (for `export.load_weights`)."""
    from safetensors.torch import load_file

    total: dict[str, torch.Tensor] = {}
    for folder in folders:
        for key, t in load_file(str(Path(folder) / WEIGHTS)).items():
            total[key] = total[key] + t.float() if key in total else t.float().clone()
    return {key: t / len(folders) for key, t in total.items()}
