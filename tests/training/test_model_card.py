"""MODEL_CARD.md text for the two kinds of model: chorale (program labels) and band."""

from __future__ import annotations

from bandmate.training.model_card import JSF_ATTRIBUTION, default_attribution, render

MODEL = {"n_embd": 64, "n_layer": 2, "n_head": 2, "vocab_size": 418, "n_positions": 128}


def _meta(scheme: str | None) -> dict:
    codec = {"bars": 4, "voices": [], "density_bins": 4, "density_edges": [14, 28, 53],
             "meter": "strict"}  # fmt: skip
    if scheme:
        codec["label_scheme"] = scheme
    else:
        codec["voices"] = ["SOPRANO", "ALTO", "TENOR", "BASS"]
    return {"name": "m", "model": MODEL, "codec": codec}


def test_band_card_carries_every_licence():
    meta = _meta("gm-family")
    text = render(meta, {}, {}, {}, {"model.int8.onnx": 1}, "cmd", default_attribution(meta))
    assert "the bandmate band model" in text and "gm-family" in text
    for must in ("Contributors to the Freedoom project", "Neither the name of the Freedoom",
                 "CC BY 4.0", "Gillick", "Copyright (c) 2020 Music X Lab",
                 "permission notice shall be included", "bench/holdout/band.txt"):  # fmt: skip
        assert must in text, must


def test_chorale_card_unchanged():
    meta = _meta(None)
    assert default_attribution(meta) is JSF_ATTRIBUTION
    text = render(meta, {}, {}, {}, {"model.int8.onnx": 1}, "cmd", JSF_ATTRIBUTION)
    assert "the bandmate chorale model" in text and "SOPRANO, ALTO, TENOR, BASS" in text


def test_band_card_credits_only_the_collections_it_was_prepared_from():
    meta = _meta("gm-family")
    meta["training"] = {"manifest": {"config": {
        "sources": ["../shared/data/freedoom/current", "../shared/data/freedoom/history",
                    "../shared/data/groove-dev"]}}}  # fmt: skip
    text = render(meta, {}, {}, {}, {"model.int8.onnx": 1}, "cmd", default_attribution(meta))
    assert "Trained on two collections" in text
    assert "Contributors to the Freedoom project" in text and "CC BY 4.0" in text
    assert "POP909" not in text and "Music X Lab" not in text and "pop songs" not in text
    meta["training"]["manifest"]["config"]["sources"].append("/elsewhere/my-midi")
    assert "Music X Lab" in default_attribution(meta)  # an unknown source: every notice


def test_a_warm_started_run_says_what_it_started_from():
    meta = _meta("gm-family")
    text = render(meta, {}, {"init_from": "band"}, {}, {"model.int8.onnx": 1}, "cmd",
                  default_attribution(meta))
    assert "Started from the weights of `band` (`--init-from`)" in text
    plain = render(meta, {}, {}, {}, {"model.int8.onnx": 1}, "cmd", default_attribution(meta))
    assert "--init-from" not in plain


def test_band_card_shows_the_benchmark_and_its_intervals():
    from bandmate.training.model_card import render_quality_band

    def who(**kw):
        return {w: dict(kw) for w in ("model", "own", "random")}

    q = {"windows": 40, "pieces": 16, "seed": 0, "holdout_verified": True,
         "settings": {"temperature": 0.6, "top_p": 0.9},
         "bass": who(chord_tones=0.8, success=1.0, repairs=0),
         "drums": who(bars_with_hits=1.0, kick_on_1=0.97, backbeat=0.54, on_8th=0.7,
                      success=1.0, repairs=0),
         "continue": who(in_key=0.91, copying=0.6, success=1.0, repairs=0),
         "goals": {"drums_backbeat": False, "success": True}, "goals_met": "1/2",
         "ci95": {"drums_backbeat": {"model": [0.39, 0.67], "model_over_own": [0.53, 1.05]},
                  "continue_in_key": {"model": [None, None],
                                      "model_over_own": [None, None]}}}  # fmt: skip
    text = "\n".join(render_quality_band(q))
    assert "| add drums | beats 2 and 4 with a snare or clap | 0.540 / 0.540 / 0.540 |" in text
    assert "drums_backbeat not" in text
    assert "resampling whole pieces (16 pieces" in text and "backbeat 0.39-0.67." in text
    assert "in key" not in text.split("95% intervals")[1]  # no interval where nothing counted
    del q["ci95"]
    assert "95% intervals" not in "\n".join(render_quality_band(q))
