"""--init-from: a run starts from a run folder's or a model folder's weights (int8 dequantized)."""

from __future__ import annotations

import json

import pytest
import torch
from bandmate.training.export import ExportConfig, random_model, write_model_folder
from bandmate.training.train import TrainConfig, train
from bandmate.training.train_setup import build_model
from bandmate.training.warm_start import load_init_weights, read_init_weights
from support.models import BAND_CODEC, CHORALE_CODEC
from support.synthetic import write_synthetic_data

TINY = {"n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 256}


def _exported(tmp_path, fp32: bool):
    model = random_model(CHORALE_CODEC.vocab.size, 1, 2, 32, 256, seed=3)
    with torch.no_grad():  # biases and norms unlike each other, as trained ones are
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path / ("fp32" if fp32 else "int8")
    write_model_folder(model, CHORALE_CODEC, folder, ExportConfig(fp32=fp32, int8=True))
    return model, folder


def _fresh():
    return build_model(TrainConfig(preset="tiny", **TINY), CHORALE_CODEC.vocab.size).eval()


def test_fp32_graph_gives_back_the_exact_weights(tmp_path):
    model, folder = _exported(tmp_path, fp32=True)
    weights, codec, source = read_init_weights(folder)
    assert codec == CHORALE_CODEC and "fp32" in source
    own = model.state_dict()
    named = {k for k in own if k != "lm_head.weight" and not k.endswith(".attn.bias")}
    assert set(weights) == named
    for k, v in weights.items():
        assert torch.equal(v, own[k]), k


def test_int8_graph_is_dequantized_to_within_half_a_step(tmp_path):
    model, folder = _exported(tmp_path, fp32=False)
    fresh = _fresh()
    assert "int8, dequantized" in load_init_weights(fresh, str(folder), CHORALE_CODEC)
    got, want = fresh.state_dict(), model.state_dict()
    for k, v in want.items():
        tol = 1e-7 if v.dim() < 2 else v.abs().max().item() / 127 * 0.51 + 1e-7
        assert (got[k] - v).abs().max().item() <= tol, k
    assert got["lm_head.weight"].data_ptr() == got["transformer.wte.weight"].data_ptr()
    ids = torch.arange(40)[None] % CHORALE_CODEC.vocab.size
    with torch.no_grad():
        a, b = fresh(ids).logits, model.eval()(ids).logits
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


def test_a_wrong_codec_or_shape_is_refused_with_the_fix(tmp_path):
    _, folder = _exported(tmp_path, fp32=True)
    with pytest.raises(ValueError, match="prepare the data with the model's settings"):
        load_init_weights(_fresh(), str(folder), BAND_CODEC)
    wide = build_model(TrainConfig(preset="tiny", **{**TINY, "n_embd": 64}),
                       CHORALE_CODEC.vocab.size)
    with pytest.raises(ValueError, match="--n-embd"):
        load_init_weights(wide, str(folder), CHORALE_CODEC)
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        load_init_weights(_fresh(), "nonexistent", CHORALE_CODEC)


def test_a_run_starts_from_another_runs_weights(tmp_path):
    data = write_synthetic_data(tmp_path / "data", CHORALE_CODEC, 80, 16)
    cfg = TrainConfig(preset="tiny", **TINY, batch_size=4, max_steps=30, lr=3e-3,
                      eval_every=30, eval_batches=2)
    first = train(data, tmp_path / "a", cfg, progress=False)
    assert (tmp_path / "a" / "model.safetensors").exists()
    short = TrainConfig(**{**cfg.to_json(), "max_steps": 1, "lr": 1e-9, "eval_every": 1})
    fresh = train(data, tmp_path / "b", short, progress=False)
    warm = train(data, tmp_path / "c", TrainConfig(**{**short.to_json(),
                 "init_from": str(tmp_path / "a")}), progress=False)
    # one step at a vanishing learning rate: the warm run scores what the first run ended on
    assert warm["val_loss"] == pytest.approx(first["val_loss"], rel=0.02)
    assert warm["val_loss"] < fresh["val_loss"] - 0.1
    saved = json.loads((tmp_path / "c" / "train_config.json").read_text())
    assert saved["init_from"] == str(tmp_path / "a")
