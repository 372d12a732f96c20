"""Keep the C MIDI libraries' own chatter (libasound, libjack) off stderr unless asked.

Why: on a machine without an ALSA sequencer or a running JACK server, merely listing the MIDI
ports makes libasound and libjack print six lines to stderr on every start of the app ("ALSA
lib seq_hw.c ... failed", "Cannot connect to server socket", "jack server is not running"...).
bandmate already says in its own words what it could not open, so those lines only alarm.
Both libraries take an error handler: ours drops the text. ``bandmate app --verbose`` keeps it.

python-rtmidi wheels bundle their own libjack (``python_rtmidi*/libjack-*.so``), which is
the one rtmidi calls, so that copy is the one given the handler (the system's as well).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_ALSA_HANDLER = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
)
_JACK_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_KEEP: list = []  # the callbacks must live as long as the libraries may call them


def _jack_libraries() -> list[str]:
    found: list[str] = []
    try:
        import importlib.util

        spec = importlib.util.find_spec("rtmidi")
        if spec is not None and spec.origin:
            site = Path(spec.origin).resolve().parent.parent
            for pattern in ("python_rtmidi*/libjack*", "rtmidi/.dylibs/libjack*"):
                found += [str(p) for p in sorted(site.glob(pattern))]
    except (ImportError, ValueError):
        pass
    system = ctypes.util.find_library("jack")
    if system:
        found.append(system)
    return found


def silence_midi_library_logs() -> list[str]:
    """Give libasound and libjack handlers that drop their messages; returns which took one.

    Harmless where a library is missing (macOS, Windows, no JACK): nothing happens there.
    """
    if sys.platform.startswith("win"):
        return []
    done: list[str] = []
    alsa = ctypes.util.find_library("asound")
    if alsa:
        try:
            lib = ctypes.CDLL(alsa)
            handler = _ALSA_HANDLER(lambda *_: None)
            lib.snd_lib_error_set_handler(handler)
            _KEEP.append(handler)
            done.append(alsa)
        except (OSError, AttributeError) as e:
            log.debug("ALSA messages stay on: %s", e)
    for path in _jack_libraries():
        try:
            lib = ctypes.CDLL(path)
            handler = _JACK_HANDLER(lambda _msg: None)
            lib.jack_set_error_function(handler)
            lib.jack_set_info_function(handler)
            _KEEP.append(handler)
            done.append(path)
        except (OSError, AttributeError) as e:
            log.debug("JACK messages stay on for %s: %s", path, e)
    return done
