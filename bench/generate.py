"""Generation speed: the ONNX engine vs Hugging Face ``generate()`` on the same prompts.

Models: the shipped model (when present, or ``--model DIR``) and a seed-size (20M parameter,
6x512, 2048 positions) random-weight export with int8 and the in-place decode graph (made
once into ``--seed-dir``). Prompts: the first bars of shared JS Fake Chorales. Per model, the
engine as it runs by default (the decode graph ``model.kv*.onnx`` when the folder has it),
and under ``contract_graph`` the same figures through the contract graph (``model*.onnx``,
the fallback path, the baseline of this work) in the same run:

- ``ms_per_token``: wall time of the real tasks (4 bars in, continue 4 bars; add a bass
  track over them) divided by the sampled tokens, everything included (prefills, grammar,
  sampling, windows);
- ``decode_ms_per_token``: one KV-cached step at a 500-token context (the model alone);
- ``hf_ms_per_token`` and ``onnx_same_ms_per_token``: HF ``generate()`` (PyTorch, same dims,
  KV cache, sampling) and our engine's cache loop on the same prompt ids and the same number
  of new tokens, prefill included; ``speedup_vs_hf`` is their ratio;
- ``time_to_first_note_ms``: from the call to the first streamed note, on a ~500-token prompt
  (eight tracks of four bars, add a bass);
- ``realtime_factor``: seconds of music at 120 BPM written per second of wall time.

The machine's load average is recorded before and after (a shared 2-core box is noisy).
The last line is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

CHORALES = Path(os.environ.get("BANDMATE_SHARED", "/work/shared")) / "data" / "jsfakes" / "midi"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def prompts(config, n: int) -> list:
    from bandmate.models.midi_io import MidiError, read_midi

    files = sorted(CHORALES.glob("*.mid"))
    out = []
    for f in files:
        try:
            p = read_midi(f, config)
        except MidiError:
            continue
        if p.bars >= 4 and len(p.tracks) == 4:
            out.append(p.slice_bars(0, 4))
        if len(out) == n:
            break
    if not out:
        sys.exit(f"no chorale prompts under {CHORALES}")
    return out


def seed_model(folder: Path) -> Path:
    meta = folder / "bandmate.json"
    if not meta.is_file() or not json.loads(meta.read_text())["onnx"].get("kv_int8"):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support
        from support.models import export_random

        print(f"exporting the seed-size random model to {folder} ...", file=sys.stderr)
        export_random(
            folder, n_layer=6, n_head=8, n_embd=512, n_positions=2048, int8=True, kv=True
        )
    return folder


def engine_tasks(session, ps, seed: int) -> dict:
    from bandmate.models import generate as G
    from bandmate.models.sampler import SamplingConfig

    tokens = 0
    wall = 0.0
    music_s = 0.0
    first = []
    for k, p in enumerate(ps):
        for task in ("continue", "add"):
            s = SamplingConfig(seed=seed + k)
            t0 = time.perf_counter()
            if task == "continue":
                evs = G.stream_continue(session, p, 4, sampling=s)
            else:
                evs = G.stream_add_track(session, p, "bass", sampling=s)
            done = None
            for ev in evs:
                if isinstance(ev, G.Done):
                    done = ev
            wall += time.perf_counter() - t0
            tokens += done.stats["sampled_tokens"]
            music_s += 4 * 2.0  # 4 bars at 120 BPM
            if done.stats["first_note_s"] is not None:
                first.append(done.stats["first_note_s"])
    return {
        "ms_per_token": 1000 * wall / max(tokens, 1),
        "task_tokens": tokens,
        "task_seconds": wall,
        "realtime_factor": music_s / wall,
        "task_first_note_ms": 1000 * float(np.median(first)) if first else None,
    }


def decode_step(session, ctx: int = 500, steps: int = 64) -> dict:
    """One KV-cached step at a ``ctx``-token context, and the prefill of that context."""
    rng = np.random.default_rng(0)
    prefill = []
    for _ in range(3):
        cache = session.new_cache(1)
        t0 = time.perf_counter()
        cache.feed([rng.integers(10, 280, ctx).tolist()])
        prefill.append(time.perf_counter() - t0)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        cache.feed([[int(rng.integers(10, 280))]])
        times.append(time.perf_counter() - t0)
    t = np.array(times[4:]) * 1000
    return {
        "decode_ms_per_token": float(np.median(t)),
        "decode_ms_p10": float(np.percentile(t, 10)),
        f"prefill_{ctx}_ms": 1000 * float(np.median(prefill)),
    }


def ttfn(session, ps, seed: int) -> tuple[float, int]:
    """Time to the first note on a ~500-token prompt (eight tracks, four bars, add a bass)."""
    from dataclasses import replace

    from bandmate.models import generate as G
    from bandmate.models.sampler import SamplingConfig

    a, b = ps[0], ps[1 % len(ps)]
    p = replace(a, tracks=a.tracks + b.tracks)
    n_tok = len(session.codec.sample(p))
    out = []
    for k in range(3):
        t0 = time.perf_counter()
        for ev in G.stream_add_track(session, p, "bass", sampling=SamplingConfig(seed=seed + k)):
            if isinstance(ev, G.NoteEvent):
                out.append(time.perf_counter() - t0)
                break
    return 1000 * float(np.median(out)), n_tok


def onnx_same(session, ids: np.ndarray, new: int, seed: int) -> float:
    """Our cache loop on HF's terms: prefill + ``new`` sampled tokens, no grammar."""
    from bandmate.models.sampler import SamplingConfig, row_rng, sample

    cfg = SamplingConfig(top_p=1.0)
    rng = row_rng(seed, 0)
    mask = np.ones(session.vocab.size, bool)
    t0 = time.perf_counter()
    cache = session.new_cache(1)
    lg = cache.feed([ids.tolist()])
    for _ in range(new):
        tok = sample(lg[0], mask, cfg, rng)
        lg = cache.feed([[tok]])
    return 1000 * (time.perf_counter() - t0) / new


def hf_generate(meta: dict, ids: np.ndarray, new: int) -> float:
    import torch
    from bandmate.training.export import random_model

    m = meta["model"]
    model = random_model(m["vocab_size"], m["n_layer"], m["n_head"], m["n_embd"],
                         m["n_positions"])
    x = torch.from_numpy(ids[None].astype(np.int64))
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, top_p=1.0, top_k=0,
              pad_token_id=0, attention_mask=torch.ones_like(x))
    with torch.no_grad():
        model.generate(x, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm up
        t0 = time.perf_counter()
        model.generate(x, **kw)
    return 1000 * (time.perf_counter() - t0) / new


def sweep(folder: Path, ctx: int = 300, steps: int = 40) -> list[dict]:
    """Decode step and prefill of the decode graph per ORT setting (threads, spinning,
    graph optimisation level; execution is sequential throughout), interleaved twice so a
    load change hits every setting alike."""
    import onnxruntime as ort
    from bandmate.models.session import KVBuffers, ModelSession

    s = ModelSession.load(folder)
    if not s.fast:
        return []
    path = str(folder / s.onnx_file)
    L = ort.GraphOptimizationLevel
    settings = [
        (1, 0, "all"), (2, 0, "all"), (2, 1, "all"), (1, 0, "extended"), (1, 0, "basic"),
    ]
    levels = {"all": L.ORT_ENABLE_ALL, "extended": L.ORT_ENABLE_EXTENDED,
              "basic": L.ORT_ENABLE_BASIC}
    rng = np.random.default_rng(0)
    res: dict[tuple, dict] = {}
    for _ in range(2):
        for th, spin, level in settings:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            so.intra_op_num_threads = th
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = levels[level]
            so.add_session_config_entry("session.intra_op.allow_spinning", str(spin))
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            kv = KVBuffers(sess, s.n_layer, s.n_head, s.head_dim, 1, ctx + steps + 1)
            ids = rng.integers(10, 280, (1, ctx))
            pre = []
            for _ in range(3):
                t0 = time.perf_counter()
                kv.run(ids, np.arange(ctx)[None], np.zeros(1), np.array([ctx]), first=True)
                pre.append(time.perf_counter() - t0)
            times = []
            for k in range(steps):
                t0 = time.perf_counter()
                kv.run(rng.integers(10, 280, (1, 1)), np.array([[ctx + k]]),
                       np.array([ctx + k]), np.array([1]))
                times.append(time.perf_counter() - t0)
            r = res.setdefault((th, spin, level), {"decode": [], "prefill": []})
            r["decode"] += times[4:]
            r["prefill"] += pre[1:]
    return [
        {"intra_op_threads": th, "spinning": bool(spin), "graph_optimization": level,
         f"decode_ms_at_{ctx}": round(1000 * float(np.median(r["decode"])), 3),
         f"prefill_{ctx}_ms": round(1000 * float(np.median(r["prefill"])), 1)}
        for (th, spin, level), r in res.items()
    ]


def engine(session, ps, seed: int, new: int) -> dict:

    res = {"onnx": session.onnx_file, "provider": session.provider}
    decode_step(session, ctx=64, steps=8)  # warm up (first runs allocate)
    res.update(engine_tasks(session, ps, seed))
    res.update(decode_step(session))
    res["time_to_first_note_ms"], res["ttfn_prompt_tokens"] = ttfn(session, ps, seed)
    ids = session.codec.sample(ps[0])
    res["onnx_same_ms_per_token"] = float(np.mean(
        [onnx_same(session, ids, new, seed + k) for k in range(2)]))
    return res


def bench_model(label: str, folder: Path, n_prompts: int, new: int, seed: int,
                baseline: bool) -> dict:
    from bandmate.models.session import ModelSession

    session = ModelSession.load(folder)
    ps = prompts(session.config, n_prompts)
    res = {"model": session.name, "fast_graph": session.fast}
    res.update(engine(session, ps, seed, new))
    if baseline and session.fast:
        res["contract_graph"] = engine(ModelSession.load(folder, fast=False), ps, seed, new)
    ids = session.codec.sample(ps[0])
    res["hf_ms_per_token"] = hf_generate(session.meta, ids, new)
    res["hf_prompt_tokens"], res["hf_new_tokens"] = len(ids), new
    res["speedup_vs_hf"] = res["hf_ms_per_token"] / res["onnx_same_ms_per_token"]
    if "contract_graph" in res:
        c = res["contract_graph"]
        c["speedup_vs_hf"] = res["hf_ms_per_token"] / c["onnx_same_ms_per_token"]
    print(f"{label}: {json.dumps(res)}", file=sys.stderr)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None,
                    help="a shipped model by name (default, band) or a folder; default: default")
    ap.add_argument("--seed-dir", type=Path, default=Path("/tmp/bandmate-bench-seed20m"))
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--sweep", action="store_true",
                    help="also time the decode graph per ORT thread/optimisation setting")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the contract-graph baseline (the old path)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(min(os.cpu_count() or 1, 8))
    from bandmate.models.registry import resolve_model
    from bandmate.models.session import default_model_dir

    models = {}
    load_before = os.getloadavg()
    base = not args.no_baseline
    shipped = resolve_model(args.model) or default_model_dir()
    if (shipped / "bandmate.json").is_file():
        models["shipped"] = bench_model("shipped", shipped, args.prompts, args.new_tokens,
                                        args.seed, base)
    else:
        print(f"no shipped model at {shipped}: benchmarking the seed-size model only",
              file=sys.stderr)
    models["seed_20m_random_int8"] = bench_model(
        "seed", seed_model(args.seed_dir), args.prompts, args.new_tokens, args.seed, base
    )
    from bandmate.models.session import _threads

    if args.sweep:
        models["ort_settings_sweep_seed_20m"] = sweep(seed_model(args.seed_dir))
    summary = {
        "device": f"{os.cpu_count()}-core CPU ({cpu_name()})",
        "load_avg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "ort_threads_fast_graph": _threads(fast=True),
        "torch_threads": torch.get_num_threads(),
        **{k: v for k, v in models.items()},
    }
    line = json.dumps(summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
