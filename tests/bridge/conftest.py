"""Fixtures for the bridge tests: a private JACK server (dummy backend, 256 frames)."""

from __future__ import annotations

import pytest


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
