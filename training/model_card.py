"""MODEL_CARD.md for an exported model folder: data and its licence, config, results, recipe.

The card is generated from the artifacts themselves (``bandmate.json``, the run's summary and
the prepared data's manifest), so its numbers cannot drift from the model they describe.

    python -m bandmate.training.model_card MODEL_DIR --run RUN --command "..." [--data-note ...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

JSF_ATTRIBUTION = (
    "Trained on the **JS Fake Chorales** by Omar Peracha "
    "(https://github.com/omarperacha/js-fakes), licensed under Creative Commons Attribution "
    "4.0 International (CC BY 4.0, https://creativecommons.org/licenses/by/4.0/). The chorales "
    "are machine-generated in the style of J. S. Bach (500 annotated chorales from the KS_Chorus "
    "algorithm and 700 from the community web generator). Changes made: the MIDI files were "
    "converted to mmmtrack tokens in 4-bar windows, and the training windows were transposed "
    "by -5..+6 semitones. The model weights are a derivative of that data and are shared under "
    "the same attribution."
)


_FREEDOOM_BSD = """Copyright © 2001-2024 Contributors to the Freedoom project. All rights reserved.

Redistribution and use in source and binary forms, with or without modification, are permitted
provided that the following conditions are met:

  * Redistributions of source code must retain the above copyright notice, this list of
    conditions and the following disclaimer.
  * Redistributions in binary form must reproduce the above copyright notice, this list of
    conditions and the following disclaimer in the documentation and/or other materials
    provided with the distribution.
  * Neither the name of the Freedoom project nor the names of its contributors may be used to
    endorse or promote products derived from this software without specific prior written
    permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT OWNER OR
CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY,
WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN
ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE."""

_POP909_MIT = """MIT License

Copyright (c) 2020 Music X Lab

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the \"Software\"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE."""

_FREEDOOM_NOTE = (
    "- **Freedoom music** (https://github.com/freedoom/freedoom, the MIDI files of musics/ at "
    "commit d14dbbee and 212 older revisions from its history), BSD 3-clause licence; the "
    "composers of each piece are listed in the project's CREDITS-MUSIC. The Freedoom project's "
    "name does not endorse this model. The notice and licence, as they require:\n\n"
    + "\n".join("    " + ln if ln else "" for ln in _FREEDOOM_BSD.splitlines())
    + "\n"
)
_GROOVE_NOTE = (
    "- **Groove MIDI Dataset** v1.0.0 (drummers 1, 2, 3, 4, 6, 7), Magenta, Google: Jon "
    "Gillick, Adam Roberts, Jesse Engel, Douglas Eck, David Bamman, \"Learning to Groove with "
    "Inverse Sequence Transformations\", ICML 2019 "
    "(https://magenta.tensorflow.org/datasets/groove); Creative Commons Attribution 4.0 "
    "International (CC BY 4.0, https://creativecommons.org/licenses/by/4.0/).\n"
)
_POP909_NOTE = (
    "- **POP909** songs 001-300 (Wang et al., ISMIR 2020; "
    "https://github.com/music-x-lab/POP909-Dataset), MIT licence:\n\n"
    + "\n".join("    " + ln if ln else "" for ln in _POP909_MIT.splitlines())
    + "\n"
)
#: Which notice a prepared source folder needs, by the folder name bandmate prepare recorded.
_BAND_SOURCES = {"current": _FREEDOOM_NOTE, "history": _FREEDOOM_NOTE, "freedoom": _FREEDOOM_NOTE,
                 "groove-dev": _GROOVE_NOTE, "pop909-300": _POP909_NOTE}
_NUMBERS = {1: "one collection", 2: "two collections", 3: "three collections"}


def band_attribution(sources: list[str] | None = None) -> str:
    """The band data's notices, for the collections the model was really prepared from (the
    manifest's source folders): a card must not credit data the model never saw, nor miss one
    it did. None or unknown names: all three, the safe side."""
    names = [Path(s).name for s in (sources or [])]
    notes: list[str] = []
    for n in names:
        note = _BAND_SOURCES.get(n)
        if note is None:
            notes = []
            break
        if note not in notes:
            notes.append(note)
    if not notes:
        notes = [_FREEDOOM_NOTE, _GROOVE_NOTE, _POP909_NOTE]
    head = f"Trained on {_NUMBERS.get(len(notes), f'{len(notes)} collections')}"
    return (
        head + " (the model weights are a derivative of them):\n\n" + "".join(notes) + "\n"
        "Changes made: the MIDI files were converted to mmmtrack tokens in 4-bar windows "
        "(tracks labelled DRUMS or by General MIDI family), pitched parts of the training windows "
        "transposed by -5..+6 semitones (drums never), and the pieces in bench/holdout/band.txt "
        "left out."
    )


#: The band model's data (docs/band.md) when its sources are not known: every notice.
BAND_ATTRIBUTION = band_attribution()


def _f(x: float | None, nd: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def _warmup(cfg: dict, summary: dict) -> int:
    """The warmup the schedule really used (capped at a tenth of the run, train.lr_at)."""
    total = int(summary.get("total_steps") or 0)
    w = int(cfg.get("warmup_steps") or 0)
    return min(w, max(total // 10, 1)) if total else w


def render_quality(q: dict, curve: list[dict] | None = None) -> list[str]:
    """The bench/quality.py figures (its JSON) as the card's "Music" section."""
    h = q["headline"]
    st = q.get("settings", {})
    lines = [
        "## Music (bench/quality.py)",
        "",
        f"On {q['chorales']} JS Fake Chorales held out from training (bench/holdout/jsfakes.txt, "
        f"left out by content with `bandmate prepare --exclude`; verified: "
        f"{'yes' if q.get('holdout_verified') else 'NO'}), sampling at temperature "
        f"{st.get('temperature')}, top-p {st.get('top_p')}, seed {q.get('seed')}. "
        "Each figure: the model / the chorale's own part / random pitches on the real rhythm.",
        "",
        "| add voice | consonance | parallel 5ths/8ves per move | voice crossing | in range |",
        "|---|---|---|---|---:|",
    ]
    for v in ("BASS", "TENOR", "ALTO", "SOPRANO"):
        if v in h:
            f = h[v]
            lines.append(
                f"| {v} | {' / '.join(_f(x, 3) for x in f['consonance'])} | "
                f"{' / '.join(_f(x, 3) for x in f['parallel'])} | "
                f"{' / '.join(_f(x, 3) for x in f['crossing'])} | {_f(f['in_range'], 3)} |"
            )
    c = h.get("continue", {})
    if c:
        lines += [
            "",
            f"Continue 4 bars from 4: notes in the prompt's key {_f(c['in_key'][0], 3)} (the "
            f"chorales' own next bars {_f(c['in_key'][1], 3)}); notes copying the prompt "
            f"{_f(c['copying'][0], 3)} (own {_f(c['copying'][1], 3)}).",
        ]
    g = q.get("context_gain", {})
    if g:
        lines += [
            "",
            "Context gain (mean NLL of a voice's NOTE_ON tokens, own chorale's other voices vs "
            "another chorale's): "
            + "; ".join(
                f"{v} {_f(x['nll_own_context'], 2)} vs {_f(x['nll_other_context'], 2)}"
                for v, x in g.items()
            )
            + ".",
        ]
    lines += [
        "",
        f"Success {q.get('success_rate')}, repairs {q.get('repairs')}; goals of the "
        f"musical-quality issue met: {h.get('goals_met')}.",
        "",
    ]
    if curve:
        lines += [
            "Quality against tokens seen (same benchmark, checkpoints of this run):",
            "",
            "| step | real tokens seen | bass consonance | mean upper-voice consonance | "
            "val loss |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in curve:
            lines.append(
                f"| {r['step']} | {r['real_tokens_seen']:,} | {_f(r['bass'], 3)} | "
                f"{_f(r['upper'], 3)} | {_f(r.get('val_loss'), 4)} |"
            )
        lines.append("")
    return lines


def render_quality_band(q: dict, curve: list[dict] | None = None) -> list[str]:
    """bench/quality.py's figures for a band model (bench/quality_band.py's JSON)."""
    st = q.get("settings", {})

    def row(task: str, key: str) -> str:
        return " / ".join(_f(q[task][w].get(key), 3) for w in ("model", "own", "random"))

    lines = [
        "## Music (bench/quality.py, band tasks: bench/quality_band.py)",
        "",
        f"On {q['windows']} four-bar windows of {q['pieces']} Freedoom pieces held out from "
        "training by piece (bench/holdout/band.txt, left out by content with `bandmate prepare "
        f"--exclude`; verified: {'yes' if q.get('holdout_verified') else 'NO'}), sampling at "
        f"temperature {st.get('temperature')}, top-p {st.get('top_p')}, seed {q.get('seed')}. "
        "Each figure: the model / the piece's own part / random pitches on the real rhythm.",
        "",
        "| task | figure | model / own / random |",
        "|---|---|---|",
        f"| add bass | onsets on chord tones of the other parts | {row('bass', 'chord_tones')} |",
        f"| add drums | bars with hits | {row('drums', 'bars_with_hits')} |",
        f"| add drums | bars with a kick on beat 1 | {row('drums', 'kick_on_1')} |",
        f"| add drums | beats 2 and 4 with a snare or clap | {row('drums', 'backbeat')} |",
        f"| add drums | hits on the 8th grid | {row('drums', 'on_8th')} |",
        f"| continue 4 bars | new notes in the prompt's key | {row('continue', 'in_key')} |",
        f"| continue 4 bars | new notes copying the prompt | {row('continue', 'copying')} |",
        "",
        "Success (add bass / add drums / continue): "
        + " / ".join(_f(q[t]["model"].get("success"), 3) for t in ("bass", "drums", "continue"))
        + "; repairs: "
        + " / ".join(str(q[t]["model"].get("repairs")) for t in ("bass", "drums", "continue"))
        + f"; goals of the band-model issue met: {q.get('goals_met')}"
        + (" (" + ", ".join(k for k, ok in q.get("goals", {}).items() if not ok) + " not)"
           if q.get("goals") and not all(q["goals"].values()) else "")
        + ".",
        "",
    ]
    ci = q.get("ci95") or {}
    if ci:
        names = {"bass_chord_tones": "bass chord tones", "drums_kick_on_1": "kick on 1",
                 "drums_backbeat": "backbeat", "continue_in_key": "in key"}  # fmt: skip
        parts = [
            f"{names[k]} {_f(v['model'][0], 2)}-{_f(v['model'][1], 2)}"
            for k, v in ci.items() if k in names and None not in v["model"]
        ]
        lines += [
            f"95% intervals of the model's figures, resampling whole pieces ({q['pieces']} "
            "pieces make them wide: compare models by them): " + ", ".join(parts) + ".",
            "",
        ]
    if curve:
        lines += [
            "Quality against tokens seen (same benchmark, checkpoints of this run):",
            "",
            "| step | real tokens seen | bass chord tones | kick on 1 | backbeat | val loss |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in curve:
            lines.append(
                f"| {r['step']} | {r['real_tokens_seen']:,} | {_f(r.get('bass'), 3)} | "
                f"{_f(r.get('kick_on_1'), 3)} | {_f(r.get('backbeat'), 3)} | "
                f"{_f(r.get('val_loss'), 4)} |"
            )
        lines.append("")
    return lines


def _intro_chorale(meta: dict) -> list[str]:
    return [
        f"# {meta['name']}: the bandmate chorale model",
        "",
        "A small GPT-2 that writes four-part chorale music as mmmtrack tokens: it continues the",
        "bars it is given and adds a voice (SOPRANO, ALTO, TENOR or BASS) to the others.",
        "It is the model `bandmate generate` and the app use when no model is named.",
    ]


def _intro_band(meta: dict) -> list[str]:
    return [
        f"# {meta['name']}: the bandmate band model",
        "",
        "A small GPT-2 that writes General MIDI band parts as mmmtrack tokens: it adds a bass,",
        "drums or any GM family to the parts it is given, and continues them (`--model band`).",
    ]


_LIMITS_CHORALE = [
    "- Trained only on machine-generated four-part chorales: it knows that style and those",
    "  four voice labels; other instruments' labels exist in the vocabulary but are untrained.",
    "- Small and briefly trained (a CPU budget of about an hour); a model trained with",
    "  `--preset seed` on a GPU will be much better (docs/training.md).",
]
def _limits_band(meta: dict) -> list[str]:
    """What the data gives the model, said from the collections it was prepared from."""
    names = {Path(s).name for s in _sources(meta)}
    what = ["about 330 game-music pieces with bass and drums (Freedoom)"]
    if not names or "groove-dev" in names:
        what.append("drum-only grooves")
    if not names or "pop909-300" in names:
        what.append("piano-only pop songs")
    listed = ", ".join(what[:-1]) + " and " + what[-1] if len(what) > 1 else what[0]
    return [
        f"- Little data: {listed};",
        "  styles far from rock, metal and ambient game music are out of its range. It knows",
        "  instrument families, not single programs.",
        "- Small and briefly trained on a CPU; see the quality figures above",
        "  (bench/quality_band.py).",
    ]


def render(
    meta: dict,
    summary: dict,
    cfg: dict,
    manifest: dict,
    sizes: dict[str, int],
    command: str,
    attribution: str,
    notes: list[str] | None = None,
    quality: dict | None = None,
    curve: list[dict] | None = None,
) -> str:
    """The card's Markdown text; ``notes`` are extra result or history lines, as given."""
    m, tr, ex = meta["model"], meta.get("training", {}), meta.get("export", {})
    codec = meta["codec"]
    val, uni = meta.get("val_loss"), meta.get("unigram_val_loss")
    counts = manifest.get("counts", {})
    band = codec.get("label_scheme") == "gm-family"
    labels_text = (
        "labels `gm-family` (DRUMS, else the General MIDI family of the track's program)"
        if band
        else f"voices {', '.join(codec['voices'])} (tracks labelled by order)"
    )
    n_params = None
    if m:
        h, n, v, p = m["n_embd"], m["n_layer"], m["vocab_size"], m["n_positions"]
        n_params = 12 * n * h * h + 13 * n * h + (v + p) * h + 2 * h
    lines = [
        *(_intro_band(meta) if band else _intro_chorale(meta)),
        "",
        "## Files",
        "",
        *(f"- `{k}`: {v / 1e6:.2f} MB" for k, v in sorted(sizes.items())),
        f"- in all: {sum(sizes.values()) / 1e6:.2f} MB",
        "",
        "## Data",
        "",
        attribution,
        "",
        f"- Prepared with `bandmate prepare`: {codec['bars']}-bar windows, {labels_text}, "
        f"{codec['density_bins']} "
        f"DENSITY buckets (note-count edges {codec['density_edges']}), meter `{codec['meter']}`.",
        f"- Train: {counts.get('train', {}).get('samples', tr.get('train_samples'))} samples, "
        f"{counts.get('train', {}).get('tokens', tr.get('train_tokens'))} tokens (transposed); "
        f"validation: {counts.get('val', {}).get('samples', tr.get('val_samples'))} samples, "
        f"{counts.get('val', {}).get('tokens')} tokens, from held-out files, not transposed.",
        f"- Files: {manifest.get('files_ok', 'n/a')} of {manifest.get('files_total', 'n/a')} "
        f"used, {manifest.get('files_skipped', 'n/a')} skipped"
        + (
            f" ({len(manifest['config']['exclude'])} of them held out by content for the "
            "quality benchmark: `bandmate prepare --exclude`, lists in bench/holdout/)."
            if manifest.get("config", {}).get("exclude")
            else "."
        ),
        "",
        "## Model",
        "",
        f"Hugging Face `GPT2LMHeadModel`: {m['n_layer']} layers, {m['n_head']} heads, width "
        f"{m['n_embd']}, {m['n_positions']} positions, vocabulary {m['vocab_size']} "
        f"(about {n_params / 1e6:.2f} M parameters). Exported to ONNX with past keys/values "
        "(docs/contracts.md) and quantised to int8 (dynamic, onnxruntime).",
        "",
        "## Training",
        "",
        f"- {summary.get('steps')} optimizer steps of {cfg.get('batch_size')} blocks x "
        f"{cfg.get('n_positions')} tokens (samples packed into blocks, `[PAD]` never trained "
        f"on): {summary.get('tokens_seen')} tokens ({summary.get('real_tokens_seen')} real).",
        f"- AdamW, lr {cfg.get('lr')} (warmup {_warmup(cfg, summary)} steps, cosine to "
        f"{cfg.get('min_lr_ratio')} x), weight decay {cfg.get('weight_decay')}, dropout "
        f"{cfg.get('dropout')}, seed {cfg.get('seed')}; {summary.get('precision')} on "
        f"{summary.get('device')} (a shared 2-core machine), "
        f"{_f((summary.get('wall_s') or 0) / 60, 1)} minutes of the last session, "
        f"~{_f(summary.get('tokens_per_s'), 0)} tokens/s at the end.",
        f"- Finished its schedule: {'yes' if summary.get('finished') else 'NO (stopped early)'}.",
        *(
            [f"- Started from the weights of `{cfg['init_from']}` (`--init-from`), not a "
             "random initialisation: the figures above count this run's steps only."]
            if cfg.get("init_from") else []
        ),
        *(
            [f"- Weights: the mean of the checkpoints at steps "
             f"{', '.join(map(str, avg))} (`bandmate export --average {len(avg)}`)."]
            if (avg := meta.get("training", {}).get("averaged_steps")) else []
        ),
        "",
        "## Results",
        "",
        "| | nats / token |",
        "|---|---:|",
        f"| validation loss of this model | {_f(val)} |",
        f"| unigram baseline (train token frequencies) | {_f(uni)} |",
        "",
    ]
    if val is not None and uni:
        lines += [
            f"The model's validation loss is {_f(uni - val, 3)} nats/token below the unigram "
            f"baseline (perplexity {_f(math.exp(val), 2)} vs {_f(math.exp(uni), 2)}).",
            "",
        ]
    if "int8" in ex:
        lines += [
            f"int8 vs the PyTorch fp32 model on validation samples: top-1 next-token match "
            f"{_f(ex['int8']['top1_match'], 4)}, mean KL {_f(ex['int8']['mean_kl'], 5)} nats "
            f"({ex['int8']['tokens']} tokens).",
        ]
    if "parity" in ex:
        lines += [
            f"fp32 ONNX vs PyTorch: max |logit difference| "
            f"{ex['parity']['max_abs_logit_diff']:.1e} (with and without past).",
        ]
    lines += ["", *[f"{n}" for n in (notes or [])], ""]
    if quality:
        lines += (render_quality_band if "headline" not in quality else render_quality)(
            quality, curve)
    lines += [
        "## Reproduce",
        "",
        "```",
        command.strip(),
        "```",
        "",
        "## Limits",
        "",
        *(_limits_band(meta) if band else _LIMITS_CHORALE),
        "",
    ]
    return "\n".join(lines)


def default_attribution(meta: dict) -> str:
    """The data notice of a model: the band data's for gm-family labels, else the chorales'."""
    if meta["codec"].get("label_scheme") != "gm-family":
        return JSF_ATTRIBUTION
    return band_attribution(_sources(meta))


def _sources(meta: dict) -> list[str]:
    return meta.get("training", {}).get("manifest", {}).get("config", {}).get("sources") or []


def write_model_card(
    model_dir: str | Path,
    run: str | Path,
    command: str,
    attribution: str | None = None,
    notes: list[str] | None = None,
    quality: dict | None = None,
    curve: list[dict] | None = None,
) -> Path:
    """``attribution`` None: the chorales' or, for a gm-family model, the band data's."""
    model_dir, run = Path(model_dir), Path(run)
    meta = json.loads((model_dir / "bandmate.json").read_text())
    if attribution is None:
        attribution = default_attribution(meta)
    summary = json.loads((run / "summary.json").read_text())
    cfg = json.loads((run / "train_config.json").read_text())
    data_dir = Path(json.loads((run / "data_summary.json").read_text()).get("data_dir", ""))
    manifest = {}
    if (data_dir / "manifest.json").exists():
        manifest = json.loads((data_dir / "manifest.json").read_text())
    sizes = {
        p.name: p.stat().st_size
        for p in model_dir.iterdir()
        if p.suffix in (".onnx", ".json") and p.is_file()
    }
    text = render(meta, summary, cfg, manifest, sizes, command, attribution, notes, quality, curve)
    out = model_dir / "MODEL_CARD.md"
    out.write_text(text)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bandmate.training.model_card",
        description="Write MODEL_CARD.md for an exported model folder.",
    )
    p.add_argument("model_dir")
    p.add_argument("--run", required=True, help="the training run the model came from")
    p.add_argument("--command", required=True, help="the commands that reproduce the model")
    p.add_argument("--note", action="append", default=[], help="an extra paragraph (repeatable)")
    p.add_argument("--quality", help="bench/quality.py's JSON line (a file) for the Music section")
    p.add_argument("--curve", help="a JSON list of {step, real_tokens_seen, bass, upper, val_loss}")
    args = p.parse_args(argv)
    quality = json.loads(Path(args.quality).read_text()) if args.quality else None
    curve = json.loads(Path(args.curve).read_text()) if args.curve else None
    print(
        write_model_card(
            args.model_dir, args.run, args.command, notes=args.note, quality=quality, curve=curve
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
