"""Training throughput: the common recipe vs ``bandmate train``'s own step, same model, same run.

Synthetic tokens, so the figure is the model's and the loop's, not a corpus's. On a GPU:
preset ``seed`` (6 layers, 8 heads, 512 wide, sequence 2048); the baseline is the plain
recipe (fp16 autocast + GradScaler, eager attention, no compile, HF's own loss); then
``bandmate.training.train.train`` runs on synthetic prepared shards with its defaults for the
device (bf16 or fp16, SDPA, fused AdamW, torch.compile unless --no-compile) and its own
tokens/s from the run log is taken. On a CPU: preset ``tiny``, fp32 for both (CPU autocast has
no fp16 loss scaling), no compile, same keys.

Last line: JSON with tokens_per_s, baseline_tokens_per_s, speedup, model_tflops, mfu, device,
plus detail (precision, batch, steps, the loop overhead fraction of the bandmate run).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from bandmate.models.model_folder import ModelDims, gpt2_config
from bandmate.training.flops import flops_per_token, peak_tflops
from bandmate.training.train import PRESETS, TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support
from support.models import CHORALE_CODEC
from support.synthetic import write_synthetic_data


def baseline(preset: dict, vocab: int, batch: int, steps: int, warmup: int, dev) -> float:
    """The common recipe: fp16 autocast + GradScaler, eager attention, HF loss. tokens/s."""
    from transformers import GPT2LMHeadModel

    dims = ModelDims(preset["n_layer"], preset["n_head"], preset["n_embd"],
                     preset["n_positions"], vocab)
    cfg = gpt2_config(dims, attention="eager")
    model = GPT2LMHeadModel(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cuda = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if cuda else None
    seq = preset["n_positions"]
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(3, vocab, (batch, seq), generator=g).to(dev)

    def step() -> None:
        if cuda:
            with torch.autocast("cuda", dtype=torch.float16):
                loss = model(input_ids=ids, labels=ids).loss
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return batch * seq * steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default=None, help="default: seed on GPU, tiny on CPU")
    p.add_argument("--batch-size", type=int, default=0, help="blocks per step (preset default)")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default 30 GPU, 20 CPU)")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps (default 10 / 5)")
    p.add_argument("--no-compile", action="store_true", help="bandmate step without compile")
    p.add_argument("--peak-tflops", type=float, default=0.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    preset_name = args.preset or ("seed" if cuda else "tiny")
    preset = PRESETS[preset_name]
    batch = args.batch_size or preset["batch_size"]
    steps = args.steps or (30 if cuda else 20)
    warmup = args.warmup or (10 if cuda else 5)
    vocab = CHORALE_CODEC.vocab.size
    name = torch.cuda.get_device_name(0) if cuda else "cpu"

    base = baseline(preset, vocab, batch, steps, warmup, dev)
    if cuda:
        torch.cuda.empty_cache()

    with tempfile.TemporaryDirectory() as tmp:
        # Enough synthetic samples (~430 tokens each) for every block of the run.
        blocks = batch * (steps + warmup + 1)
        n = blocks * (preset["n_positions"] // 400 + 1) + 64
        data = write_synthetic_data(Path(tmp) / "data", CHORALE_CODEC, n, 64)
        cfg = TrainConfig(
            preset=preset_name,
            batch_size=batch,
            max_steps=warmup + steps,
            warmup_steps=2,
            log_every=warmup if warmup < warmup + steps else 1,
            eval_every=warmup + steps,
            eval_batches=1,
            save_every=10**9,
            compile=cuda and not args.no_compile,
            peak_tflops=args.peak_tflops,
        )
        summary = train(data, Path(tmp) / "run", cfg, progress=False)
        log = [json.loads(x) for x in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
    last = [r for r in log if r["event"] == "train"][-1]  # the window after warmup
    tps = last["tokens_per_s"]
    fpt = flops_per_token(preset["n_layer"], preset["n_embd"], preset["n_positions"], vocab)
    peak = args.peak_tflops or (peak_tflops(name, summary["precision"]) if cuda else None)
    result = {
        "tokens_per_s": round(tps),
        "baseline_tokens_per_s": round(base),
        "speedup": round(tps / base, 3),
        "model_tflops": round(tps * fpt / 1e12, 4),
        "mfu": round(tps * fpt / 1e12 / peak, 4) if peak else None,
        "device": name,
        "preset": preset_name,
        "precision": summary["precision"],
        "baseline_recipe": "fp16 autocast + GradScaler, eager attention" if cuda else "fp32 eager",
        "compile": cfg.compile,
        "batch_blocks": batch,
        "seq": preset["n_positions"],
        "timed_steps": steps,
        "loop_overhead_fraction": round(summary["loop_overhead_fraction"], 4),
        "flops_formula": "Megatron-LM, no recompute: 72*B*s*l*h^2*(1+s/6h+V/12lh)",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
