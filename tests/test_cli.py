"""The `bandmate` command itself: help, version, dispatch and argument quirks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bandmate import __version__
from bandmate.cli import COMMANDS, main

DATA = Path(__file__).parent / "data"


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert f"bandmate {name}" in capsys.readouterr().out


def test_negative_transpose_needs_no_equals_sign(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for f in ("jsfakes-0.mid", "jsfakes-1.mid"):
        shutil.copy(DATA / f, src / f)
    out = tmp_path / "out"
    argv = [
        "prepare",
        str(src),
        "-o",
        str(out),
        "--transpose",
        "-2:3",
        "--workers",
        "1",
        "--voices",
        "SOPRANO,ALTO,TENOR,BASS",
        "--val-fraction",
        "0",
    ]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["config"]["transpose"]) == [-2, 3]
    assert manifest["files_ok"] == 2
