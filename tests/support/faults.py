"""Fault injection for `bandmate prepare`'s crash-isolation tests, from outside the package.

A worker that dies in C++ code or a parser stuck in a loop cannot be made from a real MIDI
file on demand, so the tests wrap the per-file function of `bandmate.training.corpus.units`:
a file whose path contains ``crash`` ends its worker abruptly (``os._exit``, as a segfault
would), one that contains ``hang`` never returns. Workers are forked after the wrap, so they
run it; the runtime package itself holds no test hook.

In the test process: ``with injected(crash="r3.MID"): ...``. For a separate process (a run
to be killed): ``python -m support.faults --hang NAME -- prepare ARGS...`` with ``tests`` on
PYTHONPATH (`command`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bandmate.training.corpus import units

#: Exit status of a worker that "crashed" (EX_SOFTWARE).
CRASH_STATUS = 70


def _faulty(crash: str | None, hang: str | None):
    real = units.encode_source

    def encode_source(f, cfg):
        if crash and crash in f.path:
            os._exit(CRASH_STATUS)
        if hang and hang in f.path:
            time.sleep(3600)
        return real(f, cfg)

    return encode_source


@contextlib.contextmanager
def injected(crash: str | None = None, hang: str | None = None) -> Iterator[None]:
    """Workers started inside the block crash or hang on the files named."""
    real = units.encode_source
    units.encode_source = _faulty(crash, hang)
    try:
        yield
    finally:
        units.encode_source = real


def command(*bandmate_args: object, hang: str | None = None,
            crash: str | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and environment of a `bandmate` run in its own process with faults injected."""
    argv = [sys.executable, "-m", "support.faults"]
    if hang:
        argv += ["--hang", hang]
    if crash:
        argv += ["--crash", crash]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    return [*argv, "--", *map(str, bandmate_args)], env


def _main(argv: list[str]) -> int:
    from bandmate.cli import main

    split = argv.index("--")
    opts, rest = argv[:split], argv[split + 1:]
    named = dict(zip(opts[::2], opts[1::2], strict=True))
    units.encode_source = _faulty(named.get("--crash"), named.get("--hang"))
    return main(rest)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
