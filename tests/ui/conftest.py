"""Qt runs offscreen in these tests (without a display Qt would abort)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("JACK_NO_START_SERVER", "1")
