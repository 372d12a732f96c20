"""bandmate.bridge: MIDI ports, clock following, bar capture, the output scheduler, panic.

See docs/bridge.md. Importing this package does not open any port.
"""

from bandmate.bridge.bridge import Bridge, BridgeConfig, install_signal_handlers
from bandmate.bridge.capture import Capture, CaptureConfig, voice_labels
from bandmate.bridge.clock import (
    TICKS_PER_BAR,
    TICKS_PER_STEP,
    ClockSource,
    ClockState,
    InternalClock,
)
from bandmate.bridge.follower import AutoClock, MidiClockFollower
from bandmate.bridge.ports import PortError, list_ports, resolve_api
from bandmate.bridge.scheduler import Scheduler, SchedulerConfig

__all__ = [
    "TICKS_PER_BAR",
    "TICKS_PER_STEP",
    "AutoClock",
    "Bridge",
    "BridgeConfig",
    "Capture",
    "CaptureConfig",
    "ClockSource",
    "ClockState",
    "InternalClock",
    "MidiClockFollower",
    "PortError",
    "Scheduler",
    "SchedulerConfig",
    "install_signal_handlers",
    "list_ports",
    "resolve_api",
    "voice_labels",
]
