"""CPU training throughput: the shipped model's old recipe against the new one, side by side.

    python bench/train_cpu.py [DATA] [--steps 20] [--rounds 2] [--parity-steps 0]

DATA is a prepared chorale folder (made with `bandmate prepare` when missing, from
../shared/data/jsfakes with the held-out chorales excluded). Each recipe runs through the real
`bandmate.training.train.train` for warm-up + timed steps, in alternating rounds (a ratio taken
in one run survives a noisy shared machine); the figure of a recipe is its best round.

Tokens/s counts *real* tokens (samples, not the `[PAD]` that fills a block's end): padding is
compute spent on nothing, and the recipes pad differently. Both figures are printed.

- baseline: models/default's first card: preset small (4 x 256), 1024-token blocks, 8 a step,
  fp32, SDPA, no compile.
- new: the same model, bf16 autocast (native AVX512-BF16/AMX), 576-token blocks (two 4-bar
  chorale samples fill 88% of one; 1024 fills 82%, 512 only 62%), 16 a step, torch.compile.

`--parity-steps N` also trains N steps in fp32 and in bf16 from the same initialisation on the
same batches and reports the loss gap (the safety check behind `--precision auto` = bf16 on a
CPU with native bf16).

Prints one JSON line last: tokens_per_s, baseline_tokens_per_s, speedup, model TFLOP/s and the
share of the cores' peak (bf16: 2 cores x 2 FMA units x 32 bf16 lanes x 2 FLOPs x clock).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "jsfakes"
HOLDOUT = ROOT / "bench" / "holdout" / "jsfakes.txt"

BASELINE = {
    "preset": "small",
    "n_positions": 1024,
    "batch_size": 8,
    "precision": "fp32",
    "attention": "sdpa",
    "compile": False,
}
NEW = {
    "preset": "small",
    "n_positions": 576,
    "batch_size": 16,
    "precision": "bf16",
    "attention": "sdpa",
    "compile": True,
    "reorder": 0.5,
}


def ensure_data(path: Path) -> Path:
    if (path / "manifest.json").exists():
        return path
    cmd = [
        sys.executable, "-m", "bandmate", "prepare", str(SHARED), "-o", str(path), "--bars", "4",
        "--voices", "SOPRANO,ALTO,TENOR,BASS", "--transpose=-5:6", "--density-bins", "4",
        "--exclude", str(HOLDOUT), "--progress", "off",
    ]
    subprocess.run(cmd, check=True)
    return path


def cpu_info() -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["model"] = line.split(":", 1)[1].strip()
                break
        mhz = [float(ln.split(":")[1]) for ln in text.splitlines() if ln.startswith("cpu MHz")]
        if mhz:
            info["mhz"] = max(mhz)
    except OSError:
        pass
    return info


def peak_tflops(info: dict, precision: str) -> float | None:
    """A rough dense peak: AVX-512 cores, 2 FMA units; bf16 (VDPBF16PS) twice the fp32 lanes."""
    mhz = info.get("mhz")
    if not mhz:
        return None
    lanes = 32 if precision == "bf16" else 16
    return (os.cpu_count() or 1) * 2 * lanes * 2 * mhz * 1e6 / 1e12


def run_recipe(data: Path, recipe: dict, warm: int, steps: int, seed: int = 0) -> dict:
    """Train warm + steps steps of a recipe in a fresh run folder; figures of the timed steps."""
    from bandmate.training.flops import flops_per_token
    from bandmate.training.train import TrainConfig, train

    run = Path(tempfile.mkdtemp(prefix="bm-train-cpu-"))
    try:
        cfg = TrainConfig(
            **recipe,
            max_steps=warm + steps,
            warmup_steps=10,
            log_every=1,
            eval_every=10**6,
            eval_batches=1,
            save_every=10**6,
            seed=seed,
        )
        t0 = time.perf_counter()
        summary = train(data, run / "r", cfg, progress=False)
        wall = time.perf_counter() - t0
        recs = [
            json.loads(ln)
            for ln in (run / "r" / "log.jsonl").read_text().splitlines()
            if '"train"' in ln
        ]
        timed = [r for r in recs if r["step"] > warm]
        dt = sum(r["step_time_s"] for r in timed)
        real = sum(r["real_tokens_per_s"] * r["step_time_s"] for r in timed)
        allt = sum(r["tokens_per_s"] * r["step_time_s"] for r in timed)
        from bandmate.models.config import CodecConfig

        codec = CodecConfig.from_json(json.loads((data / "manifest.json").read_text())["codec"])
        fpt = flops_per_token(cfg.n_layer, cfg.n_embd, cfg.n_positions, codec.vocab.size)
        return {
            "real_tokens_per_s": real / dt,
            "tokens_per_s": allt / dt,
            "model_tflops": allt / dt * fpt / 1e12,
            "fill": real / allt,
            "step_s": dt / len(timed),
            "wall_s": wall,
            "precision": summary["precision"],
            "losses": [r["loss"] for r in recs],
        }
    finally:
        shutil.rmtree(run, ignore_errors=True)


def parity(data: Path, steps: int) -> dict:
    """fp32 and bf16 from one init on the same batches: the loss gap over the last steps."""
    base = {k: v for k, v in NEW.items() if k not in ("precision", "compile")}
    base["batch_size"] = 8
    out = {}
    for prec in ("fp32", "bf16"):
        out[prec] = run_recipe(data, {**base, "precision": prec}, 0, steps)["losses"]
    a, b = out["fp32"], out["bf16"]
    tail = max(1, len(a) // 5)
    fa, fb = sum(a[-tail:]) / tail, sum(b[-tail:]) / tail
    return {
        "steps": steps,
        "fp32_final_loss": round(fa, 4),
        "bf16_final_loss": round(fb, 4),
        "relative_gap": round((fb - fa) / fa, 4),
        "max_abs_step_gap": round(max(abs(x - y) for x, y in zip(a, b, strict=True)), 4),
        "fp32_curve": [round(x, 3) for x in a[:: max(1, steps // 20)]],
        "bf16_curve": [round(x, 3) for x in b[:: max(1, steps // 20)]],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(ROOT / "data" / "jsf"))
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--warm", type=int, default=6, help="untimed steps first (compile, caches)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of each recipe")
    ap.add_argument("--parity-steps", type=int, default=0, help="fp32 vs bf16 loss check")
    ap.add_argument("--only-new", action="store_true", help="skip the baseline (quick look)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    data = ensure_data(Path(args.data))
    info = cpu_info()
    res: dict[str, list[dict]] = {"baseline": [], "new": []}
    for r in range(args.rounds):
        for name, recipe in (("baseline", BASELINE), ("new", NEW)):
            if name == "baseline" and args.only_new:
                continue
            out = run_recipe(data, recipe, args.warm, args.steps)
            out.pop("losses")
            res[name].append(out)
            print(f"round {r} {name}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()})}", flush=True)  # noqa: E501
    best = {k: max(v, key=lambda o: o["real_tokens_per_s"]) for k, v in res.items() if v}
    new = best["new"]
    base = best.get("baseline")
    peak = peak_tflops(info, new["precision"])
    figures = {
        "tokens_per_s": round(new["real_tokens_per_s"]),
        "baseline_tokens_per_s": round(base["real_tokens_per_s"]) if base else None,
        "speedup": round(new["real_tokens_per_s"] / base["real_tokens_per_s"], 2) if base else None,
        "tokens_per_s_with_padding": round(new["tokens_per_s"]),
        "baseline_tokens_per_s_with_padding": round(base["tokens_per_s"]) if base else None,
        "speedup_with_padding": round(new["tokens_per_s"] / base["tokens_per_s"], 2)
        if base
        else None,
        "model_tflops": round(new["model_tflops"], 4),
        "baseline_model_tflops": round(base["model_tflops"], 4) if base else None,
        "peak_tflops_estimate": round(peak, 3) if peak else None,
        "share_of_peak": round(new["model_tflops"] / peak, 4) if peak else None,
        "recipe": NEW,
        "baseline_recipe": BASELINE,
        "fill": round(new["fill"], 3),
        "baseline_fill": round(base["fill"], 3) if base else None,
        "timed_steps": args.steps,
        "rounds": args.rounds,
        "machine": info,
    }
    if args.parity_steps:
        figures["bf16_parity"] = parity(data, args.parity_steps)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
