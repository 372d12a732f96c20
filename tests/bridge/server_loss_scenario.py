"""Run as a script by test_bridge_ports.py: kill the JACK server under a running Bridge.

In its own process on purpose: libjack (bundled in python-rtmidi) frees the clients of a
vanished server when the next client connects, and a process that also holds clients on a
second server (as a pytest session with its shared server does) was seen to crash later in
rtmidi's cleanup. A real user has one server; so does this script. Prints a JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the support package

from bandmate.bridge import Bridge, BridgeConfig
from bandmate.bridge.bridge import wait_until
from bandmate.models.types import Note
from support.dawsim import DawSim, pair_notes
from support.jackserver import JackServer


def main() -> int:
    name = f"bm-loss-{os.getpid()}"
    os.environ["JACK_DEFAULT_SERVER"] = name
    res: dict = {}
    srv = JackServer(name, period=256, set_env=False).start()
    cfg = BridgeConfig(api="jack", in_name="bm in loss", out_name="bm out loss",
                       clock="internal", tempo=160, watch_s=0.2)
    br = Bridge(cfg).open()
    try:
        srv.stop()
        res["lost_reported"] = wait_until(lambda: br.port_lost == 1, 10)
        srv = JackServer(name, period=256, set_env=False).start()
        res["reopened"] = wait_until(lambda: br.reopened == 1, 10)
        daw = DawSim(cfg.in_name, cfg.out_name, name="daw loss")
        bar = br.scheduler.next_bar_line(lead_ms=100)
        br.scheduler.add_notes([Note(0, 60, 2)], 0, 80, origin_step=bar * 16)
        res["played"] = wait_until(lambda: br.scheduler.stats.notes_off >= 1, 10)
        res["heard"] = wait_until(lambda: len(pair_notes(daw.messages())[0]) == 1, 3)
        daw.close()
    finally:
        br.close()
        srv.stop()
    print(json.dumps(res))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown of the dead server's abandoned clients


if __name__ == "__main__":
    sys.exit(main())
