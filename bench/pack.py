"""Packing an epoch at corpus scale: `bandmate.training.data.pack` (vectorised) against the
greedy Python loop it replaced, side by side, and alone at 100 M samples.

    python bench/pack.py [--samples 100000000] [--compare 2000000] [--block 2048]

Each size runs in a fresh subprocess (its peak RSS is its own): the epoch's shuffled order
(`epoch_order`, part of every epoch's cost) and then the packing, timed separately; peak
memory as the process's max RSS and as tracemalloc's peak of the packing alone (numpy's
allocations). Sample lengths are uniform in [100, 1500) tokens (4-bar multi-track windows of a
Lakh/MetaMIDI-like corpus), cut at ``--block``.

At ``--compare`` samples both run and their blocks are checked equal; the loop's time at
``--samples`` is extrapolated linearly (it is one Python iteration per sample). Prints one
JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np


def pack_loop(lengths: np.ndarray, order: np.ndarray, block: int) -> list[np.ndarray]:
    """The loop `pack` replaced (bandmate before issue 15), verbatim."""
    blocks: list[np.ndarray] = []
    cur: list[int] = []
    used = 0
    for i in order.tolist():
        n = min(int(lengths[i]), block)
        if cur and used + n > block:
            blocks.append(np.asarray(cur, np.int64))
            cur, used = [], 0
        cur.append(i)
        used += n
    if cur:
        blocks.append(np.asarray(cur, np.int64))
    return blocks


def one(n: int, block: int, loop: bool) -> dict:
    from bandmate.training.data import epoch_order, pack

    lengths = np.random.default_rng(0).integers(100, 1500, n)
    t0 = time.perf_counter()
    order = epoch_order(n, seed=0, epoch=1)
    t1 = time.perf_counter()
    tracemalloc.start()
    blocks = pack(lengths, order, block)
    t2 = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out = {
        "samples": n,
        "blocks": len(blocks),
        "order_s": t1 - t0,
        "pack_s": t2 - t1,
        "pack_peak_mb": peak / 1e6,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if loop:
        t3 = time.perf_counter()
        ref = pack_loop(lengths, order, block)
        out["loop_s"] = time.perf_counter() - t3
        out["equal"] = len(ref) == len(blocks) and all(
            np.array_equal(a, b) for a, b in zip(ref, blocks, strict=True)
        )
    return out


def run_child(n: int, block: int, loop: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(n), "--block", str(block)]
    if loop:
        cmd.append("--loop")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=100_000_000)
    p.add_argument("--compare", type=int, default=2_000_000)
    p.add_argument("--block", type=int, default=2048)
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(one(args.child, args.block, args.loop)))
        return 0
    small = run_child(args.compare, args.block, loop=True)
    print("side by side:", json.dumps(small), file=sys.stderr)
    big = run_child(args.samples, args.block, loop=False)
    print("at scale:", json.dumps(big), file=sys.stderr)
    scale = args.samples / args.compare
    loop_est = small["loop_s"] * scale
    result = {
        "bench": "pack",
        "block": args.block,
        "compare_samples": args.compare,
        "compare_pack_s": small["pack_s"],
        "compare_loop_s": small["loop_s"],
        "compare_equal": small["equal"],
        "samples": args.samples,
        "blocks": big["blocks"],
        "order_s": big["order_s"],
        "pack_s": big["pack_s"],
        "epoch_s": big["order_s"] + big["pack_s"],
        "pack_peak_mb": big["pack_peak_mb"],
        "max_rss_mb": big["max_rss_mb"],
        "loop_s_extrapolated": loop_est,
        "speedup_extrapolated": loop_est / big["pack_s"],
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
