"""List the MIDI ports bandmate can see (``bandmate ports``).

Why: the first thing to check when the DAW and bandmate do not hear each other is which MIDI
system is in use and which ports exist on it.
"""

from __future__ import annotations

import argparse
import json
import sys

from bandmate.bridge.ports import API_CHOICES, PortError, api_name, list_ports, resolve_api


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", choices=API_CHOICES, default="auto",
                        help="MIDI system (auto: ALSA, else JACK on Linux)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    try:
        api = resolve_api(args.api)
        pl = list_ports(api)
    except PortError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"api": pl.api, "inputs": list(pl.inputs),
                          "outputs": list(pl.outputs)}))
        return 0
    print(f"MIDI system: {api_name(api)}")
    print("ports bandmate can read from (DAW outputs):")
    for n in pl.inputs or ("(none)",):
        print(f"  {n}")
    print("ports bandmate can write to (DAW inputs):")
    for n in pl.outputs or ("(none)",):
        print(f"  {n}")
    return 0
