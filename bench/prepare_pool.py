"""Side by side: `bandmate prepare` through its own process pool and through standard pools.

    python bench/prepare_pool.py [--rounds 7] [--variants own,ppe-forkserver,pebble-fork]

Why this exists: issue 13 asks for a standard pool unless a side-by-side measurement shows
it more than 10% slower. Everything but the pool is the same in every variant: the listing,
the work units, the `RunContext`, `units.run_chunk` (the function the workers call),
`units.write_group` for the merge's writes, and `run.prepare` itself; only the `Workers`
class that `run.prepare` drives is swapped (monkeypatched in this script, no user-facing
flag). Variants:

- ``own``: `training.corpus.workers.Workers` as shipped (bare fork, a pipe per worker, two
  units held per worker, heap kept, codec warmed in the parent before the fork).
- ``ppe-forkserver``: `concurrent.futures.ProcessPoolExecutor` with the ``forkserver``
  context (the server preloads the package and this script, so workers fork from a process
  that has numpy and symusic imported); each worker warms the codec and keeps its heap in
  the initializer; two units per worker in flight (more are never submitted, so the
  biggest-first reordering after `meanwhile` still applies). A crashed or timed-out worker
  breaks the whole executor and fails every unit in flight with `BrokenProcessPool`, with
  no word on which unit did it: the executor is replaced, the suspects are re-run one at a
  time in it, and the one that breaks it again is handed back as died (re-run file by file
  by `run.prepare`, as with the own pool). Cost of one crash: a new executor (new workers
  forked and warmed) plus up to 2 x workers units run serially.
- ``pebble-fork`` / ``pebble-forkserver``: `pebble.ProcessPool` (a well-kept library with
  per-task timeouts): a crashed worker fails only its own task (`ProcessExpired`) and is
  replaced, so crash isolation is as precise as the own pool's.

The per-file timeout is the same in every variant: `units.process_file`'s SIGALRM timer,
with SIGALRM left at its default action in the workers, so a stuck file kills its worker
and is found by the crash path.

Each timed run is a fresh Python process (``--one``) that imports the package, then times
`prepare()` alone: as the `bandmate prepare` command does, every run starts its pool from
nothing (a forkserver kept warm across runs in one process would hide its start-up, which
every command pays). Rounds are interleaved (variants alternate within a round, their order
reversed every other round) and the load average is recorded per round: the machine is
shared, so the ratio of interleaved rounds is what counts. Output folders of the last round
are compared file by file across variants (and across worker counts). The last line is
JSON; it is also saved to bench/results/prepare-pool.json.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPORA = {
    "jsfakes": (SHARED / "jsfakes", None),
    "pop909-300": (SHARED / "pop909-300", "assume-4/4"),
}
RESULT = Path(__file__).resolve().parent / "results" / "prepare-pool.json"

# --------------------------------------------------------------------------- in the workers

_CTX = None
_SCRATCH = None


def _fault(crash: str | None, hang: str | None) -> None:
    """Make files whose path contains `crash` kill their worker and `hang` never return (as
    tests/support/faults.py does), to check the crash path of a variant."""
    if not (crash or hang):
        return
    from bandmate.training.corpus import units

    real = units.encode_source

    def encode_source(f, cfg):
        if crash and crash in f.path:
            os._exit(70)
        if hang and hang in f.path:
            time.sleep(3600)
        return real(f, cfg)

    units.encode_source = encode_source


def _init(ctx, warm: bool, crash: str | None, hang: str | None) -> None:
    """A standard pool's worker initializer: what `workers.worker_main` does at its start."""
    global _CTX, _SCRATCH
    from bandmate.training.corpus.procs import keep_heap, warm_up
    from bandmate.training.corpus.units import Scratch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the per-file timer must end the process
    with contextlib.suppress(OSError):
        os.nice(1)
    keep_heap()
    if warm:  # forkserver: the parent's warm codec is not inherited
        warm_up(ctx.cfg)
    _fault(crash, hang)
    _CTX, _SCRATCH = ctx, Scratch()


def _encode(c: int) -> dict:
    from bandmate.training.corpus.units import run_chunk

    return run_chunk(_CTX, c)


def _write(tasks: list) -> int:
    from bandmate.training.corpus.units import write_group

    return write_group(tasks, _SCRATCH)


def _unlink(paths: list[str]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            os.unlink(p)


# --------------------------------------------------------------------------- in the parent

_PREFETCH = 2
log = logging.getLogger("bandmate.prepare")


class StdWorkers:
    """`workers.Workers`'s interface (as `run` and `merge` use it) over a standard pool."""

    def __init__(self, n: int, ctx, kind: str, faults: tuple) -> None:
        import multiprocessing as mp

        self.n, self.ctx, self.kind, self.faults = n, ctx, kind, faults
        self.pebble = kind.startswith("pebble")
        self.mpc = mp.get_context(kind.split("-", 1)[1])
        if self.mpc.get_start_method() == "forkserver":
            from multiprocessing import forkserver

            # __main__ too: this script's worker functions, imported once in the server.
            self.mpc.set_forkserver_preload(
                ["__main__", "bandmate.training.corpus.units", "bandmate.training.corpus.procs"]
            )
            forkserver.ensure_running()  # starts now, while the parent lists and hashes
        self.pool = None
        self.writing: list = []
        self.releasing: list = []
        self._new_pool()

    def _new_pool(self) -> None:
        warm = self.mpc.get_start_method() != "fork"
        args = (self.ctx, warm, *self.faults)
        if self.pebble:
            import pebble

            self.pool = pebble.ProcessPool(
                self.n, initializer=_init, initargs=args, context=self.mpc
            )
        else:
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(
                self.n, mp_context=self.mpc, initializer=_init, initargs=args
            )

    def _submit(self, fn, *args):
        if self.pebble:
            return self.pool.schedule(fn, args)
        return self.pool.submit(fn, *args)

    def _dead(self, fut) -> bool:
        """Did the task's worker die (crash, or the per-file timer's SIGALRM)?"""
        from concurrent.futures.process import BrokenProcessPool

        e = fut.exception()
        if e is None:
            return False
        if self.pebble:
            from pebble import ProcessExpired

            if isinstance(e, ProcessExpired):
                return True
        elif isinstance(e, BrokenProcessPool):
            return True
        raise e

    def _replace_pool(self) -> None:
        if self.pebble:
            self.pool.stop()
        else:
            self.pool.shutdown(wait=False, cancel_futures=True)
        self._new_pool()

    def _find_culprit(self, suspects: list[int], on_done) -> list[int]:
        """ProcessPoolExecutor only: a broken executor failed every unit in flight; re-run
        them one at a time in a fresh one to find the one that breaks it."""
        died = []
        for c in sorted(suspects):
            fut = self.pool.submit(_encode, c)
            if self._dead(fut):
                died.append(c)
                self._replace_pool()
            else:
                on_done(c, fut.result())
        return died

    def encode(self, units, on_done, meanwhile=None) -> list[int]:
        from concurrent.futures import FIRST_COMPLETED, wait

        queue = list(reversed(units))
        died: list[int] = []
        inflight: dict = {}

        def feed() -> None:
            while queue and len(inflight) < _PREFETCH * self.n:
                c = queue.pop()
                inflight[self._submit(_encode, c)] = c

        feed()
        if meanwhile is not None:
            key = meanwhile()
            if key is not None:
                queue.sort(key=key)
        while inflight:
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            broken = []
            for fut in done:
                c = inflight.pop(fut)
                if self._dead(fut):
                    broken.append(c)
                else:
                    on_done(c, fut.result())
            for c in broken:
                log.warning("a worker died in work unit %d (or beside it)", c)
            if broken and self.pebble:
                died += broken  # pebble names the task whose worker died
            elif broken:
                # The executor is broken: every other unit in flight fails too.
                for fut in list(inflight):
                    c = inflight.pop(fut)
                    if self._dead(fut):
                        broken.append(c)
                    else:
                        on_done(c, fut.result())
                self._replace_pool()
                died += self._find_culprit(broken, on_done)
            feed()
        return died

    def send_writes(self, groups: list) -> None:
        self.writing = [(g, self._submit(_write, g)) for g in groups if g]

    def wait_writes(self) -> int:
        from bandmate.training.corpus.units import write_group

        written = 0
        for g, fut in self.writing:
            written += write_group(g) if self._dead(fut) else fut.result()
        self.writing = []
        return written

    def release(self, remove=()) -> list[str]:
        share = -(-len(remove) // (self.n + 1))
        self.releasing = [
            self._submit(_unlink, list(remove[j * share : (j + 1) * share])) for j in range(self.n)
        ]
        return list(remove[self.n * share :])

    def wait_released(self) -> None:
        for fut in self.releasing:
            with contextlib.suppress(Exception):
                fut.result()

    def close(self, wait: bool = True) -> None:
        if self.pebble:
            self.pool.close()
            if wait:
                self.pool.join()
        else:
            self.pool.shutdown(wait=wait)

    def kill(self) -> None:
        if self.pebble:
            self.pool.stop()
            self.pool.join()
        else:
            for p in list((self.pool._processes or {}).values()):
                with contextlib.suppress(Exception):
                    p.kill()
            self.pool.shutdown(wait=False, cancel_futures=True)


def _one(a: argparse.Namespace) -> int:
    """One timed `prepare` with variant `a.one`, in this fresh process; prints JSON."""
    from bandmate.training.corpus import run
    from bandmate.training.corpus.config import PrepareConfig

    logging.basicConfig(level=logging.WARNING)
    faults = (a.crash, a.hang)
    # Forked workers inherit it, and so do the one-file processes of `isolate_chunk`.
    _fault(*faults)
    if a.one != "own":
        if not a.one.endswith("-fork"):
            run.warm_up = lambda cfg: None  # only a forked worker would inherit it
        run.Workers = lambda n, ctx, mpc: StdWorkers(n, ctx, a.one, faults)
    kw = {"meter": a.meter} if a.meter else {}
    cfg = PrepareConfig(sources=(a.folder,), **kw)
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    man = run.prepare(cfg, out, workers=a.workers, progress=False, file_timeout=a.file_timeout)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall": wall, "files_skipped": man["files_skipped"]}))
    return 0


def _run_one(variant: str, folder: Path, meter, workers: int, out: Path, extra=()) -> dict:
    cmd = [sys.executable, __file__, "--one", variant, "--folder", str(folder)]
    cmd += ["--workers", str(workers), "--out", str(out), *extra]
    if meter:
        cmd += ["--meter", meter]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{variant} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _same_tree(a: Path, b: Path) -> list[str]:
    """Files that differ between two output folders (manifest.json: ignoring no key)."""
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if fa != fb:
        return [f"file lists differ: {sorted(set(map(str, fa)) ^ set(map(str, fb)))}"]
    return [str(f) for f in fa if not filecmp.cmp(a / f, b / f, shallow=False)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--variants", default="own,ppe-forkserver,pebble-fork,pebble-forkserver")
    ap.add_argument("--corpora", default="jsfakes,pop909-300")
    ap.add_argument("--workers-list", default="2,1")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--meter", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--crash", help=argparse.SUPPRESS)
    ap.add_argument("--hang", help=argparse.SUPPRESS)
    ap.add_argument("--file-timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        return _one(a)

    variants = a.variants.split(",")
    corpora = a.corpora.split(",")
    wlist = [int(w) for w in a.workers_list.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-pool-"))
    times: dict = {}
    loads: list = []
    run_loads: list = []  # 1-minute load before each run, in run order
    identity: dict = {}
    try:
        for name in corpora:  # warm the page cache and the imports
            folder, meter = CORPORA[name]
            _run_one("own", folder, meter, 2, tmp / "warm")
        for r in range(a.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            load = os.getloadavg()
            loads.append([round(x, 2) for x in load])
            for name in corpora:
                folder, meter = CORPORA[name]
                for w in wlist:
                    for v in order:
                        out = tmp / f"{name}-w{w}-{v}"
                        run_loads.append(round(os.getloadavg()[0], 2))
                        res = _run_one(v, folder, meter, w, out)
                        times.setdefault(name, {}).setdefault(f"w{w}", {}).setdefault(
                            v, []
                        ).append(round(res["wall"], 4))
            print(f"round {r + 1}: load {loads[-1]}", file=sys.stderr, flush=True)
        for name in corpora:
            ref = tmp / f"{name}-w{wlist[0]}-own"
            for w in wlist:
                for v in variants:
                    out = tmp / f"{name}-w{w}-{v}"
                    if out != ref:
                        identity[f"{name} w{w} {v} vs w{wlist[0]} own"] = (
                            _same_tree(ref, out) or "identical"
                        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary: dict = {}
    for name, by_w in times.items():
        s = summary[name] = {}
        for w, by_v in by_w.items():
            for v, ts in by_v.items():
                s.setdefault(v, {})[w] = {
                    "best": min(ts),
                    "median": round(statistics.median(ts), 4),
                }
        for v in variants:
            if "w1" in s[v] and "w2" in s[v]:
                s[v]["parallel_speedup_best"] = round(s[v]["w1"]["best"] / s[v]["w2"]["best"], 3)
                s[v]["parallel_speedup_median"] = round(
                    s[v]["w1"]["median"] / s[v]["w2"]["median"], 3
                )
            if v != "own":
                for w in by_w:
                    pair = [x / y for x, y in zip(by_w[w][v], by_w[w]["own"], strict=True)]
                    s[v][w]["ratio_vs_own_best"] = round(
                        s[v][w]["best"] / s["own"][w]["best"], 3
                    )
                    s[v][w]["ratio_vs_own_median"] = round(
                        s[v][w]["median"] / s["own"][w]["median"], 3
                    )
                    s[v][w]["ratio_vs_own_median_of_rounds"] = round(
                        statistics.median(pair), 3
                    )
    result = {
        "what": "prepare() wall seconds per run, fresh process per run, interleaved rounds",
        "settings": {
            "jsfakes": "default PrepareConfig (4 bars, default transpositions, meter strict)",
            "pop909-300": "default PrepareConfig, meter assume-4/4",
        },
        "rounds": a.rounds,
        "variants": variants,
        "summary": summary,
        "times": times,
        "loadavg_per_round": loads,
        "loadavg_1min_per_run": run_loads,
        "byte_identity": identity,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
    }
    line = json.dumps(result)
    if not a.no_save:
        RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
