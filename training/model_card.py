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
    n_params = None
    if m:
        h, n, v, p = m["n_embd"], m["n_layer"], m["vocab_size"], m["n_positions"]
        n_params = 12 * n * h * h + 13 * n * h + (v + p) * h + 2 * h
    lines = [
        f"# {meta['name']}: the bandmate chorale model",
        "",
        "A small GPT-2 that writes four-part chorale music as mmmtrack tokens: it continues the",
        "bars it is given and adds a voice (SOPRANO, ALTO, TENOR or BASS) to the others.",
        "It is the model `bandmate generate` and the app use when no model is named.",
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
        f"- Prepared with `bandmate prepare`: {codec['bars']}-bar windows, voices "
        f"{', '.join(codec['voices'])} (tracks labelled by order), {codec['density_bins']} "
        f"DENSITY buckets (note-count edges {codec['density_edges']}), meter `{codec['meter']}`.",
        f"- Train: {counts.get('train', {}).get('samples', tr.get('train_samples'))} samples, "
        f"{counts.get('train', {}).get('tokens', tr.get('train_tokens'))} tokens (transposed); "
        f"validation: {counts.get('val', {}).get('samples', tr.get('val_samples'))} samples, "
        f"{counts.get('val', {}).get('tokens')} tokens, from held-out files, not transposed.",
        f"- Files: {manifest.get('files_ok', 'n/a')} of {manifest.get('files_total', 'n/a')} "
        f"used, {manifest.get('files_skipped', 'n/a')} skipped"
        + (
            f" ({len(manifest['config']['exclude'])} of them held out by content for "
            "bench/quality.py: `--exclude bench/holdout/jsfakes.txt`)."
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
        lines += render_quality(quality, curve)
    lines += [
        "## Reproduce",
        "",
        "```",
        command.strip(),
        "```",
        "",
        "## Limits",
        "",
        "- Trained only on machine-generated four-part chorales: it knows that style and those",
        "  four voice labels; other instruments' labels exist in the vocabulary but are untrained.",
        "- Small and briefly trained (a CPU budget of about an hour); a model trained with",
        "  `--preset seed` on a GPU will be much better (docs/training.md).",
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    model_dir: str | Path,
    run: str | Path,
    command: str,
    attribution: str = JSF_ATTRIBUTION,
    notes: list[str] | None = None,
    quality: dict | None = None,
    curve: list[dict] | None = None,
) -> Path:
    model_dir, run = Path(model_dir), Path(run)
    meta = json.loads((model_dir / "bandmate.json").read_text())
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
