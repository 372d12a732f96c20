"""A Megatron round trip on the CPU: a real megatron-core GPTModel of the seed architecture
(tiny), saved as Megatron-LM does (--ckpt-format torch), converted with `bandmate convert`,
loaded by Hugging Face with the same logits, and exported through the parity gate."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support.models import CHORALE_CODEC

from bandmate.cli import main

pytest.importorskip("megatron.core")


class _CpuBuffer:
    """megatron-core's attention scratch buffer, on the CPU (its own allocates on CUDA)."""

    def get_tensor(self, shape, dtype, name, mem_alloc_context=None):
        return torch.empty(*shape, dtype=dtype)


@pytest.fixture(scope="module")
def megatron_model():
    import torch.nn.functional as F
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig
    from megatron.core.transformer.utils import openai_gelu

    started = not torch.distributed.is_initialized()
    if started:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(31500 + os.getpid() % 1000)
        torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    ps.initialize_model_parallel(1, 1)
    torch.manual_seed(0)
    cfg = TransformerConfig(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        use_cpu_initialization=True,
        normalization="LayerNorm",
        activation_func=openai_gelu,  # Megatron-LM --openai-gelu: GPT-2's tanh GELU
        add_bias_linear=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        layernorm_epsilon=1e-5,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        gated_linear_unit=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        init_method_std=0.2,  # large weights: a wrong mapping cannot hide in tiny logits
    )
    assert cfg.activation_func is not F.gelu
    padded = 128 * ((CHORALE_CODEC.vocab.size + 1 + 127) // 128)  # NullTokenizer eod + padding
    model = GPTModel(
        config=cfg,
        transformer_layer_spec=get_gpt_layer_local_spec(),
        vocab_size=padded,
        max_sequence_length=96,
        position_embedding_type="learned_absolute",
        share_embeddings_and_output_weights=True,
    ).eval()
    with torch.no_grad():  # biases and norms are zero / one at init: make them count
        for name, p in model.named_parameters():
            if name.endswith(("bias", "layernorm.weight")):
                p.add_(torch.randn_like(p) * 0.1)
    # Two CUDA-only pieces of megatron-core's forward, replaced for the CPU: the attention
    # scratch buffer and the CUDA RNG fork around (here zero) attention dropout.
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    tracker = get_cuda_rng_tracker()
    real = ps.get_global_memory_buffer
    ps.get_global_memory_buffer = lambda: _CpuBuffer()
    tracker.fork = lambda *a, **k: contextlib.nullcontext()
    try:
        yield model, padded
    finally:
        ps.get_global_memory_buffer = real
        del tracker.fork
        ps.destroy_model_parallel()
        if started:
            torch.distributed.destroy_process_group()


def _save_like_megatron_lm(model, padded, root):
    """What Megatron-LM's --ckpt-format torch writes (TP = PP = 1)."""
    args = argparse.Namespace(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        max_position_embeddings=96,
        padded_vocab_size=padded,
        position_embedding_type="learned_absolute",
        normalization="LayerNorm",
        openai_gelu=True,
        swiglu=False,
        untie_embeddings_and_output_weights=False,
        group_query_attention=False,
        add_bias_linear=True,
        layernorm_epsilon=1e-5,
    )
    sd = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}
    d = root / "iter_0000010" / "mp_rank_00"
    d.mkdir(parents=True)
    torch.save({"model": sd, "args": args, "iteration": 10}, d / "model_optim_rng.pt")
    (root / "latest_checkpointed_iteration.txt").write_text("10")


def test_megatron_checkpoint_converts_to_the_same_logits_and_exports(megatron_model, tmp_path):
    from transformers import AutoModelForCausalLM

    model, padded = megatron_model
    mg = tmp_path / "mg"
    _save_like_megatron_lm(model, padded, mg)
    (tmp_path / "codec.json").write_text(json.dumps(CHORALE_CODEC.to_json()))
    hf = tmp_path / "hf"
    cmd = ["convert", "--codec", str(tmp_path / "codec.json"), "-o", str(hf)]
    assert main([*cmd, str(mg)]) == 2  # bandmate never unpickles Megatron's .pt itself
    st = tmp_path / "st"
    script = Path(__file__).resolve().parents[2] / "packaging" / "megatron" / "to_safetensors.py"
    subprocess.run([sys.executable, str(script), str(mg), str(st)], check=True)
    assert sorted(p.name for p in st.iterdir()) == ["megatron_args.json", "model.safetensors"]
    assert main([*cmd, str(st)]) == 0

    v = CHORALE_CODEC.vocab.size
    ids = torch.randint(0, v, (2, 40), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(40).expand(2, 40)
    mask = torch.triu(torch.ones(1, 1, 40, 40, dtype=torch.bool), 1)  # True = masked
    with torch.no_grad():
        ref = model(ids, pos, mask)[..., :v]
        got = AutoModelForCausalLM.from_pretrained(hf).eval()(input_ids=ids).logits
    assert float(ref.abs().max()) > 1  # the logits are not trivially small
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=2e-4, rtol=1e-4)

    out = tmp_path / "model"
    assert main(["export", str(hf), "-o", str(out), "--no-kv"]) == 0
    meta = json.loads((out / "bandmate.json").read_text())
    assert meta["model"] == {
        "n_layer": 2,
        "n_head": 4,
        "n_embd": 64,
        "n_positions": 96,
        "vocab_size": v,
    }
    assert meta["export"]["parity"]["max_abs_logit_diff"] <= 1e-4


def test_convert_refuses_other_architectures_and_sharded_checkpoints(tmp_path, caplog):
    from bandmate.training.megatron_convert import check_args

    with pytest.raises(ValueError, match="swiglu"):
        check_args({"swiglu": True, "normalization": "LayerNorm"})
    for r in ("mp_rank_00", "mp_rank_01"):
        (tmp_path / "iter_0000001" / r).mkdir(parents=True)
    (tmp_path / "codec.json").write_text(json.dumps(CHORALE_CODEC.to_json()))
    cmd = ["convert", str(tmp_path / "iter_0000001"), "--codec", str(tmp_path / "codec.json")]
    assert main([*cmd, "-o", str(tmp_path / "hf")]) == 2
    assert "parallel size 1" in caplog.text
