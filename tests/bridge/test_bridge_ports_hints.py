"""What the port layer tells the user when JACK is not there (no server needed)."""

from __future__ import annotations

import pytest
from bandmate.bridge import ports


@pytest.mark.parametrize("has_seq", [True, False])
def test_no_jack_server_suggests_alsa_only_where_alsa_can_work(monkeypatch, has_seq):
    monkeypatch.setattr(ports, "_try_api", lambda api: "cannot connect")
    monkeypatch.setattr(ports.os.path, "exists",
                        lambda p: has_seq if p == ports.SEQ_DEVICE else False)
    with pytest.raises(ports.PortError) as e:
        ports.resolve_api("jack")
    msg = str(e.value)
    assert "start a JACK server" in msg
    assert ("or pass --api alsa" in msg) == has_seq
    if not has_seq:
        assert "/dev/snd/seq is missing" in msg


def test_libjack_printing_goes_to_the_log_at_a_trickle(caplog):
    if not ports.quiet_libjack():
        pytest.skip("no libjack")
    assert ports.quiet_libjack()  # idempotent
    _lib, cb = ports._jack_quiet[:2]
    with caplog.at_level("DEBUG", logger="bandmate.bridge.ports"):
        for _ in range(50):  # as libjack does while its server is down
            cb(b"Cannot connect to server socket")
    shown = [r for r in caplog.records if "libjack:" in r.message]
    assert len(shown) <= 1
