"""The model-folder contract (bandmate.models.model_folder): bandmate.json read, validated and
written back unchanged; tensor names; the GPT-2 config's special ids."""

from __future__ import annotations

import json

import pytest
from bandmate.models.model_folder import (
    FORMAT,
    VERSION,
    ModelDescription,
    ModelDims,
    ModelFolderError,
    decode_io_names,
    graph_io_names,
)
from bandmate.models.session import ModelError, ModelSession, default_model_dir
from bandmate.models.vocab import PAD, PIECE_START


def shipped_json() -> dict:
    return json.loads((default_model_dir() / "bandmate.json").read_text())


def test_shipped_folder_reads_as_version_1_and_writes_back():
    raw = shipped_json()
    desc = ModelDescription.read(default_model_dir())
    assert (FORMAT, VERSION, desc.version) == ("bandmate-model", 1, 1)
    assert desc.model == ModelDims(6, 4, 256, 576, 419) and desc.model.head_dim == 64
    assert desc.labels_seen == ("SOPRANO", "ALTO", "TENOR", "BASS")
    assert desc.graph("default") == "model.int8.onnx" and desc.graph("kv_int8")
    back = desc.to_json()
    assert list(back) == list(raw)  # same keys, same order, the export report kept
    assert {k: v for k, v in back.items() if k != "codec"} == {
        k: v for k, v in raw.items() if k != "codec"
    }
    assert ModelDescription.from_json(back) == desc


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda d: d.pop("codec"), "codec"),
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d["model"].update(n_head="4"), "model.n_head"),
        (lambda d: d["model"].pop("n_layer"), "model.n_layer"),
        (lambda d: d["model"].update(vocab_size=420), "model.vocab_size"),
        (lambda d: d.update(labels_seen=["SOPRANO", "KAZOO"]), "labels_seen"),
        (lambda d: d["onnx"].update(fp32=3), "onnx.fp32"),
        (lambda d: d.update(fills="yes"), "fills"),
        (lambda d: d.update(sampling=[0.4]), "sampling"),
        (lambda d: d.update(sampling={"temperature": 0.0}), "sampling.temperature"),
        (lambda d: d.update(sampling={"top_p": 1.5}), "sampling.top_p"),
    ],
)
def test_bad_keys_are_named(edit, key):
    d = shipped_json()
    edit(d)
    with pytest.raises(ModelFolderError, match=f"'{key}'"):
        ModelDescription.from_json(d)


def test_session_says_which_key_is_bad(tmp_path):
    d = shipped_json()
    d["model"]["n_embd"] = "wide"
    (tmp_path / "bandmate.json").write_text(json.dumps(d))
    with pytest.raises(ModelError, match=r"'model.n_embd'.*bandmate export"):
        ModelSession.load(tmp_path)


def test_io_names():
    ins, outs = graph_io_names(2)
    assert ins[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert ins[3:] == ["past_key_values.0.key", "past_key_values.0.value",
                       "past_key_values.1.key", "past_key_values.1.value"]
    assert outs == ["logits", "present.0.key", "present.0.value", "present.1.key",
                    "present.1.value"]
    ins, outs = decode_io_names(1)
    assert ins == ["input_ids", "position_ids", "seqlens_k", "total_sequence_length",
                   "past_key.0", "past_value.0"]
    assert outs == ["logits", "present_key.0", "present_value.0"]


def test_gpt2_config_takes_special_ids_from_the_vocabulary():
    pytest.importorskip("transformers")
    from bandmate.models.model_folder import gpt2_config

    cfg = gpt2_config(ModelDims(2, 2, 32, 64, 300), dropout=0.1)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        PIECE_START, PIECE_START, PAD)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_positions, cfg.vocab_size) == (
        2, 2, 32, 64, 300)
    assert cfg.resid_pdrop == cfg.attn_pdrop == cfg.embd_pdrop == 0.1
    assert ModelDims.of(cfg) == ModelDims(2, 2, 32, 64, 300)
