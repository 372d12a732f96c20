"""The PyInstaller one-folder build starts (offscreen) and generates: packaging/desktop/build.sh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_pyinstaller_bundle_builds_and_runs(model_dir):
    env = {**os.environ, "PYTHON": sys.executable, "MODEL": str(model_dir)}
    r = subprocess.run(
        ["bash", "packaging/desktop/build.sh"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "bandmate 0." in out and "smoke test passed" in out
    assert "continue done: 1 take(s)" in out, out[-4000:]
