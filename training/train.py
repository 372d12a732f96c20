"""Train a Hugging Face GPT-2 on prepared mmmtrack shards, on one CPU or many GPUs.

A plain PyTorch loop rather than HF ``Trainer``: the loop is ~300 lines we can read, and it
gives exact control over what the issue asks for and Trainer hides or makes awkward:
block packing with a resumable, rank-independent data order, token-weighted loss across
gradient accumulation and ranks, tokens/s and Megatron-formula TFLOP/s measured around the
step itself, loop-overhead accounting, safetensors-only checkpoints (no pickled optimizer or
RNG state), and the same code path for 1 process and a torchrun job of N GPUs on M nodes.

Precision: bf16 autocast where the GPU has bf16 (A100, H100), fp16 autocast with a
GradScaler where it does not (V100: a DGX-2), fp32 on the CPU. Attention: SDPA (flash /
memory-efficient kernels on GPU). Optimizer: AdamW (fused on CUDA), linear warmup then cosine
decay to ``min_lr_ratio * lr``. Validation loss every ``eval_every`` steps. TensorBoard
scalars under RUN/tb, one JSON line per event in RUN/log.jsonl.

Resuming: the data order is a pure function of (seed, epoch) and dropout is re-seeded from
(seed, step, rank) every step, so a run killed at any point and resumed from its latest
checkpoint computes the same steps as one that was never interrupted.

This module is the loop; what a run is before its first step (config, schedule, precision,
model) lives in `bandmate.training.train_setup`, and its checkpoints and the ranks'
agreement on the run folder in `bandmate.training.train_checkpoint`. Their public names are
re-exported here (``__all__``), the import path the CLI, tests and benchmarks use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from bandmate.models.config import CodecConfig
from bandmate.training import data as D
from bandmate.training.flops import flops_per_token, peak_tflops
from bandmate.training.hf_folder import write_hf_files
from bandmate.training.run_folder import read_json, write_json
from bandmate.training.train_checkpoint import (
    RunFolderError,
    apply_checkpoint,
    check_run_visible,
    decide_resume,
    load_checkpoint,
    model_weights,
    read_checkpoint,
    resume_state,
    save_checkpoint,
    save_final_model,
    trim_log,
)
from bandmate.training.train_setup import (
    ATTENTION,
    PRECISIONS,
    PRESETS,
    Dist,
    TrainConfig,
    build_model,
    cpu_has_bf16,
    lr_at,
    resolve_precision,
    setup_dist,
)
from bandmate.training.warm_start import load_init_weights

__all__ = [
    "ATTENTION",
    "PRECISIONS",
    "PRESETS",
    "Dist",
    "RunFolderError",
    "Timers",
    "TrainConfig",
    "apply_checkpoint",
    "build_model",
    "check_run_visible",
    "cpu_has_bf16",
    "load_checkpoint",
    "lr_at",
    "model_weights",
    "read_checkpoint",
    "resolve_precision",
    "resume_state",
    "save_checkpoint",
    "save_final_model",
    "setup_dist",
    "train",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the run


class Timers:
    """Wall time per phase of the loop, to report the loop's own overhead."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0


def _data_summary(data_dir: Path, train, val, codec: CodecConfig, packed) -> dict:
    manifest = (
        read_json(data_dir / "manifest.json") if (data_dir / "manifest.json").exists() else {}
    )
    labels = D.label_counts(train, codec.vocab.inst0, codec.labels)
    return {
        "data_dir": str(data_dir.resolve()),
        "train_samples": len(train),
        "val_samples": len(val),
        "train_tokens": int(packed.lengths.sum()),
        "truncated_samples": packed.truncated,
        "blocks_per_epoch": len(packed.blocks(0)),
        "labels": [lab for lab, _ in labels],
        "label_counts": dict(labels),
        "unigram_val_loss": D.unigram_loss(train, val, codec.vocab.size),
        "manifest": {k: manifest[k] for k in ("counts", "config", "sources") if k in manifest},
    }


#: What a resumed run takes from the command line (the rest is the run's saved config).
RESUMABLE = ("max_steps", "time_limit_min", "eval_every", "log_every", "save_every")


def _resumed_config(saved: TrainConfig, cfg: TrainConfig, given: Collection[str] | None,
                    warn: bool = True) -> TrainConfig:
    """The saved config with the given RESUMABLE settings of ``cfg`` on top."""
    default = TrainConfig()
    if given is None:
        given = [k for k in RESUMABLE if getattr(cfg, k) != getattr(default, k)]
    overrides = {k: getattr(cfg, k) for k in given if k in RESUMABLE}
    ignored = sorted(k for k in given if k not in RESUMABLE and k in saved.__dataclass_fields__
                     and getattr(cfg, k) != getattr(saved, k))  # fmt: skip
    if ignored and warn:
        log.warning(
            "resuming: the run keeps its own %s; ignored %s (only %s change on --resume; "
            "start a new run folder to change the others)",
            ", ".join(f"{k}={getattr(saved, k)!r}" for k in ignored),
            ", ".join(f"--{k.replace('_', '-')} {getattr(cfg, k)!r}" for k in ignored),
            ", ".join("--" + k.replace("_", "-") for k in RESUMABLE),
        )
    return TrainConfig.from_json({**asdict(saved), **overrides})


def train(
    data_dir: str | Path,
    run: str | Path,
    cfg: TrainConfig,
    resume: bool | str = False,
    device: str = "auto",
    progress: bool = True,
    given: Collection[str] | None = None,
) -> dict:
    """Train (or resume) a run; returns the summary also written to RUN/summary.json.

    ``resume``: True continues the run in ``run``, False starts a new one, "auto" resumes
    when ``run`` holds a run (decided by rank 0 for every rank: launchers pass it on every
    restart). A resumed run keeps its saved config except `RESUMABLE` settings the user
    ``given`` (the names set on the command line; None: those that differ from the
    defaults), so a flag equal to its default still applies; other given settings that
    differ from the run's are named in a warning, never silently dropped.
    """
    data_dir, run = Path(data_dir), Path(run)
    dist = setup_dist(device)
    resume, _run_lock = decide_resume(run, resume, dist)  # the lock is held until we return
    if resume:
        saved = TrainConfig.from_json(read_json(run / "train_config.json"))
        cfg = _resumed_config(saved, cfg, given, warn=dist.rank == 0)

    manifest_codec = data_dir / "manifest.json"
    if not manifest_codec.exists():
        raise FileNotFoundError(f"{data_dir}/manifest.json missing: run `bandmate prepare` first")
    codec = CodecConfig.from_json(read_json(manifest_codec)["codec"])
    vocab = codec.vocab
    train_split, val_split = D.open_data(data_dir, "train"), D.open_data(data_dir, "val")
    packed = D.PackedEpochs(
        train_split,
        cfg.n_positions,
        cfg.batch_size,
        cfg.grad_accum,
        dist.world,
        dist.rank,
        cfg.seed,
        reorder=cfg.reorder,
    )
    val_packed = D.PackedEpochs(
        val_split,
        cfg.n_positions,
        cfg.batch_size,
        1,
        dist.world,
        dist.rank,
        cfg.seed,
        shuffle=False,
    )
    spe = packed.steps_per_epoch()
    if spe == 0:
        raise ValueError(
            f"{len(packed.blocks(0))} blocks < one step's {packed.per_step}: lower --batch-size "
            "or --grad-accum, or prepare more data"
        )
    total = cfg.max_steps or max(int(cfg.epochs * spe), 1)
    precision = resolve_precision(cfg.precision, dist.device)

    model = build_model(cfg, vocab.size).to(dist.device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    cuda = dist.device.type == "cuda"
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, cfg.beta2),
        eps=1e-8,
        fused=cuda or None,
    )
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    state = {"step": 0, "tokens_seen": 0, "real_tokens_seen": 0, "val_loss": None}
    resumed = resume_state(run, dist, model, opt, scaler) if resume else None
    if resumed is not None:
        state = resumed
        log.info("resumed from step %d", state["step"])
    else:
        if resume:
            log.info("no checkpoint in %s yet: starting from step 0", run)
        if cfg.init_from:  # every rank reads the same weights: no broadcast needed
            source = load_init_weights(model, cfg.init_from, codec)
            if dist.main:
                log.info("starting from the weights of %s", source)
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / "train_config.json", cfg.to_json())
        write_json(run / "model_config.json", model.config.to_dict())
        write_hf_files(run, model.config, codec)  # + RUN/model.safetensors when finished
        if not (run / "data_summary.json").exists():
            write_json(
                run / "data_summary.json",
                _data_summary(data_dir, train_split, val_split, codec, packed),
            )
        trim_log(run / "log.jsonl", state["step"])
    summary_data = read_json(run / "data_summary.json") if dist.main else {}

    fwd_model: torch.nn.Module = model
    if cfg.compile:
        fwd_model = torch.compile(model)
    eval_model = fwd_model  # validation needs no DDP: ranks may run unequal numbers of batches
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd_model = DDP(fwd_model, device_ids=[dist.local_rank] if cuda else None)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(dist.device.type, dtype=amp_dtype)

    def loss_sum(ids: torch.Tensor, net: torch.nn.Module | None = None) -> torch.Tensor:
        labels = torch.where(ids == 0, D.IGNORE, ids)[:, 1:]
        with autocast():
            logits = (fwd_model if net is None else net)(input_ids=ids).logits[:, :-1]
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=D.IGNORE,
            reduction="sum",
        )
        return loss

    def to_dev(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        return t.pin_memory().to(dist.device, non_blocking=True) if cuda else t

    val_blocks = val_packed.blocks(0)
    # The first eval_batches x batch_size val blocks of the whole job, shared by the ranks.
    val_plan = D.eval_blocks(
        len(val_blocks), cfg.eval_batches, cfg.batch_size, dist.world, dist.rank
    )

    @torch.no_grad()
    def evaluate() -> float:
        fwd_model.eval()
        tot = cnt = 0.0
        for mb in val_plan:
            ids = np.stack(
                [D.build_block(val_split, val_blocks[int(b)], cfg.n_positions) for b in mb]
            )
            ls = loss_sum(to_dev(ids), eval_model)
            tot, cnt = tot + float(ls), cnt + int((ids[:, 1:] != 0).sum())
        tot, cnt = dist.all_sum(tot, cnt)
        fwd_model.train()
        return tot / max(cnt, 1)

    writer = None
    if dist.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb"), purge_step=state["step"] or None)
    fpt = flops_per_token(cfg.n_layer, cfg.n_embd, cfg.n_positions, vocab.size)
    fpt_eq3 = flops_per_token(cfg.n_layer, cfg.n_embd, cfg.n_positions, vocab.size, True)
    dev_name = torch.cuda.get_device_name(dist.device) if cuda else "cpu"
    peak = cfg.peak_tflops or peak_tflops(dev_name, precision)
    tokens_per_step = packed.per_step * cfg.n_positions
    if dist.main:
        log.info(
            "model %d layers x %d heads x %d, %.2fM params, block %d, %d tokens/step, "
            "%d steps (%.2f epochs of %d steps), %s on %s x%d, peak %s TFLOP/s",
            cfg.n_layer,
            cfg.n_head,
            cfg.n_embd,
            sum(p.numel() for p in model.parameters()) / 1e6,
            cfg.n_positions,
            tokens_per_step,
            total,
            total / spe,
            spe,
            precision,
            dev_name,
            dist.world,
            peak or "unknown",
        )

    stop = {"signal": None}

    def on_signal(signum, _frame):  # SLURM preemption / time limit / Ctrl-C: save, then stop
        if signum == signal.SIGINT and stop["signal"] == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        stop["signal"] = signum

    old_handlers = {}
    for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread
            old_handlers[s] = signal.signal(s, on_signal)

    timers = Timers()
    window = {"t": time.perf_counter(), "tokens": 0, "steps": 0, "loss": 0.0, "n": 0.0}
    t_start = time.perf_counter()
    pbar = None
    if dist.main and progress:
        from tqdm import tqdm

        pbar = tqdm(total=total, initial=state["step"], unit="step", dynamic_ncols=True)
    fwd_model.train()
    last_logged: dict[str, Any] = {}
    try:
        while state["step"] < total:
            step = state["step"]
            epoch, k = divmod(step, spe)
            torch.manual_seed(cfg.seed * 1_000_003 + step * dist.world + dist.rank)
            lr = lr_at(step, total, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            with timers("data"):
                batches = packed.step_batches(epoch, k)
                tensors = [to_dev(ids) for ids, _ in batches]
                n_local = sum(int((ids[:, 1:] != 0).sum()) for ids, _ in batches)
                n_global = packed.step_targets(epoch, k)
            with timers("compute"):
                step_loss = torch.zeros((), device=dist.device)
                for j, ids in enumerate(tensors):
                    sync = j == len(tensors) - 1 or dist.world == 1
                    ctx = contextlib.nullcontext() if sync else fwd_model.no_sync()
                    with ctx:
                        ls = loss_sum(ids)
                        loss = ls * (dist.world / n_global)
                        (scaler.scale(loss) if scaler else loss).backward()
                    step_loss += ls.detach()  # stays on the device: no sync per step
                if scaler:
                    scaler.unscale_(opt)
                gnorm = (
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    if cfg.grad_clip
                    else torch.tensor(0.0)
                )
                if scaler:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                opt.zero_grad(set_to_none=True)
            state["step"] = step + 1
            state["tokens_seen"] += tokens_per_step
            state["real_tokens_seen"] += int(n_global)
            window["tokens"] += tokens_per_step
            window["steps"] += 1
            window["loss"] = window["loss"] + step_loss
            window["n"] += n_local
            window["real"] = window.get("real", 0) + int(n_global)
            if pbar:
                pbar.update(1)

            with timers("log"):
                if state["step"] % cfg.log_every == 0 or state["step"] == total:
                    if cuda:
                        torch.cuda.synchronize()
                    now = time.perf_counter()
                    dt = now - window["t"]
                    tot_loss, tot_n = dist.all_sum(float(window["loss"]), window["n"])
                    if not math.isfinite(tot_loss):
                        raise FloatingPointError(
                            f"loss is {tot_loss} before step {state['step']}: lower --lr "
                            "(or use bf16/fp32 if fp16 overflows)"
                        )
                    tps = window["tokens"] / dt
                    real_tps = window.get("real", 0) / dt
                    rec = {
                        "event": "train",
                        "step": state["step"],
                        "epoch": epoch,
                        "loss": tot_loss / max(tot_n, 1),
                        "lr": lr,
                        "grad_norm": float(gnorm),
                        "tokens_per_s": tps,
                        "real_tokens_per_s": real_tps,
                        "tokens_seen": state["tokens_seen"],
                        "real_tokens_seen": state["real_tokens_seen"],
                        "model_tflops": tps * fpt / 1e12,
                        "megatron_eq3_tflops": tps * fpt_eq3 / 1e12,
                        "mfu": (tps * fpt / 1e12 / (peak * dist.world)) if peak else None,
                        "step_time_s": dt / window["steps"],
                        "batch": D.fingerprint([s for _, s in batches]),
                    }
                    last_logged = rec
                    if dist.main:
                        _log_line(run, writer, rec)
                        if pbar:
                            pbar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{tps:,.0f}")
                    window.update(t=time.perf_counter(), tokens=0, steps=0, loss=0.0, n=0.0, real=0)
            done = state["step"] == total
            if state["step"] % cfg.eval_every == 0 or done:
                t_eval = time.perf_counter()
                with timers("eval"):
                    state["val_loss"] = evaluate()
                if dist.main:
                    _log_line(
                        run,
                        writer,
                        {"event": "val", "step": state["step"], "val_loss": state["val_loss"]},
                    )
                window["t"] += time.perf_counter() - t_eval  # throughput excludes validation
            over_time = bool(cfg.time_limit_min) and (time.perf_counter() - t_start) > (
                60 * cfg.time_limit_min
            )
            flag = float(stop["signal"] is not None or over_time)  # ranks agree on stopping
            stopped = (dist.all_sum(flag)[0] if dist.world > 1 else flag) > 0
            if stopped and not (state["step"] % cfg.eval_every == 0 or done):
                with timers("eval"):  # the checkpoint's val loss must be its own
                    state["val_loss"] = evaluate()
                if dist.main:
                    _log_line(
                        run,
                        writer,
                        {"event": "val", "step": state["step"], "val_loss": state["val_loss"]},
                    )
            if state["step"] % cfg.save_every == 0 or done or stopped:
                with timers("checkpoint"):
                    if dist.main:
                        save_checkpoint(
                            run, model, opt, scaler, dict(state), cfg.keep_checkpoints, codec
                        )
                        if done:
                            save_final_model(run, model, codec)
                    if dist.world > 1:
                        torch.distributed.barrier()
            if stopped:
                log.info(
                    "stopping at step %d (%s); resume with --resume",
                    state["step"],
                    "time limit" if over_time else f"signal {stop['signal']}",
                )
                break
    finally:
        if pbar:
            pbar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if writer:
            writer.close()

    wall = time.perf_counter() - t_start
    t = timers.t
    loop_time = wall - t.get("eval", 0.0)
    overhead = t.get("data", 0.0) + t.get("log", 0.0) + t.get("checkpoint", 0.0)
    summary = {
        "steps": state["step"],
        "total_steps": total,
        "tokens_seen": state["tokens_seen"],
        "real_tokens_seen": state["real_tokens_seen"],
        "val_loss": state["val_loss"],
        "unigram_val_loss": summary_data.get("unigram_val_loss"),
        "precision": precision,
        "device": dev_name,
        "world_size": dist.world,
        "wall_s": wall,
        "tokens_per_s": (last_logged.get("tokens_per_s")),
        "model_tflops": last_logged.get("model_tflops"),
        "mfu": last_logged.get("mfu"),
        "phase_s": t,
        "loop_overhead_fraction": overhead / loop_time if loop_time > 0 else None,
        "finished": state["step"] >= total,
    }
    if dist.main:
        write_json(run / "summary.json", summary)
        log.info(
            "done: step %d/%d, val loss %s (unigram %s), loop overhead %.1f%% of step time",
            state["step"],
            total,
            _fmt(state["val_loss"]),
            _fmt(summary["unigram_val_loss"]),
            100 * (summary["loop_overhead_fraction"] or 0),
        )
    dist.leave()
    return summary


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _log_line(run: Path, writer, rec: dict) -> None:
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    if writer is not None:
        for k, v in rec.items():
            if k not in ("event", "step", "batch", "epoch") and isinstance(v, (int, float)):
                writer.add_scalar(f"{rec['event']}/{k}", v, rec["step"])
    if rec["event"] == "val":
        log.info("step %d: val loss %.4f", rec["step"], rec["val_loss"])
    else:
        log.debug(
            "step %d: loss %.4f, %.0f tokens/s", rec["step"], rec["loss"], rec["tokens_per_s"]
        )
