"""Whether Qt can open a window here, asked before the app starts (Qt-free logic).

Qt does not raise when its platform plugin cannot load: it prints "Could not load the Qt
platform plugin "xcb"" and aborts the process. On a minimal Debian/Ubuntu with an X server,
Qt 6.5+ needs libxcb-cursor0 and the other xcb libraries (docs/architecture.md), which a
desktop install usually has and a server install does not. So on Linux `bandmate app` first
opens a QApplication in a child process; if that aborts with a platform-plugin message, the
user gets the apt line that fixes it instead of Qt's core dump.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

#: What the Qt desktop needs on Debian/Ubuntu (README, "Desktop set-up on Linux").
APT_PACKAGES = (
    "libxcb-cursor0",
    "libxcb-icccm4",
    "libxcb-keysyms1",
    "libxcb-image0",
    "libxcb-render-util0",
    "libxcb-shape0",
    "libxcb-xinerama0",
    "libxcb-xkb1",
    "libxkbcommon-x11-0",
    "libegl1",
    "libgl1",
    "libfontconfig1",
    "libdbus-1-3",
)

HINT = (
    "bandmate: Qt cannot open its window ({why}).\n"
    "On Debian/Ubuntu install the libraries the Qt desktop needs:\n"
    "    sudo apt-get install " + " ".join(APT_PACKAGES) + "\n"
    "Without a display (a server, SSH without X forwarding) run the app under Xvfb "
    "(xvfb-run bandmate app) or use the command line: bandmate generate / bandmate jam."
)

PROBE = "import sys; from PyQt6.QtWidgets import QApplication; QApplication(sys.argv[:1])"


def _run_probe(env: dict) -> tuple[int, str]:
    try:
        p = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0, ""  # cannot tell: let the app try
    return p.returncode, p.stderr


def platform_problem(
    env: dict | None = None,
    probe: Callable[[dict], tuple[int, str]] = _run_probe,
    platform: str = sys.platform,
) -> str | None:
    """The hint to print when Qt would abort for want of a platform plugin, else None.

    Only on Linux, and not for QT_QPA_PLATFORM=offscreen/minimal (tests, screenshots), nor
    when BANDMATE_SKIP_QT_CHECK is set.
    """
    env = dict(os.environ if env is None else env)
    if not platform.startswith("linux") or env.get("BANDMATE_SKIP_QT_CHECK"):
        return None
    if env.get("QT_QPA_PLATFORM", "").split(":")[0] in ("offscreen", "minimal", "vnc"):
        return None
    rc, err = probe(env)
    if rc == 0:
        return None
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    low = err.lower()
    if "platform plugin" in low or "xcb-cursor" in low or "could not connect to display" in low:
        why = next((ln for ln in lines if "xcb" in ln.lower() or "display" in ln.lower()), "")
        return HINT.format(why=why or "its platform plugin does not load")
    return None
