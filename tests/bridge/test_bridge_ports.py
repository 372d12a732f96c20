"""Backend choice, error messages, `bandmate ports`, and losing / regaining the JACK server."""

from __future__ import annotations

import json
import logging
import os

import pytest
import rtmidi
from bandmate.bridge import Bridge, BridgeConfig
from bandmate.bridge.dawsim import DawSim, pair_notes
from bandmate.bridge.facade import wait_until
from bandmate.bridge.jackserver import JackServer
from bandmate.bridge.ports import PortError, resolve_api
from bandmate.models.types import Note

from bandmate.cli import main as cli_main

HAVE_ALSA_SEQ = os.path.exists("/dev/snd/seq")


@pytest.mark.jack
def test_auto_uses_alsa_or_falls_back_to_jack(jack_server, caplog):
    with caplog.at_level(logging.INFO):
        api = resolve_api("auto")
    if HAVE_ALSA_SEQ:
        assert api == rtmidi.API_LINUX_ALSA
    else:
        assert api == rtmidi.API_UNIX_JACK
        assert any("no ALSA sequencer" in r.message and "using JACK" in r.message
                   for r in caplog.records)


def test_errors_say_what_to_do(monkeypatch):
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"no-such-server-{os.getpid()}")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    with pytest.raises(PortError, match="start a JACK server"):
        resolve_api("jack")
    if not HAVE_ALSA_SEQ:
        with pytest.raises(PortError, match=r"no ALSA sequencer.*snd-seq.*JACK.*--api"):
            resolve_api("auto")
        with pytest.raises(PortError, match="modprobe snd-seq"):
            resolve_api("alsa")
    with pytest.raises(ValueError, match="api must be one of"):
        resolve_api("oss")


@pytest.mark.jack
def test_ports_command_lists_bandmate_ports(jack_server, capsys):
    cfg = BridgeConfig(api="jack", in_name="bm in ports", out_name="bm out ports", watch_s=0)
    with Bridge(cfg):
        assert cli_main(["ports", "--api", "jack", "--json"]) == 0
        got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert got["api"] == "jack"
        assert any("bm out ports" in n for n in got["inputs"])  # readable: our output
        assert any("bm in ports" in n for n in got["outputs"])
        assert cli_main(["ports", "--api", "jack"]) == 0
        assert "MIDI system: jack" in capsys.readouterr().out


@pytest.mark.jack
def test_ports_command_error_exit(monkeypatch, capsys):
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"no-such-server-{os.getpid()}")
    assert cli_main(["ports", "--api", "jack"]) == 2
    assert "start a JACK server" in capsys.readouterr().err


@pytest.mark.jack
def test_server_loss_is_reported_and_ports_reopen(monkeypatch):
    """Kill the JACK server under a running bridge: no crash, reported, reopened on return."""
    name = f"bm-loss-{os.getpid()}"
    monkeypatch.setenv("JACK_DEFAULT_SERVER", name)  # this test's own server, also on restart
    srv = JackServer(name, period=256, set_env=False).start()
    br = None
    try:
        cfg = BridgeConfig(api="jack", in_name="bm in loss", out_name="bm out loss",
                           clock="internal", tempo=160, watch_s=0.2)
        br = Bridge(cfg).open()
        srv.stop()
        assert wait_until(lambda: br.port_lost == 1, 10)
        srv = JackServer(name, period=256, set_env=False).start()
        assert wait_until(lambda: br.reopened == 1, 10)
        daw = DawSim(cfg.in_name, cfg.out_name, name="daw loss")
        try:
            bar = br.scheduler.next_bar_line(lead_ms=100)
            br.scheduler.add_notes([Note(0, 60, 2)], 0, 80, origin_step=bar * 16)
            assert wait_until(lambda: br.scheduler.stats.notes_off >= 1, 10)
            assert wait_until(lambda: len(pair_notes(daw.messages())[0]) == 1, 3)
        finally:
            daw.close()
    finally:
        if br is not None:
            br.close()
        srv.stop()
