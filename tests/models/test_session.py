"""ModelSession on a real (tiny, random-weight) ONNX export and real ONNX Runtime."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from bandmate.models import session as session_mod
from bandmate.models.session import ModelError, ModelSession


def test_load_reads_the_folder(sess):
    assert sess.provider == "CPU"  # onnxruntime-gpu without CUDA falls back quietly
    assert sess.vocab.size == sess.meta["model"]["vocab_size"]
    assert sess.bars == 4 and sess.n_layer == 2
    assert sess.bass_label == "BASS"
    assert sess.labels_seen == ("SOPRANO", "ALTO", "TENOR", "BASS")
    assert not sess.fills


def test_missing_shipped_model_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(session_mod, "default_model_dir", lambda: tmp_path)
    with pytest.raises(ModelError, match=r"shipped model is missing.*--model"):
        ModelSession.load(None)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelError, match="bandmate export"):
        ModelSession.load(tmp_path)


def test_precision_without_that_graph(model_dir):
    with pytest.raises(ModelError, match="no int8 graph"):
        ModelSession.load(model_dir, precision="int8")


def test_gm_model_bass_label(model_dir, tmp_path):
    dst = tmp_path / "gm"
    shutil.copytree(model_dir, dst)
    meta = json.loads((dst / "bandmate.json").read_text())
    meta["labels_seen"] = ["0", "DRUMS", "32", "33"]
    (dst / "bandmate.json").write_text(json.dumps(meta))
    assert ModelSession.load(dst).bass_label == "33"


def _full(sess, ids):
    c = sess.new_cache(1)
    return c.feed([list(ids)])[0]


def test_kv_cache_matches_one_shot_and_padded_rows_match_single_rows(sess):
    rng = np.random.default_rng(0)
    a = rng.integers(10, 280, 40).tolist()
    b = rng.integers(10, 280, 25).tolist()
    # Row 0 and row 1 feed different chunk lengths per call (padding inside the batch).
    plan_a = [a[:30], a[30:31], a[31:35], a[35:36], a[36:40]]
    plan_b = [b[:10], b[10:22], [], b[22:23], b[23:25]]
    cache = sess.new_cache(2)
    for ca, cb in zip(plan_a, plan_b, strict=True):
        out = cache.feed([ca, cb])
    np.testing.assert_allclose(out[0], _full(sess, a), atol=1e-4)
    np.testing.assert_allclose(out[1], _full(sess, b), atol=1e-4)
    assert cache.pos.tolist() == [40, 25]


def test_context_full_is_an_error(sess):
    from bandmate.models.session import ContextFull

    cache = sess.new_cache(1)
    cache.feed([[20] * (sess.n_positions - 1)])
    with pytest.raises(ContextFull):
        cache.feed([[20, 21]])


class _FakeCudaSession:
    """An ORT session that says it runs on CUDA (this machine has none): records the graph."""

    opened: ClassVar[list[tuple[str, tuple[str, ...]]]] = []

    real: ClassVar[type] = object

    def __init__(self, path, options=None, providers=()):
        _FakeCudaSession.opened.append((Path(path).name, tuple(providers)))
        self._real = self.real(path, options, providers=["CPUExecutionProvider"])
        self._providers = list(providers)

    def get_providers(self):
        return self._providers

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def fake_cuda(monkeypatch):
    import onnxruntime as ort

    _FakeCudaSession.opened = []
    _FakeCudaSession.real = ort.InferenceSession
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(ort, "InferenceSession", _FakeCudaSession)
    return _FakeCudaSession.opened


def test_int8_only_folder_runs_the_cpu_decode_graph_even_with_cuda(fake_cuda, caplog):
    with caplog.at_level(logging.INFO, logger="bandmate.models.session"):
        s = ModelSession.load()  # the shipped model: int8 graphs only
    assert (s.provider, s.onnx_file, s.fast) == ("CPU", "model.kv.int8.onnx", True)
    assert fake_cuda == [("model.kv.int8.onnx", ("CPUExecutionProvider",))]
    assert "on CPU" in caplog.text and "int8 is a CPU format" in caplog.text
    with pytest.raises(ModelError, match="--fp16"):
        ModelSession.load(device="cuda")


def test_a_gpu_graph_runs_on_cuda_when_it_is_there(fake_cuda, model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="bandmate.models.session"):
        s = ModelSession.load(model_dir)  # fp32 graph
    assert (s.provider, s.onnx_file) == ("CUDA", "model.onnx")
    assert fake_cuda[0] == ("model.onnx", ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert "on CUDA (model.onnx)" in caplog.text
    # An int8 graph is never the CUDA graph; fp16 is preferred over fp32 when both exist.
    files = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert session_mod._gpu_graph(model_dir, files, "int8") is None
    assert session_mod._gpu_graph(model_dir, files, "default") == "model.onnx"
    assert ModelSession.load(model_dir, device="cpu").provider == "CPU"
