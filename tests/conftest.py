"""Fixtures shared by every test package."""

from __future__ import annotations

import os

import pytest
from bandmate.bridge.jackserver import JackServer


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
    try:
        yield srv
    finally:
        srv.stop()
