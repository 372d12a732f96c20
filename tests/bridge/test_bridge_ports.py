"""Backend choice, error messages, `bandmate ports`, and losing / regaining the JACK server."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rtmidi
from bandmate.bridge import Bridge, BridgeConfig
from bandmate.bridge.bridge import wait_until
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
def test_server_loss_is_reported_and_ports_reopen():
    """Kill the JACK server under a running bridge: no crash, reported, reopened on return
    (in a process of its own; see server_loss_scenario.py)."""
    script = Path(__file__).with_name("server_loss_scenario.py")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=90)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res == {"lost_reported": True, "reopened": True, "played": True, "heard": True}


@pytest.mark.jack
def test_named_port_that_disappears_is_reported_and_reopened(jack_server):
    """Connect-by-name mode (what Windows uses with loopMIDI): the target port goes away and
    comes back; the bridge reports it, silences output, and reconnects."""

    def synth() -> rtmidi.MidiIn:
        m = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, "ext synth")
        m.open_virtual_port("ext synth")
        return m

    target = synth()
    cfg = BridgeConfig(api="jack", in_name="bm in named", out_name="bm out named",
                       connect_out="ext synth", clock="internal", watch_s=0.2)
    with Bridge(cfg) as br:
        target.close_port()
        target.delete()
        assert wait_until(lambda: br.port_lost == 1, 10)
        target = synth()
        assert wait_until(lambda: br.reopened == 1, 10)
        bar = br.scheduler.next_bar_line(lead_ms=100)
        br.scheduler.add_notes([Note(0, 61, 1)], 0, 80, origin_step=bar * 16)
        assert wait_until(lambda: target.get_message() is not None, 10)
    target.delete()
