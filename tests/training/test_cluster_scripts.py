"""packaging/training's launchers, run by bash with fake SLURM commands (no SLURM, no GPU):
the sbatch script's time-limit path (USR1 -> save -> requeue) and torchrun_train.sh's exit
status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "packaging" / "training" / "slurm_train.sbatch"
TORCHRUN_SH = ROOT / "packaging" / "training" / "torchrun_train.sh"

FAKES = {
    "scontrol": """#!/usr/bin/env bash
echo "$*" >> "$FAKE/scontrol.log"
if [ "$1 $2" = "show hostnames" ]; then echo node1; echo node2; fi
""",
    "scancel": """#!/usr/bin/env bash
echo "$*" >> "$FAKE/scancel.log"
kill -TERM "$(cat "$FAKE/srun.pid")"
""",
    # The job step: runs until SIGTERM, then "saves" and exits 75 like bandmate train.
    "srun": """#!/usr/bin/env bash
echo "$*" > "$FAKE/srun.args"
trap 'echo saved > "$FAKE/saved"; exit 75' TERM
if [ -n "${FAKE_SRUN_EXIT:-}" ]; then exit "$FAKE_SRUN_EXIT"; fi
echo $$ > "$FAKE/srun.pid.tmp" && mv "$FAKE/srun.pid.tmp" "$FAKE/srun.pid"
while :; do sleep 0.05; done
""",
}


@pytest.fixture
def fake_bin(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _env(fake_bin: Path, **extra) -> dict:
    return {
        **os.environ,
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "FAKE": str(fake_bin.parent),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_NNODES": "2",
        **extra,
    }


def test_sbatch_saves_and_requeues_itself_before_the_time_limit(fake_bin, tmp_path):
    env = _env(fake_bin, BANDMATE_IMAGE="/images/bandmate-train.sqsh")
    proc = subprocess.Popen(
        ["bash", str(SBATCH), "/data/prepared", "/data/runs/seed", "--epochs", "3"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (tmp_path / "srun.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@300` sends
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (tmp_path / "saved").exists()  # the step got SIGTERM and saved
    assert (tmp_path / "scancel.log").read_text().split() == ["--signal=TERM", "4242"]
    assert "requeue 4242" in (tmp_path / "scontrol.log").read_text().splitlines()
    args = (tmp_path / "srun.args").read_text()
    assert "--container-image /images/bandmate-train.sqsh" in args
    assert "--container-mounts /data:/data" in args and "--container-workdir /opt/bandmate" in args
    assert "requeued" in err
    header = SBATCH.read_text()
    assert "#SBATCH --signal=B:USR1@" in header and "#SBATCH --requeue" in header


@pytest.mark.parametrize("code", [0, 1])
def test_sbatch_without_the_signal_never_requeues(fake_bin, tmp_path, code):
    env = _env(fake_bin, FAKE_SRUN_EXIT=str(code))
    proc = subprocess.run(
        ["bash", str(SBATCH), "/d", "/r"], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == code
    assert "requeue" not in (tmp_path / "scontrol.log").read_text()
    assert "--container-image" not in (tmp_path / "srun.args").read_text()  # no image: host


@pytest.mark.parametrize(
    ("finished", "torchrun_rc", "want"), [(True, 0, 0), (False, 1, 75), (None, 3, 3)]
)
def test_torchrun_script_passes_auto_resume_and_reports_75_for_a_stopped_run(
    tmp_path, finished, torchrun_rc, want
):
    run = tmp_path / "run"
    run.mkdir()
    fake = tmp_path / "torchrun"
    summary = "" if finished is None else json.dumps({"finished": finished})
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" > {tmp_path}/torchrun.args\n'
        + (f"echo '{summary}' > {run}/summary.json\n" if summary else "")
        + f"exit {torchrun_rc}\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "TORCHRUN": str(fake), "GPUS": "2"}
    proc = subprocess.run(
        ["bash", str(TORCHRUN_SH), "/data", str(run), "--epochs", "1"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == want, proc.stderr
    args = (tmp_path / "torchrun.args").read_text().split()
    assert "--auto-resume" in args and "--resume" not in args
    assert args[args.index("-o") + 1] == str(run) and args[-2:] == ["--epochs", "1"]
