"""Checkpoint averaging for `bandmate export --average K`: the element-wise mean of the weights
of a run's K newest checkpoints up to the one exported.

Late in a run successive checkpoints differ by the noise of their last batches; their mean is a
smoother model (as in Vaswani et al. 2017). Only safetensors are read.
"""

from __future__ import annotations

from pathlib import Path

import torch
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


def average_into(model: torch.nn.Module, folders: list[Path]) -> torch.nn.Module:
    """Load the element-wise mean of the folders' weights into ``model``.

    Why: late in a run, successive checkpoints differ by the noise of their last batches;
    their mean is a smoother model (checkpoint averaging, as in Vaswani et al. 2017), and on
    the band model a single checkpoint's drum style flips from one save to the next.
    """
    from safetensors.torch import load_file

    total: dict[str, torch.Tensor] = {}
    for folder in folders:
        for key, t in load_file(str(Path(folder) / "model.safetensors")).items():
            total[key] = total[key] + t.float() if key in total else t.float().clone()
    mean = {key: t / len(folders) for key, t in total.items()}
    missing, unexpected = model.load_state_dict(mean, strict=False)
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise ValueError(f"{folders[0]}: checkpoints do not match the model ({missing}, "
                         f"{unexpected})")  # fmt: skip
    model.tie_weights()
    return model
