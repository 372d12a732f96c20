"""Benchmark `bandmate prepare` against MidiTok's MMM tokenizer on the same files, same run.

    python bench/prepare.py [FOLDER] [--meter assume-4/4] [--voices ...] [--repeat 3]

Measures, on FOLDER (default: the shared JS Fake Chorales):
- our full un-augmented run (`prepare` with --transpose 0:0: walk, hash, parse, encode,
  window, merge, write shards) on one worker, then on all workers;
- our pure per-file encode (`encode_file` in this process, no pool, no writing);
- MidiTok 3.1 `MMM` (base tokenizer TSD, its default config) tokenizing every file, one core,
  in a process of its own (it imports torch; our runs fork workers from this process, and a
  200 MB parent would slow every fork, which the `bandmate prepare` command never pays).
`tokens_per_s_per_core` counts the output of the default windows (4-bar windows every bar: each
note is in up to 4 samples); `each_note_once_tokens_per_s_per_core` encodes non-overlapping
windows (each note once, like MidiTok's one pass over a file) and gives the like-for-like
`speedup_vs_miditok_each_note_once`. Each figure is the best of --repeat runs (the machine
may be shared; best-of is the least disturbed); the `*_cpu_s` figures divide by CPU time
(this process and its workers) instead of wall time, which a busy machine disturbs less.
`parallel_speedup_control` is the same ratio for processes that only spin, measured in each
round: the parallelism the machine offered meanwhile (2.0 on an idle 2-core machine).
The last line is JSON: files_per_s_per_core,
tokens_per_s_per_core (full un-augmented run, one worker), miditok_tokens_per_s_per_core,
speedup_vs_miditok, parallel_speedup (one-worker time / all-workers time), plus the details.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "jsfakes"


def _cpu_pressure() -> str | None:
    """Linux PSI: the share of time runnable tasks waited for a CPU (other work on the box)."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the pool's workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def _once(fn) -> tuple[float, float, object]:
    t0, c0 = time.perf_counter(), _cpu()
    out = fn()
    return time.perf_counter() - t0, _cpu() - c0, out


def _spin(seconds: float) -> int:
    """Count loop turns for `seconds` of wall time: pure CPU, no memory traffic."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def _control(workers: int, seconds: float = 0.5) -> float:
    """How much parallelism the machine offers right now: the turns `workers` spinning
    processes make together, over what one makes alone (ideal: `workers`)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as p:
        one = sum(p.map(_spin, [seconds]))
        many = sum(p.map(_spin, [seconds] * workers))
    return many / one


def _miditok_round(folder: str) -> int:
    """One timed MidiTok pass over the folder (in a process of its own); prints
    [wall seconds, CPU seconds, tokens]."""
    from bandmate.training.prepare import list_sources

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from miditok import MMM, TokenizerConfig

        tok = MMM(TokenizerConfig(base_tokenizer="TSD"))
        paths = [Path(f.abspath) for f in list_sources([folder])]
        tok.encode(paths[0])  # first-call set-up, as our runs are warmed too

        def run() -> int:
            n = 0
            for p in paths:
                with contextlib.suppress(Exception):  # MidiTok's failures do not count
                    n += len(tok.encode(p).ids)
            return n

        wall, cpu, n = _once(run)
    print(json.dumps([wall, cpu, n]))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default=str(DEFAULT))
    ap.add_argument("--meter", default=None, help="strict or assume-4/4 (default: by folder)")
    ap.add_argument("--voices", default=None, help="voice labels (default: SATB for jsfakes)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="0 = every core")
    ap.add_argument("--skip-miditok", action="store_true")
    ap.add_argument("--miditok-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if a.miditok_only:
        return _miditok_round(a.folder)

    from bandmate.training.prepare import (
        PrepareConfig,
        default_workers,
        encode_file,
        list_sources,
        prepare,
    )

    folder = a.folder
    is_chorales = "jsfakes" in folder
    meter = a.meter or ("strict" if is_chorales else "assume-4/4")
    voices = (
        a.voices if a.voices is not None else ("SOPRANO,ALTO,TENOR,BASS" if is_chorales else "")
    )
    cfg = PrepareConfig(
        sources=(folder,),
        transpose=(0, 0),
        meter=meter,
        voices=tuple(v for v in voices.split(",") if v),
        val_fraction=0.0,
    )
    files = list_sources([folder])
    workers = a.workers or default_workers()
    load_before = os.getloadavg()
    psi_before = _cpu_pressure()
    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))

    # prepare's default workload (all 12 transpositions of the training files): the same
    # files, ten times the encoding work, so the fixed serial part (pool start, merge, fsync)
    # weighs as it does on a real corpus.
    aug = dataclasses.replace(cfg, transpose=PrepareConfig(sources=(folder,)).transpose)

    def run(w: int, c: PrepareConfig = cfg, tag: str = "") -> tuple[float, float, object]:
        """One timed prepare into an empty folder (emptied before the clock starts: removing
        the last round's output is not part of the run)."""
        out = tmp / f"w{w}{tag}"
        shutil.rmtree(out, ignore_errors=True)
        return _once(lambda: prepare(c, out, workers=w, progress=False))

    def encode_all(c: PrepareConfig) -> int:
        n = 0
        for f in files:
            with contextlib.suppress(ValueError):
                n += len(encode_file(f.abspath, c, augment=False).tokens)
        return n

    # Each note once (windows do not overlap): the like-for-like comparison with a tokenizer
    # that encodes a whole file once, as MidiTok does.
    once = dataclasses.replace(cfg, hop=cfg.bars)
    miditok_all = None
    if not a.skip_miditok:
        # MidiTok runs in a process of its own: it imports torch (200 MB), and a parent that
        # big makes every fork of our workers slower, which `bandmate prepare` never has.
        def miditok_all() -> tuple[float, float, int]:
            out = subprocess.run(
                [sys.executable, __file__, folder, "--miditok-only"],
                capture_output=True,
                text=True,
                check=True,
            )
            return tuple(json.loads(out.stdout.strip().splitlines()[-1]))

    # Every measurement once per round, rounds repeated: a change in the machine's load hits
    # all of them alike; each figure is the best of its rounds.
    runs: dict[str, list] = {k: [] for k in ("w1", "wn", "a1", "an", "enc", "once", "mt")}
    control: list[float] = []
    try:
        run(1)  # warm the page cache and imports
        for _ in range(a.repeat):
            runs["w1"].append(run(1))
            runs["wn"].append(run(workers))
            runs["a1"].append(run(1, aug, "aug"))
            runs["an"].append(run(workers, aug, "aug"))
            control.append(_control(workers))
            runs["enc"].append(_once(lambda: encode_all(cfg)))
            runs["once"].append(_once(lambda: encode_all(once)))
            if miditok_all is not None:
                runs["mt"].append(miditok_all())
        assert (tmp / "w1" / "train-00000.bin").read_bytes() == (
            tmp / f"w{workers}" / "train-00000.bin"
        ).read_bytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def best(key: str) -> tuple[float, float, object]:
        r = runs[key]
        return min(x[0] for x in r), min(x[1] for x in r), r[-1][2]

    t1, c1, m1 = best("w1")
    tn, _, _ = best("wn")
    te, _, enc_tokens = best("enc")
    t_once, c_once, once_tokens = best("once")
    tokens = m1["tokens"]["train"] + m1["tokens"]["val"]
    result: dict = {
        "folder": folder,
        "meter": meter,
        "files": len(files),
        "files_ok": m1["files_ok"],
        "tokens": tokens,
        "samples": m1["samples"]["train"] + m1["samples"]["val"],
        "workers": workers,
        "repeat": a.repeat,
        "one_worker_s": round(t1, 3),
        "all_workers_s": round(tn, 3),
        "encode_only_s": round(te, 3),
        "hop_bars": cfg.window_hop,
        "encode_only_tokens_per_s_per_core": round(enc_tokens / te),
        "each_note_once_tokens": once_tokens,
        "each_note_once_s": round(t_once, 3),
        "each_note_once_tokens_per_s_per_core": round(once_tokens / t_once),
        "files_per_s_per_core": round(len(files) / t1, 1),
        "tokens_per_s_per_core": round(tokens / t1),
        "parallel_speedup": round(t1 / tn, 3),
        "parallel_speedup_default_augmentation": round(best("a1")[0] / best("an")[0], 3),
        "augmented_tokens": best("a1")[2]["tokens"]["train"],
        # The same ratio for processes that only spin, measured between our runs: the
        # parallelism the machine itself offered (ideal = workers).
        "parallel_speedup_control": round(max(control), 3),
        # CPU-time figures: what the wall-clock ones would be on an idle core.
        "one_worker_cpu_s": round(c1, 3),
        "tokens_per_cpu_s": round(tokens / c1),
        "each_note_once_tokens_per_cpu_s": round(once_tokens / c_once),
    }
    if runs["mt"]:
        tm, cm, mt_tokens = best("mt")
        result["miditok"] = "MidiTok 3.1.0 MMM(base_tokenizer=TSD), default TokenizerConfig"
        result["miditok_tokens"] = mt_tokens
        result["miditok_s"] = round(tm, 3)
        result["miditok_tokens_per_s_per_core"] = round(mt_tokens / tm)
        result["miditok_tokens_per_cpu_s"] = round(mt_tokens / cm)
        mt_rate = result["miditok_tokens_per_s_per_core"]
        result["speedup_vs_miditok"] = round(result["tokens_per_s_per_core"] / mt_rate, 2)
        result["speedup_vs_miditok_each_note_once"] = round(
            result["each_note_once_tokens_per_s_per_core"] / mt_rate, 2
        )
        mt_cpu = result["miditok_tokens_per_cpu_s"]
        result["speedup_vs_miditok_cpu"] = round(result["tokens_per_cpu_s"] / mt_cpu, 2)
        result["speedup_vs_miditok_each_note_once_cpu"] = round(
            result["each_note_once_tokens_per_cpu_s"] / mt_cpu, 2
        )
    result["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_pressure_before": psi_before,
        "cpu_pressure_after": _cpu_pressure(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
