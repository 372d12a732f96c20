"""The decode graph export: built from GPT-2 weights, checked against PyTorch, int8, folder
entries. Real ONNX Runtime, tiny random models."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from bandmate.models.model_folder import decode_io_names
from bandmate.training.export import ParityError, random_model
from bandmate.training.export_fast import (
    KV_FP32_NAME,
    KV_INT8_NAME,
    LM_HEAD,
    FastParityError,
    build_fast_graph,
    export_fast,
    fast_agreement,
    fast_parity_check,
    quantize_fast_int8,
    write_fast,
)
from support.models import export_random


@pytest.fixture(scope="module")
def model():
    return random_model(300, n_layer=2, n_head=4, n_embd=64, n_positions=128, seed=1)


def test_graph_names_and_ops(model):
    m = build_fast_graph(model)
    ins, outs = decode_io_names(2)
    assert [i.name for i in m.graph.input] == ins
    assert [o.name for o in m.graph.output] == outs
    ops = {n.op_type for n in m.graph.node}
    assert {"GroupQueryAttention", "FastGelu", "LayerNormalization"} <= ops
    assert not ops & {"Concat", "Transpose"}  # no cache copies in the graph


def test_parity_prefill_and_step_by_step(model, tmp_path):
    path = export_fast(model, tmp_path / KV_FP32_NAME)
    rep = fast_parity_check(model, path)
    assert rep["max_abs_logit_diff"] <= 1e-4
    chunks = {c["chunk"] for c in rep["cases"]}
    batches = {len(c["prompts"]) for c in rep["cases"]}
    assert chunks == {1, 3} and batches == {1, 2, 3}


def test_parity_catches_a_wrong_graph(model, tmp_path):
    path = export_fast(model, tmp_path / KV_FP32_NAME)
    other = random_model(300, n_layer=2, n_head=4, n_embd=64, n_positions=128, seed=2)
    with pytest.raises(FastParityError, match="differs from PyTorch") as e:
        fast_parity_check(other, path)
    assert isinstance(e.value, ParityError)  # the export CLI's exit status 3 covers it


def test_int8_keeps_lm_head_fp32_and_agrees(model, tmp_path):
    src = export_fast(model, tmp_path / KV_FP32_NAME)
    q = quantize_fast_int8(src, tmp_path / KV_INT8_NAME)
    g = onnx.load(str(q)).graph
    assert any(n.op_type == "MatMul" and n.name == LM_HEAD for n in g.node)
    assert any(n.op_type == "DynamicQuantizeLinear" or "Integer" in n.op_type for n in g.node)
    seqs = [np.random.default_rng(k).integers(0, 300, 48) for k in range(3)]
    rep = fast_agreement(model, q, seqs)
    assert rep["tokens"] == 144 and rep["top1_match"] > 0.9 and rep["mean_kl"] < 0.05


def test_write_fast_without_fp32(model, tmp_path):
    files, rep = write_fast(model, tmp_path, int8=True, fp32=False)
    assert files == {"kv_fp32": None, "kv_int8": KV_INT8_NAME}
    assert sorted(p.name for p in tmp_path.iterdir()) == [KV_INT8_NAME]
    assert rep["parity"]["max_abs_logit_diff"] <= 1e-4 and "top1_match" in rep["int8"]


def test_export_random_with_kv(tmp_path):
    out = export_random(tmp_path / "m", int8=True, kv=True)
    meta = json.loads((out / "bandmate.json").read_text())
    assert meta["onnx"]["kv_fp32"] == KV_FP32_NAME and meta["onnx"]["kv_int8"] == KV_INT8_NAME
    assert meta["onnx"]["default"] == "model.int8.onnx"  # the contract graph stays
    assert meta["export"]["kv"]["parity"]["max_abs_logit_diff"] <= 1e-4
    assert (out / KV_FP32_NAME).is_file() and (out / KV_INT8_NAME).is_file()


def test_unsupported_gpt2_options_are_refused():
    m = random_model(50, n_layer=1, n_head=2, n_embd=16, n_positions=16)
    m.config.activation_function = "relu"
    with pytest.raises(ValueError, match="activation"):
        build_fast_graph(m)
    m.config.activation_function = "gelu_new"
    m.config.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        build_fast_graph(m)


def test_exact_gelu_model(tmp_path):
    """GPT-2 configs with exact (erf) gelu get the Gelu op and still match PyTorch."""
    m = random_model(60, n_layer=1, n_head=2, n_embd=32, n_positions=32, seed=3)
    m.config.activation_function = "gelu"
    from transformers.activations import ACT2FN

    for block in m.transformer.h:
        block.mlp.act = ACT2FN["gelu"]
    with torch.no_grad():
        path = export_fast(m, tmp_path / KV_FP32_NAME)
    assert fast_parity_check(m, path)["max_abs_logit_diff"] <= 1e-4


def test_export_cli_with_kv_then_generate(tmp_path):
    """`bandmate export RUN -o DIR --int8 --kv --no-fp32` on a real tiny run: the folder
    loads on the decode graph and generates."""
    from bandmate.models import generate as G
    from bandmate.models.sampler import SamplingConfig
    from bandmate.models.session import ModelSession
    from bandmate.models.types import Note, Piece, Track
    from bandmate.training.train import TrainConfig, train
    from support.models import CHORALE_CODEC
    from support.synthetic import write_synthetic_data

    from bandmate.cli import main

    data = write_synthetic_data(tmp_path / "data", CHORALE_CODEC, 32, 16)
    cfg = TrainConfig(preset="tiny", n_positions=128, batch_size=4, max_steps=4, lr=3e-3,
                      warmup_steps=1, eval_every=4, save_every=4)
    train(data, tmp_path / "run", cfg, progress=False)
    out = tmp_path / "model"
    argv = ["export", str(tmp_path / "run"), "-o", str(out), "--int8", "--kv", "--no-fp32"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "bandmate.json", "model.int8.onnx", KV_INT8_NAME, "tokenizer.json"
    ]
    meta = json.loads((out / "bandmate.json").read_text())
    assert meta["onnx"]["kv_int8"] == KV_INT8_NAME and meta["onnx"]["kv_fp32"] is None
    assert meta["export"]["kv"]["parity"]["max_abs_logit_diff"] <= 1e-4
    s = ModelSession.load(out)
    assert s.fast and s.onnx_file == KV_INT8_NAME
    piece = Piece(
        tracks=(Track("SOPRANO", tuple(Note(4 * i, 60 + i, 4 * i + 4) for i in range(4))),),
        bars=1,
    )
    done = G.continue_piece(s, piece, 1, sampling=SamplingConfig(seed=0))
    assert done.bars == 2
