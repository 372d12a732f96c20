"""Saving, reading and resuming a run's checkpoints, with every rank of the job agreeing on
the run folder: which run this is, which checkpoint to resume from, and that they all see it.

Apart from the loop (`bandmate.training.train`) because this is where a run survives a
crash, a preemption or a node-local disk, and those rules are read and tested on their own
(tests/training/test_run_folder.py). The folder layout and its atomic writes are
`bandmate.training.run_folder`; this module adds the torch side (weights, optimizer, scaler) and
the cross-rank decisions. It imports nothing from the loop, so the loop depends on it and
not the other way round.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import IO

import torch
from bandmate.models.config import CodecConfig
from bandmate.training.hf_folder import WEIGHTS, write_hf_files
from bandmate.training.run_folder import (
    checkpoint_candidates,
    checkpoint_dir,
    checkpoint_step,
    exclusive_lock,
    mark_latest,
    read_json,
    write_json,
)
from bandmate.training.train_setup import Dist

# The logger of the loop these messages come from: its name, shown in every log line of
# `bandmate train`, stays what it was before this code moved out of train.py.
log = logging.getLogger("bandmate.training.train")


class RunFolderError(RuntimeError):
    """The run folder is not the same for every process of the job, or has no usable
    checkpoint: stopping with a message beats a job that hangs or forks its history."""


def save_checkpoint(
    run: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: dict,
    keep: int,
    codec: CodecConfig | None = None,
) -> Path:
    """model.safetensors (tied lm_head stored once), optim.safetensors, optim.json, the
    Hugging Face files (config, generation config, tokenizer), state.json; then every file
    and the folder are fsynced and ``latest`` moves (run_folder.mark_latest)."""
    from safetensors.torch import save_file

    ck = checkpoint_dir(run, state["step"])
    ck.mkdir(parents=True, exist_ok=True)
    (ck / "state.json").unlink(missing_ok=True)  # a stale folder of an abandoned future
    save_file(model_weights(model), str(ck / WEIGHTS), metadata={"format": "pt"})
    osd = opt.state_dict()
    tensors = {
        f"state.{pid}.{k}": v.detach().to("cpu").contiguous()
        for pid, st in osd["state"].items()
        for k, v in st.items()
        if torch.is_tensor(v)
    }
    save_file(tensors, str(ck / "optim.safetensors"))
    extra = {"param_groups": osd["param_groups"], "scaler": scaler.state_dict() if scaler else None}
    write_json(ck / "optim.json", extra)
    if codec is not None:
        write_hf_files(ck, model.config, codec)
    write_json(ck / "state.json", state)  # written last: its presence marks a complete one
    mark_latest(run, ck, keep)
    return ck


def model_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as save_pretrained stores it: on the CPU, tied lm_head left out."""
    return {
        k: v.detach().to("cpu").contiguous()
        for k, v in model.state_dict().items()
        if k != "lm_head.weight"
    }


def read_checkpoint(ck: Path, device: torch.device) -> dict:
    """Every file of a checkpoint read into memory; raises if any is missing or unreadable."""
    from safetensors.torch import load_file

    return {
        "model": load_file(str(ck / WEIGHTS), device=str(device)),
        "optim": load_file(str(ck / "optim.safetensors"), device=str(device)),
        "extra": read_json(ck / "optim.json"),
        "state": read_json(ck / "state.json"),
    }


def apply_checkpoint(
    payload: dict,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> dict:
    """Load what `read_checkpoint` read into the model, optimizer and scaler."""
    missing, unexpected = model.load_state_dict(payload["model"], strict=False)
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise ValueError(f"weights do not match the model (missing {missing}, extra {unexpected})")
    model.tie_weights()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in payload["optim"].items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for st in state.values():  # AdamW keeps `step` on the CPU unless fused/capturable
        if "step" in st and not (opt.defaults.get("fused") or opt.defaults.get("capturable")):
            st["step"] = st["step"].cpu()
    extra = payload["extra"]
    opt.load_state_dict({"state": state, "param_groups": extra["param_groups"]})
    if scaler is not None and extra.get("scaler"):
        scaler.load_state_dict(extra["scaler"])
    return dict(payload["state"])


def load_checkpoint(
    ck: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
) -> dict:
    """Read every file first, then load: a checkpoint that fails to read changes nothing."""
    return apply_checkpoint(read_checkpoint(ck, device), model, opt, scaler)


def resume_state(
    run: Path,
    dist: Dist,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> dict | None:
    """Rank 0 picks the checkpoint to resume from and every rank loads that one.

    Rank 0 tries ``latest`` and then older checkpoints, newest first, skipping (with a
    warning) any it cannot read completely; the chosen step is broadcast, so every rank
    resumes at the same step even when they would see different folders. A rank that cannot
    read the chosen checkpoint stops the whole job with a clear error. None: no checkpoint.
    """
    step = -1.0
    if dist.main:
        candidates = checkpoint_candidates(run)
        for ck in candidates:
            try:
                state = load_checkpoint(ck, model, opt, scaler, dist.device)
            except Exception as e:  # truncated file, bad JSON, missing file, wrong shapes
                log.warning(
                    "checkpoint %s cannot be read (%s: %s): trying the previous one",
                    ck,
                    type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "",
                )
                continue
            step = float(checkpoint_step(ck))
            if ck != candidates[0]:
                log.warning("resuming from %s, not the newest checkpoint", ck.name)
            break
        else:
            step = -2.0 if candidates else -1.0
    step = dist.from_main(step)
    if step == -2:
        raise RunFolderError(
            f"no checkpoint in {run}/checkpoints can be read (see the warnings above); "
            "start a new run, or restore the folder from a backup"
        )
    if step < 0:
        return None
    ck = checkpoint_dir(run, int(step))
    failed = 0.0
    if not dist.main:
        try:
            state = load_checkpoint(ck, model, opt, scaler, dist.device)
        except Exception as e:
            log.error("rank %d cannot read %s: %s", dist.rank, ck, e)
            failed = 1.0
    failed = dist.all_sum(failed)[0]
    if failed:
        raise RunFolderError(
            f"{int(failed)} of {dist.world} processes cannot read {ck}, which rank 0 resumes "
            "from: the run folder must be on a filesystem every node shares"
        )
    return state


def check_run_visible(run: Path, dist: Dist, attempts: int = 5) -> None:
    """Stop unless every rank sees the run folder rank 0 writes (RUN/job.json, a fresh nonce).

    Only rank 0 writes checkpoints; a node-local run folder would leave the other nodes
    without them, and a later resume would start the nodes at different steps (a hang).
    """
    if dist.world == 1:
        return
    import secrets

    nonce = float(secrets.randbits(48)) if dist.main else 0.0
    if dist.main:
        Path(run).mkdir(parents=True, exist_ok=True)
        write_json(
            Path(run) / "job.json",
            {"nonce": int(nonce), "world_size": dist.world, "started": time.time()},
        )
    nonce = dist.from_main(nonce)  # also orders every read after rank 0's write
    seen = None
    for k in range(attempts):  # a shared filesystem may show a new file a moment late
        try:
            seen = read_json(Path(run) / "job.json").get("nonce")
        except (OSError, ValueError):
            seen = None
        if seen == int(nonce):
            break
        time.sleep(0.2 * (k + 1))
    bad = dist.all_sum(float(seen != int(nonce)))[0]
    if bad:
        raise RunFolderError(
            f"{int(bad)} of {dist.world} processes do not see {Path(run) / 'job.json'} as "
            "rank 0 wrote it: the run folder must be on a filesystem every node shares "
            "(NFS, Lustre, ...), not a node-local disk"
        )


def save_final_model(run: Path, model: torch.nn.Module, codec: CodecConfig) -> None:
    """RUN/model.safetensors + the Hugging Face files: the run folder is the final model."""
    from safetensors.torch import save_file

    tmp = Path(run) / (WEIGHTS + ".tmp")
    save_file(model_weights(model), str(tmp), metadata={"format": "pt"})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, Path(run) / WEIGHTS)
    write_hf_files(run, model.config, codec)


def lock_run(run: Path) -> IO | None:
    """RUN/train.lock held for as long as the returned file stays open (`exclusive_lock`), so
    a second `bandmate train` on the same run folder (a --resume typed while the first one is
    still saving after Ctrl-C, say) is refused instead of trimming the log and overwriting
    checkpoints under it."""
    try:
        return exclusive_lock(run / "train.lock")
    except BlockingIOError:
        raise RunFolderError(
            f"another `bandmate train` is using {run}: wait for it to stop (a stopping run "
            "saves a checkpoint first), then resume; or choose another -o"
        ) from None


def decide_resume(run: Path, resume: bool | str, dist: Dist) -> tuple[bool, IO | None]:
    """Rank 0 decides whether this is a new run or a resumed one; every rank gets the answer
    (or the same error), so no rank reads its own disk to decide. Rank 0 also takes the run
    folder's lock (`lock_run`), returned for the caller to hold until the run ends."""
    code, err, lock = 0.0, None, None
    if dist.main:
        try:
            has_run = (run / "train_config.json").exists()
            if resume == "auto":
                resume = has_run
            if resume and not has_run:
                raise FileNotFoundError(f"{run} is not a run folder: start it without --resume")
            run.mkdir(parents=True, exist_ok=True)
            lock = lock_run(run)
            if not resume and (run / "checkpoints").exists() and checkpoint_candidates(run):
                raise FileExistsError(
                    f"{run} already holds a run: pass --resume, or choose a new -o"
                )
            code = 1.0 if resume else 0.0
        except (FileNotFoundError, FileExistsError, RunFolderError) as e:
            code, err = -1.0, e
            if lock is not None:
                lock.close()
                lock = None
    code = dist.from_main(code)
    if code < 0:
        raise err or RunFolderError("rank 0 could not start the run (see its error)")
    check_run_visible(run, dist)
    return code > 0, lock


def trim_log(path: Path, step: int) -> None:
    """Drop log lines after the checkpoint a run resumes from (they will be redone)."""
    if not path.exists():
        return
    keep = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step
    ]
    path.write_text("".join(ln + "\n" for ln in keep))
