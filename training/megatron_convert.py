"""Megatron-LM GPT checkpoint -> Hugging Face GPT-2 model folder (the way back to the app).

``packaging/megatron/pretrain_seed.sh`` trains bandmate's seed architecture with Megatron-LM
(megatron-core ``GPTModel``: learned absolute positions, LayerNorm, tanh GELU, tied input and
output embeddings, biases). This module maps its state dict onto ``GPT2LMHeadModel`` and writes
the same Hugging Face folder as a ``bandmate train`` checkpoint (hf_folder), which
``bandmate export`` then turns into an ONNX model folder with its usual parity gate:

    bandmate convert /runs/mg-seed --codec /data/mg -o /runs/mg-seed-hf
    bandmate export /runs/mg-seed-hf -o /models/mg-seed --int8

The name mapping (megatron-core -> transformers GPT-2), per layer i:

    embedding.word_embeddings.weight            transformer.wte.weight (padded rows cut)
    embedding.position_embeddings.weight        transformer.wpe.weight
    decoder.layers.i.input_layernorm.*          transformer.h.i.ln_1.*
    decoder.layers.i.self_attention.linear_qkv  transformer.h.i.attn.c_attn (Conv1D: [in, out])
    decoder.layers.i.self_attention.linear_proj transformer.h.i.attn.c_proj
    decoder.layers.i.pre_mlp_layernorm.*        transformer.h.i.ln_2.*
    decoder.layers.i.mlp.linear_fc1 / fc2       transformer.h.i.mlp.c_fc / c_proj
    decoder.final_layernorm.*                   transformer.ln_f.*

megatron-core's fused QKV weight is grouped per head ([head, (q, k, v), head_dim] rows); GPT-2's
is [q of all heads | k | v] columns: rows are regrouped and transposed. Megatron pads the
vocabulary (``--make-vocab-size-divisible-by``, plus the NullTokenizer's end-of-document id,
which is ``vocab_size`` there): rows past the codec's vocabulary are dropped.

Input: safetensors and JSON only (bandmate never unpickles): a folder with ``model.safetensors``
(the megatron-core state dict) and ``megatron_args.json`` (Megatron-LM's args), or a
``.safetensors`` file (then ``n_head`` must be given unless the JSON lies beside it).
`packaging/megatron/to_safetensors.py`, run once where Megatron-LM trained, writes that folder
from a ``--ckpt-format torch`` save (tensor and pipeline parallel size 1); given a Megatron-LM
save folder, this module says so, after the checks that need no unpickling (sharded and
``torch_dist`` checkpoints are refused with what to do).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from bandmate.models.model_folder import ModelDims, gpt2_config

log = logging.getLogger(__name__)

#: Megatron-LM arguments that must hold for the checkpoint to be a GPT-2 network.
REQUIRED = {
    "position_embedding_type": "learned_absolute",
    "normalization": "LayerNorm",
    "swiglu": False,
    "untie_embeddings_and_output_weights": False,
    "group_query_attention": False,
    "add_bias_linear": True,
}


def _find_pt(path: Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    tracker = path / "latest_checkpointed_iteration.txt"
    if tracker.is_file():
        it = tracker.read_text().strip()
        path = path / ("release" if it == "release" else f"iter_{int(it):07d}")
    ranks = sorted(p for p in path.glob("mp_rank_*") if p.is_dir())
    if len(ranks) > 1:
        raise ValueError(
            f"{path} has {len(ranks)} model-parallel shards: convert it to tensor and pipeline "
            "parallel size 1 first (Megatron-LM tools/checkpoint/convert.py)"
        )
    if ranks and (ranks[0] / "model_optim_rng.pt").is_file():
        return ranks[0] / "model_optim_rng.pt"
    if (path / ".metadata").is_file():
        raise ValueError(
            f"{path} is a torch_dist checkpoint: save it once with Megatron-LM's "
            "--ckpt-convert-format torch --ckpt-convert-save DIR, then convert DIR"
        )
    raise FileNotFoundError(f"{path}: no Megatron-LM checkpoint (model_optim_rng.pt) found")


ARGS_JSON = "megatron_args.json"


def read_megatron_checkpoint(path: Path) -> tuple[dict, dict]:
    """(megatron-core model state dict, Megatron-LM args as a dict; {} if absent)."""
    from safetensors.torch import load_file

    path = Path(path)
    weights = path / "model.safetensors" if path.is_dir() else path
    if weights.suffix != ".safetensors" or not weights.is_file():
        pt = _find_pt(path)  # raises with what to do for sharded or torch_dist saves
        raise ValueError(
            f"{pt} is a pickle, which bandmate does not open: run "
            f"'python packaging/megatron/to_safetensors.py {path} OUT' where Megatron-LM "
            "trained, then convert OUT"
        )
    args_file = weights.parent / ARGS_JSON
    args = json.loads(args_file.read_text()) if args_file.is_file() else {}
    return load_file(str(weights)), args


def megatron_to_hf(
    sd: dict[str, torch.Tensor],
    vocab_size: int,
    n_head: int,
    gelu: str = "tanh",
    layernorm_eps: float = 1e-5,
) -> tuple[Any, dict[str, torch.Tensor]]:
    """(GPT2Config, GPT2LMHeadModel state dict) from a megatron-core GPTModel state dict."""

    sd = {k.removeprefix("module."): v for k, v in sd.items() if not k.endswith("_extra_state")}
    if "output_layer.weight" in sd and not torch.equal(
        sd["output_layer.weight"], sd["embedding.word_embeddings.weight"]
    ):
        raise ValueError("the output layer is not tied to the embedding: not bandmate's GPT-2")
    wte = sd["embedding.word_embeddings.weight"]
    if wte.shape[0] < vocab_size:
        raise ValueError(f"embedding has {wte.shape[0]} rows < the codec's {vocab_size} tokens")
    wpe = sd["embedding.position_embeddings.weight"]
    h = wte.shape[1]
    if h % n_head:
        raise ValueError(f"hidden size {h} is not a multiple of {n_head} heads")
    hd = h // n_head
    layers = sorted(
        {int(k.split(".")[2]) for k in sd if k.startswith("decoder.layers.")},
    )
    if layers != list(range(len(layers))) or not layers:
        raise ValueError(f"decoder layers {layers} are not 0..n-1")
    out = {
        "transformer.wte.weight": wte[:vocab_size],
        "transformer.wpe.weight": wpe,
        "transformer.ln_f.weight": sd["decoder.final_layernorm.weight"],
        "transformer.ln_f.bias": sd["decoder.final_layernorm.bias"],
    }
    for i in layers:
        m, o = f"decoder.layers.{i}.", f"transformer.h.{i}."
        qkv_w = sd[m + "self_attention.linear_qkv.weight"]  # [n_head * 3 * hd, h]
        qkv_b = sd[m + "self_attention.linear_qkv.bias"]
        if qkv_w.shape != (3 * h, h):
            raise ValueError(f"layer {i}: QKV weight {tuple(qkv_w.shape)}, expected {(3 * h, h)}")
        w = qkv_w.view(n_head, 3, hd, h).transpose(0, 1).reshape(3 * h, h)  # [q|k|v] rows
        b = qkv_b.view(n_head, 3, hd).transpose(0, 1).reshape(3 * h)
        fc1 = sd[m + "mlp.linear_fc1.weight"]
        if fc1.shape != (4 * h, h):
            raise ValueError(f"layer {i}: MLP {tuple(fc1.shape)}, expected {(4 * h, h)} (no GLU)")
        out |= {
            o + "ln_1.weight": sd[m + "input_layernorm.weight"],
            o + "ln_1.bias": sd[m + "input_layernorm.bias"],
            o + "attn.c_attn.weight": w.t(),
            o + "attn.c_attn.bias": b,
            o + "attn.c_proj.weight": sd[m + "self_attention.linear_proj.weight"].t(),
            o + "attn.c_proj.bias": sd[m + "self_attention.linear_proj.bias"],
            o + "ln_2.weight": sd[m + "pre_mlp_layernorm.weight"],
            o + "ln_2.bias": sd[m + "pre_mlp_layernorm.bias"],
            o + "mlp.c_fc.weight": fc1.t(),
            o + "mlp.c_fc.bias": sd[m + "mlp.linear_fc1.bias"],
            o + "mlp.c_proj.weight": sd[m + "mlp.linear_fc2.weight"].t(),
            o + "mlp.c_proj.bias": sd[m + "mlp.linear_fc2.bias"],
        }
    cfg = gpt2_config(ModelDims(len(layers), n_head, h, int(wpe.shape[0]), vocab_size))
    cfg.activation_function = {"tanh": "gelu_new", "exact": "gelu"}[gelu]
    cfg.layer_norm_epsilon = layernorm_eps
    return cfg, {k: v.detach().float().contiguous() for k, v in out.items()}


def check_args(args: dict) -> None:
    """Refuse a Megatron-LM run that is not the GPT-2 network bandmate exports."""
    wrong = {k: args[k] for k, v in REQUIRED.items() if k in args and args[k] != v}
    if wrong:
        raise ValueError(
            f"the Megatron-LM run is not bandmate's GPT-2 architecture: {wrong} "
            f"(needed: {REQUIRED})"
        )


def convert_megatron(
    checkpoint: Path,
    codec: Any,
    out_dir: Path,
    n_head: int | None = None,
) -> Path:
    """Write ``out_dir`` as a Hugging Face model folder (hf_folder) from a Megatron-LM
    checkpoint; ``codec`` is the CodecConfig of the data it was trained on."""
    from bandmate.training.hf_folder import write_hf_files
    from safetensors.torch import save_file

    sd, args = read_megatron_checkpoint(Path(checkpoint))
    check_args(args)
    heads = n_head or args.get("num_attention_heads")
    if not heads:
        raise ValueError("the checkpoint does not say its number of heads: pass --n-head")
    gelu = "tanh" if args.get("openai_gelu", True) else "exact"
    if not args.get("openai_gelu", True):
        log.warning("the run used exact GELU (no --openai-gelu): converting it as such")
    cfg, hf = megatron_to_hf(
        sd, codec.vocab.size, int(heads), gelu, float(args.get("layernorm_epsilon", 1e-5))
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.pop("lm_head.weight", None)  # tied: stored once, as save_pretrained does
    save_file(hf, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_hf_files(out, cfg, codec)
    log.info(
        "converted %s: %d layers x %d heads x %d, %d positions -> %s",
        checkpoint,
        cfg.n_layer,
        cfg.n_head,
        cfg.n_embd,
        cfg.n_positions,
        out,
    )
    return out


def load_codec(path: Path) -> Any:
    """The codec of a codec.json, a `bandmate prepare` folder (manifest.json) or a folder
    written by `python -m bandmate.training.megatron` (megatron.json)."""
    import json

    from bandmate.models.config import CodecConfig

    path = Path(path)
    if path.is_file():
        return CodecConfig.from_json(json.loads(path.read_text()))
    for name, key in (("codec.json", None), ("manifest.json", "codec"), ("megatron.json", "codec")):
        f = path / name
        if f.is_file():
            d = json.loads(f.read_text())
            if key is None or key in d:
                return CodecConfig.from_json(d if key is None else d[key])
    raise FileNotFoundError(
        f"{path}: no codec.json, manifest.json or megatron.json with the codec config"
    )
