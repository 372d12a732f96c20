"""Hugging Face model folders: what makes a checkpoint (or a run) load with
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` as it is.

A folder holds, next to ``model.safetensors`` (state-dict names of ``GPT2LMHeadModel``, the
tied ``lm_head.weight`` stored once, as ``save_pretrained`` does):

    config.json              GPT2Config (``model_type: gpt2``, architectures), save_pretrained's
    generation_config.json   GenerationConfig from it (bos/eos = PIECE_START, pad = [PAD])
    tokenizer.json           WordLevel over whitespace, with a decoder that joins by spaces
    tokenizer_config.json    PreTrainedTokenizerFast, the special tokens, model_max_length
    codec.json               bandmate's codec config (``bandmate export`` needs it)

All are JSON; weights are safetensors. Nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bandmate.models.config import CodecConfig
from bandmate.models.vocab import PAD, PIECE_START, SPECIALS, Vocab
from bandmate.training.run_folder import read_json, write_json, write_text_durable

CONFIG, GENERATION, WEIGHTS = "config.json", "generation_config.json", "model.safetensors"
TOKENIZER, TOKENIZER_CONFIG, CODEC = "tokenizer.json", "tokenizer_config.json", "codec.json"


def tokenizer_config(vocab: Vocab, max_length: int) -> dict:
    """The ``tokenizer_config.json`` that AutoTokenizer reads next to ``tokenizer.json``."""
    piece = vocab.tokens[PIECE_START]
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": piece,
        "eos_token": piece,
        "pad_token": SPECIALS[PAD],
        "unk_token": "[UNK]",
        "model_max_length": int(max_length),
        "clean_up_tokenization_spaces": False,
        "padding_side": "left",
        "model_input_names": ["input_ids", "attention_mask"],
    }


def model_config_files(model_config: Any) -> dict[str, str]:
    """config.json and generation_config.json as ``save_pretrained`` writes them."""
    from transformers import GenerationConfig

    cfg = model_config.__class__.from_dict(model_config.to_dict())
    cfg.architectures = ["GPT2LMHeadModel"]
    gen = GenerationConfig.from_model_config(cfg)
    return {
        CONFIG: cfg.to_json_string(use_diff=True),
        GENERATION: gen.to_json_string(use_diff=True),
    }


def write_hf_files(folder: Path, model_config: Any, codec: CodecConfig) -> None:
    """Everything but the weights: config, generation config, tokenizer, codec (durably)."""
    folder = Path(folder)
    vocab = codec.vocab
    for name, text in model_config_files(model_config).items():
        write_text_durable(folder / name, text)
    write_text_durable(folder / TOKENIZER, json.dumps(vocab.tokenizer_json(), indent=1) + "\n")
    write_json(folder / TOKENIZER_CONFIG, tokenizer_config(vocab, model_config.n_positions))
    write_json(folder / CODEC, codec.to_json())


def is_model_folder(path: Path) -> bool:
    """A folder with config.json and model.safetensors (a checkpoint, a finished run)."""
    return (Path(path) / CONFIG).is_file() and (Path(path) / WEIGHTS).is_file()


def load_model_config(path: Path) -> Any:
    """The GPT2Config of a model folder (config.json) or an older run (model_config.json)."""
    from transformers import GPT2Config

    path = Path(path)
    for name in (CONFIG, "model_config.json"):
        if (path / name).is_file():
            d = read_json(path / name)
            if d.get("model_type", "gpt2") != "gpt2":
                raise ValueError(f"{path / name}: model_type {d['model_type']!r}, not gpt2")
            return GPT2Config.from_dict(d)
    raise FileNotFoundError(f"{path} has neither config.json nor model_config.json")
