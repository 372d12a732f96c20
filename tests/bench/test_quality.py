"""bench/quality.py on a small sample of the held-out chorales: a regression guard.

The shipped model's added bass must be clearly more consonant with the soprano than random
pitches on the same rhythm (the first shipped model was not: 0.56 against 0.49), every task
must succeed with no repair, and the model must have been trained without the held-out set.
The goals themselves are measured on all 60 chorales by the benchmark, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JSF = ROOT.parent / "shared" / "data" / "jsfakes"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def figures():
    if not JSF.is_dir():
        pytest.skip(f"{JSF} (the shared chorale data) is not beside this checkout")
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "quality.py"), "--n", "12", "--seed", "1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_shipped_model_never_saw_the_held_out_chorales(figures):
    assert figures["holdout_verified"] is True
    assert figures["chorales"] == 12


def test_added_bass_is_clearly_better_than_random_pitches(figures):
    model, own, rand = figures["headline"]["BASS"]["consonance"]
    assert model >= rand + 0.15, figures["headline"]["BASS"]
    assert model >= 0.85 * own, figures["headline"]["BASS"]


def test_every_task_succeeds_without_repairs(figures):
    assert figures["success_rate"] == 1.0 and figures["repairs"] == 0, figures["errors"]
    for voice in ("SOPRANO", "ALTO", "TENOR", "BASS"):
        assert figures["headline"][voice]["in_range"] >= 0.95


def test_the_model_listens_to_the_other_voices(figures):
    gain = figures["context_gain"]["BASS"]
    assert gain["nll_own_context"] < gain["nll_other_context"]


def test_a_model_trained_on_the_held_out_set_is_refused(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "bandmate.json").write_text(json.dumps({"format": "bandmate-model", "name": "x"}))
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "quality.py"), "--model", str(model)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "--allow-unverified" in out.stderr
