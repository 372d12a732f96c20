"""Fixtures for the bridge tests: a private JACK server (dummy backend, 256 frames)."""

from __future__ import annotations

import os

import pytest
from bandmate.bridge.jackserver import JackServer


@pytest.fixture(scope="session")
def jack_server():
    """One JACK server for the test session, named after this process, stopped by its PID.

    256 frames: at 64 this shared machine has xruns in which JACK drops MIDI; tests must not
    depend on luck (the benchmark measures 64).
    """
    srv = JackServer(f"bm-test-{os.getpid()}", period=256, rate=48000)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()



@pytest.fixture
def assert_no_hanging(jack_server):
    """``assert_no_hanging(hanging)``: no note-on without its note-off, unless JACK itself had
    an xrun during the test (JACK drops the MIDI of a cycle it loses; bandmate cannot resend
    what JACK threw away; tests also check bandmate's own note-on/off counts)."""
    before = jack_server.xruns

    def check(hanging: list) -> None:
        if jack_server.xruns == before:
            assert not hanging, hanging

    return check
