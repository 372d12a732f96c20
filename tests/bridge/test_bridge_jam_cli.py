"""A real `bandmate jam` process on JACK with a real (random-weight) ONNX model.

The stand-in DAW plays SATB bars with MIDI clock, fires Continue by CC 20, hears generated
notes on the next bar line or later, then SIGTERMs the process: every note-on it heard must
have its own note-off.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import mido
import pytest
from bandmate.bridge.bridge import wait_until
from support.dawsim import DawSim, pair_notes

pytestmark = pytest.mark.jack

TEMPO = 160.0  # bar = 1.5 s


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from support.models import export_random

    return export_random(tmp_path_factory.mktemp("jam-model") / "tiny", seed=1)


class Proc:
    def __init__(self, cmd, env):
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env=env, text=True)
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip())

    def saw(self, text: str) -> bool:
        return any(text in ln for ln in self.lines)

    def log(self) -> str:
        return "\n".join(self.lines[-60:])


def _prompt_notes() -> dict[int, list[mido.Message]]:
    """Two bars of four-part chords (channels 1-4), one chord per half note."""
    out: dict[int, list[mido.Message]] = {}
    chords = [(72, 67, 64, 48), (74, 69, 65, 50), (76, 72, 67, 52), (74, 71, 67, 55)]
    for i in range(4 * 4):  # 4 bars of half-note chords, repeating
        on, off = i * 48, i * 48 + 47
        for ch, pitch in enumerate(chords[i % 4]):
            out.setdefault(on, []).append(
                mido.Message("note_on", channel=ch, note=pitch, velocity=80))
            out.setdefault(off, []).append(mido.Message("note_off", channel=ch, note=pitch))
    return out


@pytest.mark.parametrize(("cc", "value", "action", "sig"),
                         [(20, 127, "continue", signal.SIGTERM), (21, 4, "add", signal.SIGINT)],
                         ids=["continue-sigterm", "add-bass-sigint"])
def test_jam_trigger_then_signal_leaves_no_hanging_notes(jack_server, tiny_model,
                                                         assert_no_hanging, cc, value, action,
                                                         sig):
    in_name, out_name = f"bm jam in {action}", f"bm jam out {action}"
    cmd = [sys.executable, "-m", "bandmate", "jam", "--api", "jack", "--in", in_name,
           "--out", out_name, "--model", str(tiny_model), "--bars", "2", "--clock", "midi",
           "--seed", "3"]
    proc = Proc(cmd, jack_server.env())
    daw_name = f"daw jam {action}"
    daw = None
    try:
        assert wait_until(lambda: proc.saw("jam ready") or proc.p.poll() is not None, 60), \
            proc.log()
        assert proc.p.poll() is None, proc.log()
        daw = DawSim(in_name, out_name, name=daw_name)
        notes = _prompt_notes()
        trigger_tick = 2 * 96 + 24  # a quarter into bar 3: prompt = bars 1-2
        notes.setdefault(trigger_tick, []).append(
            mido.Message("control_change", channel=9, control=cc, value=value))
        daw.play(TEMPO, ticks=12 * 96, notes=notes)
        # generated notes come back on channels the prompt used
        def heard() -> int:
            return sum(1 for r in daw.messages(["note_on"]) if r.msg.velocity > 0)
        assert wait_until(lambda: heard() >= 6, 15), proc.log()
        assert proc.saw(f"trigger: {action}"), proc.log()
        if action == "add":
            assert proc.saw("add BASS over 2 prompt bar(s)"), proc.log()
        assert proc.saw("first note out"), proc.log()
        time.sleep(0.4)  # let some notes sound, then kill mid-phrase
        proc.p.send_signal(sig)
        assert proc.p.wait(15) == 0, proc.log()
        time.sleep(0.3)
        got = daw.messages()
        pairs, hanging = pair_notes(got)
        assert_no_hanging(hanging)
        assert len(pairs) >= 6
        # nothing before the bar line after the trigger (bar index 3), all on 16th steps
        for _ch, _p, on_ns, _off in pairs:
            step = daw.step_of(on_ns)
            assert step >= 3 * 16 - 0.3
            assert abs(step - round(step)) < 0.4
        # and from bandmate's side, whatever JACK did: as many note-offs as note-ons
        stopped = [ln for ln in proc.lines if f"jam stopped ({sig.name})" in ln]
        assert stopped, proc.log()
        m = re.search(r"(\d+) note\(s\) on, (\d+) note\(s\) off", stopped[0])
        assert m and m.group(1) == m.group(2), proc.log()
    finally:
        if proc.p.poll() is None:
            proc.p.kill()
            proc.p.wait(5)
        if daw is not None:
            daw.close()


def _band_notes() -> dict[int, list[mido.Message]]:
    """A band without drums as a DAW sends it: program changes first (clean guitar 27 on
    channel 1, finger bass 33 on channel 2), then 4 bars of quarter-note chords and a bass
    on the half notes, repeating."""
    out: dict[int, list[mido.Message]] = {0: [
        mido.Message("program_change", channel=0, program=27),
        mido.Message("program_change", channel=1, program=33)]}
    chords = [(60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62)]
    for bar in range(12):
        ch = chords[bar % 4]
        for q in range(4):
            on = bar * 96 + q * 24
            for p in ch:
                out.setdefault(on, []).append(
                    mido.Message("note_on", channel=0, note=p, velocity=80))
                out.setdefault(on + 20, []).append(mido.Message("note_off", channel=0, note=p))
        for h in range(2):
            on = bar * 96 + h * 48
            out.setdefault(on, []).append(
                mido.Message("note_on", channel=1, note=ch[0] - 24, velocity=90))
            out.setdefault(on + 40, []).append(
                mido.Message("note_off", channel=1, note=ch[0] - 24))
    return out


def test_jam_adds_drums_on_channel_10_from_the_next_bar_line(jack_server, band_model_dir,
                                                             assert_no_hanging):
    """A band model in `bandmate jam`: CC 21 value 1 (Drums, first in `bandmate models`'
    order) over a guitar and a bass; the new part comes back on channel 10 from the bar
    line after the trigger."""
    in_name, out_name = "bm jam in band", "bm jam out band"
    cmd = [sys.executable, "-m", "bandmate", "jam", "--api", "jack", "--in", in_name,
           "--out", out_name, "--model", str(band_model_dir), "--bars", "2", "--clock", "midi",
           "--seed", "3"]
    proc = Proc(cmd, jack_server.env())
    daw = None
    try:
        assert wait_until(lambda: proc.saw("jam ready") or proc.p.poll() is not None, 60), \
            proc.log()
        assert proc.p.poll() is None, proc.log()
        assert proc.saw("add (value 1=Drums, 2=Piano, 3=Guitar, 4=Bass"), proc.log()
        daw = DawSim(in_name, out_name, name="daw jam band")
        notes = _band_notes()
        trigger_tick = 2 * 96 + 24  # a quarter into bar 3: prompt = bars 1-2
        notes.setdefault(trigger_tick, []).append(
            mido.Message("control_change", channel=15, control=21, value=1))
        daw.play(TEMPO, ticks=8 * 96, notes=notes)

        def drum_hits() -> list:
            return [r for r in daw.messages(["note_on"])
                    if r.msg.velocity > 0 and r.msg.channel == 9]
        assert wait_until(lambda: len(drum_hits()) >= 4, 15), proc.log()
        assert proc.saw("add DRUMS over 2 prompt bar(s)"), proc.log()
        daw.wait()
        time.sleep(0.3)
        got = daw.messages()
        pairs, hanging = pair_notes(got)
        assert_no_hanging(hanging)
        new = [p for p in pairs if p[0] == 9]
        assert len(new) >= 4 and all(ch == 9 for ch, *_ in pairs)  # nothing but the drums
        steps = sorted(daw.step_of(on_ns) for _ch, _p, on_ns, _off in new)
        assert steps[0] >= 3 * 16 - 0.3  # from the bar line after the trigger
        assert all(abs(s - round(s)) < 0.4 for s in steps)  # on the 16th grid
        proc.p.send_signal(signal.SIGTERM)
        assert proc.p.wait(15) == 0, proc.log()
    finally:
        if proc.p.poll() is None:
            proc.p.kill()
            proc.p.wait(5)
        if daw is not None:
            daw.close()
