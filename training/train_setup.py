"""What a training run is, decided before its first step: the config, the learning-rate
schedule, the precision, the process's place in the job and the fresh model.

Apart from the loop (`bandmate.training.train`) because none of it touches the run folder or
the data: each piece is a pure function of the config and the machine, tested without a run
(tests/training/test_train.py), and read by the loop, the checkpoint code
(`bandmate.training.train_checkpoint`) and the benchmarks alike.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields

import torch

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

    init_from: str = field(
        default="",
        metadata={
            "help": "start from these weights instead of a random init: a finished run "
            "folder, a model folder or a shipped model's name (int8 graphs are dequantized); "
            "the model's codec must be the data's"
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
    owns_group: bool = False  # setup_dist started the process group, so the run ends it

    def leave(self) -> None:
        """End the job together: wait for every rank, then tear the process group down.

        A rank that exits while a peer's gloo or NCCL threads still talk to it can abort that
        peer ("terminate called without an active exception", SIGABRT), and torchrun then
        reports a finished job as failed; a group someone else started is left to them."""
        if self.world > 1 and self.owns_group and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

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
    owns = world > 1 and not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, local, world, dev, owns_group=owns)
