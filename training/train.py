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
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from bandmate.models.config import CodecConfig
from bandmate.training import data as D
from bandmate.training.flops import flops_per_token, peak_tflops
from bandmate.training.hf_folder import WEIGHTS, write_hf_files
from bandmate.training.run_io import (
    checkpoint_candidates,
    checkpoint_dir,
    checkpoint_step,
    mark_latest,
    read_json,
    write_json,
)

log = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, int]] = {
    # CI and tests: trains in seconds on one CPU core.
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 256, "batch_size": 8},
    # The shipped chorale model's size class: an hour on a 2-core CPU.
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 256, "n_positions": 512, "batch_size": 16},
    # The original system's model (DGX-2): 6 blocks, 8 heads, 512 wide, 2048 positions.
    "seed": {"n_layer": 6, "n_head": 8, "n_embd": 512, "n_positions": 2048, "batch_size": 16},
}
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved as RUN/train_config.json."""

    preset: str = field(default="tiny", metadata={"help": "tiny | small | seed"})
    n_layer: int = field(default=0, metadata={"help": "decoder blocks (0 = preset)"})
    n_head: int = field(default=0, metadata={"help": "attention heads (0 = preset)"})
    n_embd: int = field(default=0, metadata={"help": "model width (0 = preset)"})
    n_positions: int = field(default=0, metadata={"help": "block / context length (0 = preset)"})
    batch_size: int = field(default=0, metadata={"help": "blocks per micro-batch per device"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps (0 = use --epochs)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data if no max-steps"})
    lr: float = field(default=6e-4, metadata={"help": "peak learning rate"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final lr as a fraction of lr"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warmup steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decay on 2-D weights"})
    beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    grad_clip: float = field(default=1.0, metadata={"help": "max grad norm (0 = off)"})
    dropout: float = field(default=0.0, metadata={"help": "residual/attention dropout"})
    precision: str = field(default="auto", metadata={"help": "auto | bf16 | fp16 | fp32"})
    attention: str = field(default="sdpa", metadata={"help": "sdpa | eager"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    eval_every: int = field(default=200, metadata={"help": "steps between validations"})
    eval_batches: int = field(
        default=20,
        metadata={
            "help": "validation blocks = eval_batches x batch_size, counted over all ranks "
            "(the same samples for any number of GPUs)"
        },
    )
    log_every: int = field(default=10, metadata={"help": "steps between log lines"})
    save_every: int = field(default=500, metadata={"help": "steps between checkpoints"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept"})
    seed: int = field(default=0, metadata={"help": "data order, init and dropout seed"})
    peak_tflops: float = field(default=0.0, metadata={"help": "device peak for MFU (0 = table)"})
    time_limit_min: float = field(
        default=0.0, metadata={"help": "save and stop (exit 75) after this many minutes (0=off)"}
    )
    reorder: float = field(
        default=0.0,
        metadata={
            "help": "probability that a training sample has one of its tracks moved last "
            "(teaches adding any part, not only the corpus's last one; 0 = corpus order)"
        },
    )

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {self.preset!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {self.attention!r}")
        p = PRESETS[self.preset]
        for k in ("n_layer", "n_head", "n_embd", "n_positions", "batch_size"):
            if getattr(self, k) == 0:
                object.__setattr__(self, k, p[k])
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} must be a multiple of n_head {self.n_head}")
        if self.grad_accum < 1 or self.max_steps < 0 or self.epochs <= 0:
            raise ValueError("grad_accum >= 1, max_steps >= 0 and epochs > 0 are required")
        if not 0 <= self.reorder <= 1:
            raise ValueError(f"reorder is a probability in [0, 1], got {self.reorder}")
        if not 0 <= self.dropout < 1 or not 0 <= self.min_lr_ratio <= 1 or self.lr <= 0:
            raise ValueError("dropout in [0, 1), min_lr_ratio in [0, 1] and lr > 0 required")
        for k in ("eval_every", "log_every", "save_every", "eval_batches", "keep_checkpoints"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------------- pure helpers


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine to ``min_lr_ratio * lr``."""
    warm = min(cfg.warmup_steps, max(total // 10, 1)) if total else cfg.warmup_steps
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = min((step - warm) / max(total - warm, 1), 1.0)
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * frac))


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX).

    There, bf16 autocast is 2-3x faster than fp32 for these models (bench/train_cpu.py); on a
    CPU without it PyTorch emulates bf16 and fp32 is faster.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(
    requested: str,
    device: torch.device,
    capability: tuple[int, int] | None = None,
    cpu_bf16: bool | None = None,
) -> str:
    """bf16 where the GPU has it (compute capability 8.0+: A100, H100), fp16 with loss scaling
    where it does not (V100: a DGX-2); on a CPU bf16 where it is native (AVX512-BF16, AMX),
    else fp32.

    Decided by compute capability, not ``torch.cuda.is_bf16_supported()``, which also says yes
    on a V100 (where bf16 is only emulated, and slow). bf16 on the CPU was checked against fp32
    for loss parity (bench/train_cpu.py --parity-steps; docs/training.md).
    """
    if device.type == "cuda" and capability is None:
        capability = torch.cuda.get_device_capability(device)
    has_bf16 = device.type == "cuda" and capability is not None and capability[0] >= 8
    if requested != "auto":
        if device.type == "cpu" and requested == "fp16":
            raise ValueError("fp16 needs a GPU; use --precision fp32 or bf16 on a CPU")
        if device.type == "cuda" and requested == "bf16" and not has_bf16:
            raise ValueError(
                f"bf16 needs a GPU of compute capability 8.0+ (this one: {capability}); "
                "use --precision fp16 (loss-scaled) on a V100"
            )
        return requested
    if device.type == "cuda":
        return "bf16" if has_bf16 else "fp16"
    if cpu_bf16 is None:
        cpu_bf16 = cpu_has_bf16()
    return "bf16" if cpu_bf16 else "fp32"


def build_model(cfg: TrainConfig, vocab_size: int) -> torch.nn.Module:
    """A fresh GPT-2 of the run's shape, from the one config factory that export also uses."""
    from bandmate.models.model_folder import ModelDims, gpt2_config
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "pass an attention_mask": packed blocks need none
    dims = ModelDims(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_positions, vocab_size)
    mc = gpt2_config(dims, dropout=cfg.dropout, attention=cfg.attention)
    torch.manual_seed(cfg.seed)
    return GPT2LMHeadModel(mc)


# ------------------------------------------------------------------ distributed plumbing


@dataclass
class Dist:
    """This process's place in a torchrun job (world 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, *xs: float) -> list[float]:
        if self.world == 1:
            return list(xs)
        t = torch.tensor(xs, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def from_main(self, x: float) -> float:
        """Rank 0's value of ``x`` on every rank (exact for integers below 2**53)."""
        return self.all_sum(x if self.main else 0.0)[0]


class RunFolderError(RuntimeError):
    """The run folder is not the same for every process of the job, or has no usable
    checkpoint: stopping with a message beats a job that hangs or forks its history."""


def setup_dist(device: str = "auto") -> Dist:
    """Join the torchrun job if there is one (env RANK/WORLD_SIZE), else a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dev = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, local, world, dev)


# ------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    run: Path, model, opt, scaler, state: dict, keep: int, codec: CodecConfig | None = None
) -> Path:
    """model.safetensors (tied lm_head stored once), optim.safetensors, optim.json, the
    Hugging Face files (config, generation config, tokenizer), state.json; then every file
    and the folder are fsynced and ``latest`` moves (run_io.mark_latest)."""
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


def model_weights(model) -> dict[str, torch.Tensor]:
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


def apply_checkpoint(payload: dict, model, opt, scaler) -> dict:
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


def load_checkpoint(ck: Path, model, opt, scaler, device: torch.device) -> dict:
    return apply_checkpoint(read_checkpoint(ck, device), model, opt, scaler)


def resume_state(run: Path, dist: Dist, model, opt, scaler) -> dict | None:
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


def save_final_model(run: Path, model, codec: CodecConfig) -> None:
    """RUN/model.safetensors + the Hugging Face files: the run folder is the final model."""
    from safetensors.torch import save_file

    tmp = Path(run) / (WEIGHTS + ".tmp")
    save_file(model_weights(model), str(tmp), metadata={"format": "pt"})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, Path(run) / WEIGHTS)
    write_hf_files(run, model.config, codec)


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


def _decide_resume(run: Path, resume: bool | str, dist: Dist) -> bool:
    """Rank 0 decides whether this is a new run or a resumed one; every rank gets the answer
    (or the same error), so no rank reads its own disk to decide."""
    code, err = 0.0, None
    if dist.main:
        try:
            has_run = (run / "train_config.json").exists()
            if resume == "auto":
                resume = has_run
            if resume and not has_run:
                raise FileNotFoundError(f"{run} is not a run folder: start it without --resume")
            if not resume and (run / "checkpoints").exists() and checkpoint_candidates(run):
                raise FileExistsError(
                    f"{run} already holds a run: pass --resume, or choose a new -o"
                )
            code = 1.0 if resume else 0.0
        except (FileNotFoundError, FileExistsError) as e:
            code, err = -1.0, e
    code = dist.from_main(code)
    if code < 0:
        raise err or RunFolderError("rank 0 could not start the run (see its error)")
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
    check_run_visible(run, dist)
    return code > 0


def train(
    data_dir: str | Path,
    run: str | Path,
    cfg: TrainConfig,
    resume: bool | str = False,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Train (or resume) a run; returns the summary also written to RUN/summary.json.

    ``resume``: True continues the run in ``run``, False starts a new one, "auto" resumes
    when ``run`` holds a run (decided by rank 0 for every rank: launchers pass it on every
    restart).
    """
    data_dir, run = Path(data_dir), Path(run)
    dist = setup_dist(device)
    resume = _decide_resume(run, resume, dist)
    if resume:
        saved = TrainConfig.from_json(read_json(run / "train_config.json"))
        overrides = {
            k: v
            for k, v in asdict(cfg).items()
            if k in ("max_steps", "time_limit_min", "eval_every", "log_every", "save_every")
            and v != getattr(TrainConfig(), k)
        }
        cfg = TrainConfig.from_json({**asdict(saved), **overrides})

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
    if resume:
        resumed = resume_state(run, dist, model, opt, scaler)
        if resumed is None:
            log.info("no checkpoint in %s yet: starting from step 0", run)
        else:
            state = resumed
            log.info("resumed from step %d", state["step"])
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
        _trim_log(run / "log.jsonl", state["step"])
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


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines after the checkpoint a run resumes from (they will be redone)."""
    if not path.exists():
        return
    keep = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step
    ]
    path.write_text("".join(ln + "\n" for ln in keep))
