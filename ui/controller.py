"""The window's state and rules, without Qt: model, prompt, takes, save, clip and preview plan.

`AppController` owns what the app knows (the loaded `ModelSession`, the prompt piece and the
opened file, the takes of the last job) and every decision over it: which file is a usable
prompt, what a click may generate, what Save writes, what the clip holds, what the status line
says. The window (`bandmate.ui.window`) draws it and turns clicks into calls here; a refusal
the user can act on comes back as a `Refusal` (title + text) for the window to show. Live
jobs belong to the live engine (`bandmate.bridge.live`, through `bandmate.ui.live`).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from bandmate.bridge.clock import ClockState
from bandmate.models.config import CodecConfig
from bandmate.models.midi_merge import NewPart, Source
from bandmate.models.session import ModelSession
from bandmate.models.types import STEPS_PER_BAR, STEPS_PER_BEAT, Piece
from bandmate.ui.jobs import JobResult, JobSpec
from bandmate.ui.names import instrument_groups, instrument_name
from bandmate.ui.settings import AppSettings

log = logging.getLogger(__name__)


class Refusal(Exception):
    """Something the user asked for cannot be done now; ``title`` and ``text`` say why,
    ``level`` is how the window shows it ("error" or "info")."""

    def __init__(self, title: str, text: str, level: str = "error") -> None:
        super().__init__(f"{title}: {text}")
        self.title, self.text, self.level = title, text, level


def clip_of(prompt: Piece, result: Piece, kind: str) -> Piece:
    """What a DAW wants dropped in: the new bars of a continuation, or just the new track."""
    if kind == "continue":
        return result.slice_bars(prompt.bars, max(1, result.bars - prompt.bars))
    new = result.tracks[len(prompt.tracks) :]
    return Piece(new or result.tracks, result.bars, result.tempo, dict(result.meta))


def track_names(piece: Piece, scheme: str = "program") -> list[str]:
    return [t.name or instrument_name(t.inst, scheme) for t in piece.tracks]


def clock_status(st: ClockState, now_ns: int) -> tuple[list[str], float]:
    """Status-line parts for a clock (tempo, bar:beat, transport) and its step now."""
    step = st.step_at(now_ns) if st.running else st.tick / 6
    bar, beat = int(step // STEPS_PER_BAR), int(step % STEPS_PER_BAR) // STEPS_PER_BEAT
    return [f"{st.tempo:.1f} BPM", f"{bar + 1}:{beat + 1}",
            "playing" if st.running else "stopped"], step  # fmt: skip


@dataclass
class AppController:
    """The app's state (see the module docstring). ``meter`` is ``--meter`` (None: as the model
    reads; or "assume-4/4"); ``seed`` fixes the takes (tests, screenshots)."""

    session: ModelSession | None = None
    model_error: str = ""
    meter: str | None = None
    seed: int | None = None
    prompt: Piece | None = None
    prompt_bytes: bytes | None = None
    prompt_name: str = ""
    # The opened file: Save and the clip write into it, so the user's events stay as they
    # were; None for a live capture.
    source: Source | None = None
    source_path: Path | None = None
    source_section: int = 0
    load_note: str = ""  # status-line note when only part of the file was read
    takes: list[Piece] = field(default_factory=list)
    job_prompt: Piece | None = None  # the prompt the takes were made from
    job_source: Source | None = None  # and its file
    last_spec: JobSpec | None = None
    last_result: JobResult | None = None

    # ------------------------------------------------------------------ model
    def model_loaded(self, session: ModelSession) -> bool:
        """Use ``session``; True when the prompt was re-read with its codec (redraw it)."""
        self.session, self.model_error = session, ""
        if self.prompt_bytes is None or self.takes:
            return False
        try:
            self.read_prompt(self.prompt_bytes, self.prompt_name)
        except Refusal:
            return False
        return True

    def model_failed(self, message: str, path: str) -> Refusal:
        self.model_error = message
        return Refusal(
            "No model",
            f"bandmate could not load {path or 'the shipped model'}: {message}\n\nChoose an "
            "exported model folder (File > Choose model…, Ctrl+M): it holds model.onnx, "
            "tokenizer.json and bandmate.json. 'bandmate export' writes one.",
        )

    def instruments(self, want: str) -> tuple[list[tuple[str, list[tuple[str, str]]]], str]:
        """The Add-track choices grouped ((heading, [(label, name)])) and the one to select
        (``want`` if offered, else the bass)."""
        s = self.session
        labels = list(s.add_labels) if s is not None else []
        if s is not None and not labels:
            labels = [lab for lab in s.config.labels if not lab.isdigit()] + ["0", "33"]
        if s is not None and want not in labels:
            want = s.bass_label if s.bass_label in labels else (labels[0] if labels else "")
        scheme = s.config.label_scheme if s is not None else "program"
        return instrument_groups(labels, scheme), want

    @staticmethod
    def model_choices(current: str) -> tuple[list[tuple[str, str]], str]:
        """The Model picker: (value, text) for each shipped model installed, then the
        folder in use if it is not one of them; and the value to select. ``current`` is the
        remembered setting: a shipped name, a folder, or '' (the default model)."""
        from bandmate.models import registry

        choices = [(n, f"{n}: {registry.SHIPPED[n][1].split(':')[0].split(' (')[0]}")
                   for n in registry.installed()]
        want = current or "default"
        if want not in {v for v, _ in choices}:
            choices.append((want, f"folder: {Path(want).name or want}"))
        return choices, want

    @property
    def label_scheme(self) -> str:
        """How the loaded model's labels read ("gm-family": "32" is the bass family)."""
        return self.session.config.label_scheme if self.session is not None else "program"

    @property
    def density_bins(self) -> int:
        return self.session.config.density_bins if self.session is not None else 0

    # ------------------------------------------------------------------ prompt
    def open_file(self, path: str | Path) -> Piece:
        """Read a MIDI file as the prompt; `Refusal` (prompt unchanged) when it is not usable."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise Refusal("Cannot open file", f"{p}: {e.strerror or e}. Pick another file.") from e
        piece = self.read_prompt(data, p.name)
        self.source_path = p
        return piece

    def read_prompt(self, data: bytes, name: str) -> Piece:
        """The prompt is the file's last 4/4 stretch: Continue writes after the file's end."""
        from bandmate.models.midi_io import MidiError
        from bandmate.models.midi_merge import open_source

        config = self.session.config if self.session is not None else CodecConfig()
        if self.meter:
            config = replace(config, meter=self.meter)
        try:
            source = open_source(data, config, name)
            section = len(source.sections) - 1
            piece, _ = source.section_piece(section)
        except MidiError as e:
            raise Refusal(
                "Not a usable MIDI file",
                f"{name}: {e}\n\nThe current prompt is unchanged. Open another file, "
                "or export the part from your DAW as a standard MIDI file in 4/4.",
            ) from e
        except Exception as e:  # symusic or mido on a badly broken file
            raise Refusal(
                "Not a usable MIDI file",
                f"{name} could not be read ({type(e).__name__}: {e}). The current prompt "
                "is unchanged; open another file.",
            ) from e
        self.prompt, self.prompt_bytes, self.prompt_name = piece, data, name
        self.source, self.source_section = source, section
        self.load_note = source.partial_note(section)
        self.takes, self.last_result = [], None
        return piece

    # ------------------------------------------------------------------ jobs
    def job_spec(self, kind: str, s: AppSettings) -> JobSpec:
        return JobSpec(kind=kind, bars=s.bars, instrument=s.instrument,
                       temperature=s.temperature,
                       density=None if s.density < 0 else s.density,
                       variations=s.variations, seed=self.seed)  # fmt: skip

    def check_ready(self) -> ModelSession:
        if self.session is None:
            raise Refusal(
                "No model",
                "No model is loaded yet. Choose an exported model folder with File > Choose "
                "model… (Ctrl+M)"
                + (f"; the last attempt failed: {self.model_error}" if self.model_error else "."),
            )
        return self.session

    def start_job(self, spec: JobSpec, live_prompt: Piece | None = None) -> Piece:
        """A job starts on ``live_prompt`` (the DAW's bars) or the opened prompt; returns the
        prompt it uses. `Refusal` when there is no model or nothing to continue."""
        self.check_ready()
        prompt = live_prompt if live_prompt is not None else self.prompt
        if prompt is None or not any(t.notes for t in prompt.tracks):
            raise Refusal(
                "Nothing to continue",
                "Open a MIDI file (Ctrl+O, or drop one on the window), or connect and play "
                "your DAW into 'bandmate in'.",
                "info",
            )
        if live_prompt is not None:
            self.prompt, self.prompt_bytes, self.prompt_name = live_prompt, None, "live"
            self.source = self.source_path = None
            self.load_note = ""
        self.job_source, self.job_prompt, self.last_spec = self.source, prompt, spec
        self.takes = []
        return prompt

    def take_names(self, i: int) -> tuple[Piece, Piece, list[str]] | None:
        """(job prompt, take ``i``, track names) to draw a finished take, if there is one."""
        if not (0 <= i < len(self.takes)) or self.job_prompt is None:
            return None
        names = track_names(self.job_prompt, self.label_scheme)
        result = self.takes[i]
        return self.job_prompt, result, names + [
            instrument_name(t.inst, self.label_scheme) for t in result.tracks[len(names) :]]

    # ------------------------------------------------------------------ save, clip, preview
    def current_piece(self, i: int) -> Piece | None:
        """The prompt with take ``i`` (what Save writes), or the prompt alone."""
        return self.takes[i] if 0 <= i < len(self.takes) else self.prompt

    def current_clip(self, i: int) -> Piece | None:
        if not (0 <= i < len(self.takes)) or self.job_prompt is None or self.last_spec is None:
            return None
        return clip_of(self.job_prompt, self.takes[i], self.last_spec.kind)

    def take_parts(self, i: int) -> tuple[list[NewPart], int] | None:
        """Take ``i`` as new parts of the opened file (None: no take, or live)."""
        from bandmate.models.midi_merge import take_parts

        src = self.job_source
        if src is None or not (0 <= i < len(self.takes)) or self.last_spec is None:
            return None
        assert self.job_prompt is not None
        return take_parts(src, self.source_section, self.job_prompt, self.takes[i],
                          self.last_spec.kind)  # fmt: skip

    def save(self, path: str | Path, i: int) -> Piece:
        """Write the opened file, every event unchanged, plus take ``i`` (or the piece itself
        for a live capture); never over the opened file, never half a file."""
        from bandmate.models.midi_io import write_midi
        from bandmate.models.midi_merge import merge
        from bandmate.models.outfile import check_output, write_atomic

        piece = self.current_piece(i)
        if piece is None:
            raise Refusal("Nothing to save", "Open a MIDI file or generate first.", "info")
        path = Path(path)
        try:
            check_output(path, [self.source_path] if self.source_path else [])
            take = self.take_parts(i)
            if take is not None and self.job_source is not None:
                parts, at = take
                kind = self.last_spec.kind if self.last_spec else ""
                data = merge(self.job_source, parts, at if kind == "continue" else None)
            elif self.source is not None and not self.takes:
                data = self.source.data  # the prompt alone: the file as it is
            else:
                data = write_midi(piece)
            write_atomic(path, data)
        except ValueError as e:  # OutputError (the opened file, a folder...) or MidiError
            raise Refusal("Cannot save", str(e)) from e
        except OSError as e:
            raise Refusal("Cannot save", f"{path}: {e.strerror or e}. Pick another folder.") from e
        log.info("saved %s (%d bars, %d tracks)", path, piece.bars, len(piece.tracks))
        return piece

    def write_clip(self, i: int) -> Path:
        """Take ``i``'s clip written to a temporary .mid (the new part only, at the opened
        file's resolution and tempo), to drag into a DAW."""
        from bandmate.models.midi_io import write_midi
        from bandmate.models.midi_merge import clip as clip_bytes

        clip = self.current_clip(i)
        if clip is None:
            raise Refusal("No clip yet", "Generate first, then drag the clip.", "info")
        folder = Path(tempfile.mkdtemp(prefix="bandmate-clip-"))
        stem = Path(self.prompt_name or "bandmate").stem
        kind = self.last_spec.kind if self.last_spec else "clip"
        path = folder / f"{stem}-{kind}-take{i + 1}.mid"
        take = self.take_parts(i)
        if take is not None and self.job_source is not None:
            path.write_bytes(clip_bytes(self.job_source, *take))
        else:
            write_midi(clip, path)
        return path

    def preview_clip(self, i: int) -> tuple[Piece, int]:
        """Take ``i``'s clip and the roll step of its step 0 (after the prompt for a
        continuation, 0 for a new track); `Refusal` when there is none."""
        clip = self.current_clip(i)
        if clip is None or self.job_prompt is None:
            raise Refusal("Nothing to preview", "Generate a take first.", "info")
        kind = self.last_spec.kind if self.last_spec else ""
        return clip, self.job_prompt.steps if kind == "continue" else 0

    # ------------------------------------------------------------------ status
    def status_tail(self) -> list[str]:
        """The status line's parts after the clock: file note, model, provider."""
        parts = [self.load_note] if self.load_note else []
        if self.session is not None:
            return [*parts, f"model {self.session.name}", str(self.session.provider)]
        return [*parts, "no model" if self.model_error else "loading model…"]

    def idle_status(self, tempo: float) -> list[str]:
        """The clock parts when not connected (the prompt's tempo, else the tempo control)."""
        tempo = self.prompt.tempo if self.prompt is not None else tempo
        return [f"{tempo:.1f} BPM", "–:–", "not connected"]
