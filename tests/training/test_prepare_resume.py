"""The resume guarantee: a `bandmate prepare` killed mid-run and started again finishes with
exactly the bytes of an uninterrupted run.

A real subprocess (with its worker processes) is killed with SIGKILL at two moments of the
work phase; a third kill lands in the merge by interrupting it in-process just before the
manifest. Every restart uses the same arguments.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bandmate.models.midi_io import write_midi
from bandmate.training import prepare as P
from bandmate.training.corpus import merge as corpus_merge
from support import faults

from bandmate.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_prepare import random_piece, read_tree

N_FILES = 80


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_corpus")
    for i in range(N_FILES):
        write_midi(random_piece(100 + i, bars=24), root / f"f{i:03d}.mid")
    (root / "zz_bad.mid").write_bytes(b"MThd broken")
    return root


def _args(src: Path, out: Path, workers: int) -> list[str]:
    return [
        "prepare", str(src), "-o", str(out), "--workers", str(workers), "--chunk-files", "1",
        "--progress", "off", "--transpose=-2:2",
    ]  # fmt: skip


def _start(src: Path, out: Path, hang: str | None = None) -> subprocess.Popen:
    """`bandmate prepare` in its own process; ``hang``: a file that never finishes reading."""
    argv, env = faults.command(*_args(src, out, 2), hang=hang)
    return subprocess.Popen(
        argv if hang else [sys.executable, "-m", "bandmate", *_args(src, out, 2)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill takes the workers too
        env=env,
    )


def _kill_when(proc: subprocess.Popen, out: Path, chunks: int, timeout: float = 120) -> int:
    """SIGKILL the run (and its workers) once `chunks` work units are on disk."""
    work = out / P.WORK
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end and proc.poll() is None:
        done = len(list(work.glob("chunk-*.bin"))) if work.exists() else 0
        if done >= chunks:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return len(list(work.glob("chunk-*.bin")))


def test_killed_run_resumes_to_identical_bytes(corpus, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    assert main(_args(corpus, ref, 1)) == 0
    expected = read_tree(ref)

    out = tmp_path / "out"
    first = _kill_when(_start(corpus, out), out, 1)
    assert not (out / "manifest.json").exists()
    assert 1 <= first < N_FILES + 1
    second = _kill_when(_start(corpus, out), out, first + 20)
    assert second > first and not (out / "manifest.json").exists()

    # A kill during the merge: shards are written, the manifest is not.
    real = corpus_merge.atomic_write_bytes  # the merge writes the manifest with it

    def die_before_manifest(path, data):
        if Path(path).name == "manifest.json":
            raise KeyboardInterrupt("killed during the merge")
        real(path, data)

    monkeypatch.setattr(corpus_merge, "atomic_write_bytes", die_before_manifest)
    assert main(_args(corpus, out, 2)) == 130
    assert (out / "train-00000.bin").exists() and not (out / "manifest.json").exists()
    monkeypatch.setattr(corpus_merge, "atomic_write_bytes", real)

    proc = subprocess.run(
        [sys.executable, "-m", "bandmate", *_args(corpus, out, 2)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "0 done before" not in proc.stderr
    assert read_tree(out) == expected


def test_kills_at_random_moments_still_end_in_the_same_bytes(corpus, tmp_path):
    """Kill after random delays (start-up, work, merge, clean-up alike) until a run finishes."""
    import random

    ref = tmp_path / "ref"
    t0 = time.monotonic()
    proc = _start(corpus, ref)
    assert proc.wait(timeout=300) == 0
    whole = time.monotonic() - t0  # interpreter start-up included, as in the killed runs
    expected = read_tree(ref)
    out = tmp_path / "out"
    rng = random.Random(3)
    kills = 0
    for _ in range(12):
        proc = _start(corpus, out)
        try:
            proc.wait(timeout=rng.uniform(0.3, 0.98) * whole)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            kills += 1
            continue
        assert proc.returncode == 0, proc.stderr.read().decode()
        break
    else:
        pytest.fail("the run never finished")
    assert kills >= 1
    assert read_tree(out) == expected


def _children(pid: int) -> set[int]:
    """Live processes whose parent is `pid` (zombies left for their reaper count as gone)."""
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(d.name))
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper has finished)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _wait_for_units(proc: subprocess.Popen, out: Path, n: int) -> None:
    t_end = time.monotonic() + 120
    while time.monotonic() < t_end and proc.poll() is None:
        work = out / P.WORK
        if work.exists() and len(list(work.glob("chunk-*.bin"))) >= n:
            return
        time.sleep(0.002)
    pytest.fail("the run ended, or never started, before it could be interrupted")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_ctrl_c_stops_the_workers_and_the_run_resumes(corpus, tmp_path):
    """Ctrl-C reaches the whole process group: the workers ignore it, the parent stops them,
    exits with 130, and the same command then finishes with the uninterrupted bytes."""
    ref = tmp_path / "ref"
    assert main(_args(corpus, ref, 1)) == 0
    out = tmp_path / "out"
    # The last file never finishes reading (the fault injection of a stuck parser; the file
    # timeout is 120 s), so the run cannot end before the Ctrl-C lands however fast the
    # other files go: the test waits for a state (units on disk), never for time.
    proc = _start(corpus, out, hang=f"f{N_FILES - 1:03d}.mid")
    _wait_for_units(proc, out, 3)
    assert proc.poll() is None
    workers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
    assert proc.wait(timeout=60) == 130
    assert "interrupted" in proc.stderr.read().decode()
    t_end = time.monotonic() + 10
    while time.monotonic() < t_end and any(_alive(w) for w in workers):
        time.sleep(0.01)
    assert not any(_alive(w) for w in workers), "a worker outlived the run"
    assert not (out / "manifest.json").exists()
    assert main(_args(corpus, out, 2)) == 0
    assert read_tree(out) == read_tree(ref)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_exit_when_the_parent_is_killed_alone(corpus, tmp_path):
    """SIGKILL to the parent only (not its group): each worker sees end of file on its pipe
    and exits after its current unit, instead of living on as an orphan."""
    out = tmp_path / "out"
    proc = _start(corpus, out)
    _wait_for_units(proc, out, 3)
    workers = _children(proc.pid)
    assert workers, "no worker processes found"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    t_end = time.monotonic() + 20
    while time.monotonic() < t_end and any(_alive(w) for w in workers):
        time.sleep(0.01)
    left = [w for w in workers if _alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, "workers outlived their parent"
