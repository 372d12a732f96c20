"""bandmate.bridge.live: the live engine shared by ``bandmate jam`` and the app.

``LiveEngine`` (engine.py) owns capture -> prompt -> generation job -> scheduler;
``LiveJob`` / ``LiveEvent`` / ``Generator`` (job.py) are a job, its reports and what it
needs from the model; policy.py holds the one placement policy (trigger bar, start bar,
channel, velocity). No Qt, no ports: everything is passed in. See docs/bridge.md.
"""

from bandmate.bridge.live.engine import LiveConfig, LiveEngine
from bandmate.bridge.live.job import EngineGenerator, Generator, LiveEvent, LiveJob
from bandmate.bridge.live.policy import (
    LEAD_MS,
    TRIGGER_TOLERANCE_TICKS,
    Placed,
    StreamPlacer,
    channel_for_track,
    earliest_bar,
    trigger_bar,
    velocity_for_track,
)

__all__ = [
    "LEAD_MS",
    "TRIGGER_TOLERANCE_TICKS",
    "EngineGenerator",
    "Generator",
    "LiveConfig",
    "LiveEngine",
    "LiveEvent",
    "LiveJob",
    "Placed",
    "StreamPlacer",
    "channel_for_track",
    "earliest_bar",
    "trigger_bar",
    "velocity_for_track",
]
