"""Export: contract names and shapes, parity with PyTorch, int8/fp16 variants, random folders."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from bandmate.models.config import CodecConfig
from bandmate.models.model_folder import graph_io_names
from bandmate.models.vocab import Vocab
from bandmate.training.export import (
    ExportConfig,
    KVWrapper,
    ParityError,
    export_onnx,
    labels_seen_of,
    parity_check,
    random_model,
    write_model_folder,
)
from support.models import CHORALE_CODEC, export_random


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return export_random(tmp_path_factory.mktemp("m") / "rand", int8=True, n_layer=2)


def test_folder_files_and_metadata(folder):
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["bandmate.json", "model.int8.onnx", "model.onnx", "tokenizer.json"]
    meta = json.loads((folder / "bandmate.json").read_text())
    assert meta["format"] == "bandmate-model" and meta["version"] == 1
    assert meta["onnx"] == {
        "default": "model.int8.onnx",
        "fp32": "model.onnx",
        "int8": "model.int8.onnx",
    }
    codec = CodecConfig.from_json(meta["codec"])
    assert codec == CHORALE_CODEC
    vocab = Vocab.from_tokenizer_json(folder / "tokenizer.json")
    assert vocab == codec.vocab and meta["model"]["vocab_size"] == vocab.size
    assert meta["model"] == {
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 64,
        "n_positions": 512,
        "vocab_size": vocab.size,
    }
    assert meta["labels_seen"] == ["SOPRANO", "ALTO", "TENOR", "BASS"]
    assert meta["fills"] is False
    assert isinstance(meta["val_loss"], float) and isinstance(meta["unigram_val_loss"], float)
    assert meta["export"]["parity"]["max_abs_logit_diff"] <= 1e-4
    assert meta["export"]["int8"]["top1_match"] > 0.9
    assert meta["export"]["config"]["int8"] is True and meta["export"]["config"]["fp32"] is True


@pytest.mark.parametrize("fname", ["model.onnx", "model.int8.onnx"])
def test_onnx_io_matches_contract(folder, fname):
    sess = ort.InferenceSession(str(folder / fname), providers=["CPUExecutionProvider"])
    ins, outs = graph_io_names(2)
    assert [i.name for i in sess.get_inputs()] == ins
    assert [o.name for o in sess.get_outputs()] == outs
    types = {i.name: i.type for i in sess.get_inputs()}
    assert types["input_ids"] == types["attention_mask"] == "tensor(int64)"
    assert types["past_key_values.0.key"] == "tensor(float)"
    # A first call with past_seq = 0, then one cached step: shapes as in docs/contracts.md.
    vocab = CHORALE_CODEC.vocab.size
    ids = np.array([[2, 3, 10 + 60, 5]], np.int64)
    feed = {
        "input_ids": ids,
        "attention_mask": np.ones((1, 4), np.int64),
        "position_ids": np.arange(4, dtype=np.int64)[None],
    }
    feed |= {n: np.zeros((1, 2, 0, 32), np.float32) for n in ins[3:]}
    out = sess.run(None, feed)
    assert out[0].shape == (1, 4, vocab) and out[1].shape == (1, 2, 4, 32)
    feed2 = {
        "input_ids": np.array([[70]], np.int64),
        "attention_mask": np.ones((1, 5), np.int64),
        "position_ids": np.array([[4]], np.int64),
    }
    feed2 |= dict(zip(ins[3:], out[1:], strict=True))
    out2 = sess.run(None, feed2)
    assert out2[0].shape == (1, 1, vocab) and out2[1].shape == (1, 2, 5, 32)
    # Cached decoding equals one full pass over the same tokens.
    full = dict(
        feed,
        input_ids=np.array([[2, 3, 70, 5, 70]], np.int64),
        attention_mask=np.ones((1, 5), np.int64),
        position_ids=np.arange(5, dtype=np.int64)[None],
    )
    full["input_ids"][0, 2] = 10 + 60
    ref = sess.run(["logits"], full)[0]
    tol = 1e-4 if fname == "model.onnx" else 3e-2  # int8: activations quantised per call
    np.testing.assert_allclose(out2[0][0, -1], ref[0, -1], atol=tol)


def test_parity_several_shapes_with_and_without_past(tmp_path):
    model = random_model(CHORALE_CODEC.vocab.size, 3, 4, 64, 128, seed=3)
    path = export_onnx(model, tmp_path / "m.onnx")
    shapes = ((1, 1, 0), (2, 17, 0), (4, 3, 5), (1, 1, 40), (3, 8, 2))
    r = parity_check(model, path, shapes, tolerance=1e-4)
    assert r["max_abs_logit_diff"] <= 1e-4 and len(r["cases"]) == len(shapes)
    # Torch side: the wrapper with past equals a full forward (the cache semantics we export).
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        w = KVWrapper(model)
        empty = tuple(torch.zeros(2, 4, 0, 16) for _ in range(6))
        first = w(
            ids[:, :6], torch.ones(2, 6, dtype=torch.long), torch.arange(6).expand(2, 6), empty
        )
        second = w(
            ids[:, 6:],
            torch.ones(2, 9, dtype=torch.long),
            torch.arange(6, 9).expand(2, 3),
            tuple(first[1:]),
        )
    torch.testing.assert_close(second[0], full[:, 6:], atol=1e-5, rtol=1e-5)


def test_parity_catches_a_wrong_graph(tmp_path):
    model = random_model(CHORALE_CODEC.vocab.size, 1, 2, 32, 64, seed=1)
    path = export_onnx(model, tmp_path / "m.onnx")
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(3.0)
    with pytest.raises(ParityError, match="differs from PyTorch"):
        parity_check(model, path, ((1, 4, 0),))


def test_fp16_and_int8_only(tmp_path):
    model = random_model(CHORALE_CODEC.vocab.size, 1, 2, 32, 64, seed=2)
    meta = write_model_folder(
        model, CHORALE_CODEC, tmp_path / "m", ExportConfig(fp32=False, int8=True, fp16=True)
    )
    assert meta["onnx"]["fp32"] is None and meta["onnx"]["default"] == "model.int8.onnx"
    assert not (tmp_path / "m" / "model.onnx").exists()
    assert meta["export"]["fp16"]["top1_match"] > 0.9
    sess = ort.InferenceSession(
        str(tmp_path / "m" / "model.fp16.onnx"), providers=["CPUExecutionProvider"]
    )
    assert sess.get_inputs()[3].type == "tensor(float)"


def test_vocab_mismatch_is_refused(tmp_path):
    model = random_model(50, 1, 2, 32, 64)
    with pytest.raises(ValueError, match="vocab_size"):
        write_model_folder(model, CHORALE_CODEC, tmp_path / "m")


def test_export_config_validates():
    with pytest.raises(ValueError, match="fp32 or int8"):
        ExportConfig(fp32=False, int8=False)
    with pytest.raises(ValueError, match="opset"):
        ExportConfig(opset=13)
    c = ExportConfig(int8=True, name="x")
    assert ExportConfig.from_json(json.loads(json.dumps(c.to_json()))) == c


def test_labels_seen_come_from_the_prepare_manifest(tmp_path):
    summary = {"data_dir": str(tmp_path), "labels": ["SOPRANO", "BASS"]}  # train's recount
    (tmp_path / "manifest.json").write_text(json.dumps({"labels_seen": {"BASS": 9, "ALTO": 4}}))
    assert labels_seen_of(summary) == ["BASS", "ALTO"]
    (tmp_path / "manifest.json").write_text(json.dumps({"counts": {}}))  # older or synthetic
    assert labels_seen_of(summary) == ["SOPRANO", "BASS"]
    assert labels_seen_of({**summary, "data_dir": str(tmp_path / "gone")}) == ["SOPRANO", "BASS"]
    assert labels_seen_of({}) == []
