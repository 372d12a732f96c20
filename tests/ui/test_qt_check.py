"""`bandmate app` says which system packages Qt needs instead of letting Qt abort."""

from __future__ import annotations

import argparse
import os

from bandmate.ui import app as app_mod
from bandmate.ui.qt_check import APT_PACKAGES, platform_problem

QT_ABORT = (
    "qt.qpa.plugin: From 6.5.0, xcb-cursor0 or libxcb-cursor0 is needed to load the Qt xcb "
    'platform plugin.\nqt.qpa.plugin: Could not load the Qt platform plugin "xcb" in "" even '
    "though it was found.\nThis application failed to start because no Qt platform plugin "
    "could be initialized.\n"
)


def test_the_hint_names_the_debian_packages_when_the_plugin_does_not_load():
    hint = platform_problem({}, probe=lambda env: (-6, QT_ABORT), platform="linux")
    assert "libxcb-cursor0 is needed" in hint
    assert "sudo apt-get install libxcb-cursor0" in hint and "libxkbcommon-x11-0" in hint
    assert platform_problem({}, probe=lambda env: (0, ""), platform="linux") is None
    assert platform_problem({}, probe=lambda env: (1, "Traceback: other"), platform="linux") is None
    for env, plat in (({"QT_QPA_PLATFORM": "offscreen"}, "linux"), ({}, "darwin")):
        assert platform_problem(env, probe=lambda env: (-6, QT_ABORT), platform=plat) is None


def test_real_qt_without_a_display_gets_the_hint():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["QT_QPA_PLATFORM"] = "xcb"
    assert "apt-get install" in platform_problem(env)


def test_app_prints_the_hint_and_exits_1(monkeypatch, capsys):
    monkeypatch.setattr("bandmate.ui.qt_check.platform_problem", lambda: "HINT libxcb-cursor0")
    args = argparse.Namespace(version=False, verbose=False)
    assert app_mod.run(args) == 1
    assert "HINT libxcb-cursor0" in capsys.readouterr().err
    assert "libxcb-cursor0" in APT_PACKAGES
