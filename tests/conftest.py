"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import time

import pytest
from support.jackserver import JackServer


@pytest.fixture(scope="session")
def jack_server():
    """One JACK server for the whole test session (bridge and app tests alike), named after
    this process, stopped by its PID. One per process: libjack clients of two servers in one
    process do not mix (a second server made the app's live tests miss each other's ports).

    256 frames: at 64 this shared machine has xruns in which JACK drops MIDI; tests must not
    depend on luck (the benchmark measures 64).
    """
    srv = JackServer(f"bm-test-{os.getpid()}", period=256, rate=48000)
    srv.start()
    # A server just started can xrun in its first cycles on a busy machine, and JACK drops
    # the MIDI of such a cycle: let it settle (no xrun for half a second, 5 s at most) before
    # the first test asserts exact steps against the clocks it sent.
    quiet_since, seen, deadline = time.monotonic(), srv.xruns, time.monotonic() + 5.0
    while time.monotonic() < deadline and time.monotonic() - quiet_since < 0.5:
        time.sleep(0.05)
        if srv.xruns != seen:
            quiet_since, seen = time.monotonic(), srv.xruns
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def band_model_dir(tmp_path_factory):
    """A tiny random-weight model folder with the gm-family codec (the band model's labels),
    exported once; its labels_seen are those of a band corpus (support.models.BAND_LABELS)."""
    from support.models import BAND_CODEC, BAND_LABELS, export_random

    return export_random(tmp_path_factory.mktemp("band") / "band", codec=BAND_CODEC,
                         labels_seen=BAND_LABELS, seed=2)
