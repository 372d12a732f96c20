"""`bandmate export` on a real (tiny) training run: files, parity, int8 agreement."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import torch
from bandmate.training.export import load_run_model
from bandmate.training.model_card import write_model_card
from bandmate.training.train import TrainConfig, train
from support.models import CHORALE_CODEC
from support.synthetic import write_synthetic_data

from bandmate.cli import main


def test_train_then_export_cli(tmp_path):
    data = write_synthetic_data(tmp_path / "data", CHORALE_CODEC, 96, 16)
    cfg = TrainConfig(
        preset="tiny",
        n_positions=128,
        batch_size=4,
        max_steps=20,
        lr=3e-3,
        warmup_steps=2,
        eval_every=10,
        save_every=10,
    )
    summary = train(data, tmp_path / "run", cfg, progress=False)
    out = tmp_path / "model"
    assert main(["export", str(tmp_path / "run"), "-o", str(out), "--int8"]) == 0
    meta = json.loads((out / "bandmate.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == [
        "bandmate.json",
        "model.int8.onnx",
        "model.kv.int8.onnx",
        "model.kv.onnx",
        "model.onnx",
        "tokenizer.json",
    ]  # the in-place decode graph (model.kv*) is written by default
    assert meta["onnx"]["kv_int8"] == "model.kv.int8.onnx"
    assert meta["name"] == "model" and meta["onnx"]["default"] == "model.int8.onnx"
    assert meta["val_loss"] == summary["val_loss"]
    assert meta["unigram_val_loss"] == summary["unigram_val_loss"]
    assert meta["labels_seen"][:4] and set(meta["labels_seen"]) == {
        "SOPRANO",
        "ALTO",
        "TENOR",
        "BASS",
    }
    assert meta["training"]["steps"] == 20 and meta["training"]["train_samples"] == 96
    assert meta["export"]["parity"]["max_abs_logit_diff"] <= 1e-4
    agree = meta["export"]["int8"]
    assert agree["top1_match"] > 0.8 and agree["mean_kl"] < 0.1
    assert agree["tokens"] == sum(min(len(s), 128) for s in _val_samples(data))
    # The exported graph computes the trained model, on a real validation sample.
    model, _ = load_run_model(tmp_path / "run")
    sample = np.fromfile(data / "val-00000.bin", np.uint16)[:50].astype(np.int64)[None]
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {
        "input_ids": sample,
        "attention_mask": np.ones_like(sample),
        "position_ids": np.arange(50, dtype=np.int64)[None],
    }
    feed |= {i.name: np.zeros((1, 2, 0, 32), np.float32) for i in sess.get_inputs()[3:]}
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(sample)).logits.numpy()
    assert np.abs(sess.run(["logits"], feed)[0] - ref).max() <= 1e-4
    # The model card is written from these artifacts.
    card = write_model_card(out, tmp_path / "run", "bandmate train ...").read_text()
    assert "CC BY 4.0" in card and "https://github.com/omarperacha/js-fakes" in card
    assert f"{meta['val_loss']:.4f}" in card and f"{meta['unigram_val_loss']:.4f}" in card
    assert "bandmate train ..." in card and "model.int8.onnx" in card
    assert "--average" not in card
    _average_two_checkpoints(tmp_path)


def _average_two_checkpoints(tmp_path) -> None:
    """`export --average 2` writes the mean of the run's two kept checkpoints (steps 10 and
    20), says so in bandmate.json and the card; more than the run kept is refused."""
    from safetensors.torch import load_file

    run, out = tmp_path / "run", tmp_path / "avg"
    assert main(["export", str(run), "-o", str(out), "--average", "2", "--no-kv"]) == 0
    meta = json.loads((out / "bandmate.json").read_text())
    assert meta["training"]["averaged_steps"] == [10, 20] and meta["training"]["steps"] == 20
    model, state = load_run_model(run, average=2)
    assert state["averaged_steps"] == [10, 20]
    w = [load_file(str(run / f"checkpoints/step-{s:07d}/model.safetensors")) for s in (10, 20)]
    key = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.equal(w[0][key], w[1][key])
    assert torch.allclose(model.state_dict()[key], (w[0][key] + w[1][key]) / 2)
    card = write_model_card(out, run, "bandmate export --average 2").read_text()
    assert "the mean of the checkpoints at steps 10, 20 (`bandmate export --average 2`)" in card
    assert main(["export", str(run), "-o", str(tmp_path / "x"), "--average", "3"]) == 2
    assert main(["export", str(out), "-o", str(tmp_path / "x"), "--average", "0"]) == 2
    assert not (tmp_path / "x").exists()


def test_export_cli_errors_are_actionable(tmp_path, caplog):
    assert main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "m")]) == 2
    assert "no checkpoint" in caplog.text
    import pytest
    from bandmate.training.checkpoint_average import averaged_checkpoints

    with pytest.raises(ValueError, match="needs a run folder"):
        averaged_checkpoints(None, tmp_path, 2)
    with pytest.raises(ValueError, match="--average takes the number"):
        averaged_checkpoints(None, tmp_path, 0)
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "m"), "--no-fp32"]) == 2


def _val_samples(data):
    from bandmate.training.data import open_data

    val = open_data(data, "val")
    return [val[i] for i in range(len(val))]
