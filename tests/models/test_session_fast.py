"""The in-place decode graph path (InPlaceKVCache) on a real tiny export and real ONNX Runtime:
same logits as the contract graph, uneven rows, buffer reuse, same notes, no repairs."""

from __future__ import annotations

import gc
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from bandmate.models import generate as G
from bandmate.models.codec import decode
from bandmate.models.midi_io import read_midi
from bandmate.models.sampler import SamplingConfig
from bandmate.models.session import ContextFull, InPlaceKVCache, KVCache, ModelError, ModelSession

CHORALE = Path(__file__).parents[1] / "data" / "jsfakes-0.mid"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from support.models import export_random

    return export_random(tmp_path_factory.mktemp("model") / "tiny", seed=0, kv=True)


@pytest.fixture(scope="module")
def fast(model_dir):
    return ModelSession.load(model_dir)


@pytest.fixture(scope="module")
def slow(model_dir):
    return ModelSession.load(model_dir, fast=False)


@pytest.fixture(scope="module")
def prompt(fast):
    return read_midi(CHORALE, fast.config).slice_bars(0, 4)


def test_load_prefers_the_decode_graph(fast, slow, model_dir):
    assert fast.fast and fast.onnx_file == "model.kv.onnx" and fast.provider == "CPU"
    assert isinstance(fast.new_cache(1), InPlaceKVCache)
    assert not slow.fast and slow.onnx_file == "model.onnx"
    assert isinstance(slow.new_cache(1), KVCache)
    meta = json.loads((model_dir / "bandmate.json").read_text())
    assert meta["onnx"]["kv_fp32"] == "model.kv.onnx" and meta["onnx"]["kv_int8"] is None
    with pytest.raises(ModelError, match="no int8 graph"):
        ModelSession.load(model_dir, precision="int8")


def test_folder_without_decode_graph_falls_back(model_dir, tmp_path):
    dst = tmp_path / "old"
    shutil.copytree(model_dir, dst)
    (dst / "model.kv.onnx").unlink()
    s = ModelSession.load(dst)
    assert not s.fast and s.onnx_file == "model.onnx"
    with pytest.raises(ModelError, match="re-export"):
        ModelSession.load(dst, fast=True)


def _plans(rng, lengths, pattern):
    """Per row, its tokens cut into chunks of the given sizes (0 = feeds nothing)."""
    rows = []
    for n, sizes in zip(lengths, pattern, strict=True):
        toks = rng.integers(10, 280, n).tolist()
        chunks, i = [], 0
        for k in sizes:
            chunks.append(toks[i : i + k])
            i += k
        assert i == n
        rows.append(chunks)
    return rows


@pytest.mark.parametrize(
    "lengths,pattern",
    [
        ((40,), [(30, 1, 4, 1, 4)]),
        ((400,), [(350, 1, 40, 1, 8)]),  # a prefill over PREFILL_CHUNK: run in chunks
        ((40, 25), [(30, 1, 4, 1, 4), (10, 12, 0, 1, 2)]),
        ((9, 9, 9), [(3, 1, 1, 2, 2), (3, 3, 1, 1, 1), (3, 0, 3, 1, 2)]),
    ],
)
def test_fast_cache_matches_the_contract_graph(fast, slow, lengths, pattern):
    rng = np.random.default_rng(len(lengths))
    rows = _plans(rng, lengths, pattern)
    b = len(rows)
    cf, cs = fast.new_cache(b), slow.new_cache(b)
    for step in range(len(pattern[0])):
        chunks = [r[step] for r in rows]
        got, ref = cf.feed(chunks), cs.feed(chunks)
        for r, c in enumerate(chunks):
            if c:  # rows that fed nothing return junk in both
                np.testing.assert_allclose(got[r], ref[r], atol=1e-4)
    assert cf.pos.tolist() == list(lengths) and cf.tokens_fed == sum(lengths)


def test_context_full_and_positions_left(fast):
    cache = fast.new_cache(2)
    cache.feed([[20] * (fast.n_positions - 1), [21]])
    assert cache.positions_left(0) == 1 and cache.positions_left(1) == fast.n_positions - 1
    cache.feed([[], [22]])  # the full row feeds nothing: its padding slot still fits
    with pytest.raises(ContextFull):
        cache.feed([[20, 21], [23]])


def test_buffers_are_reused_and_never_shared_by_live_caches(fast, slow):
    a = fast.new_cache(1)
    b = fast.new_cache(1)
    assert a.kv is not b.kv  # two live caches: separate buffers
    rng = np.random.default_rng(3)
    x, y = rng.integers(10, 280, 12).tolist(), rng.integers(10, 280, 7).tolist()
    a.feed([x[:6]])
    b.feed([y])
    out = a.feed([x[6:]])
    np.testing.assert_allclose(out[0], slow.new_cache(1).feed([x])[0], atol=1e-4)
    kv = a.kv
    del a
    gc.collect()
    assert fast.new_cache(1).kv is kv  # a dead cache's buffers are handed out again
    del b
    gc.collect()
    c3 = fast.new_cache(3)
    # unused buffers of other batch sizes are dropped
    assert set(fast._pool) == {3} and c3.kv in fast._pool[3]


def test_same_notes_as_the_contract_graph(fast, slow, prompt):
    s = SamplingConfig(seed=7)
    assert G.continue_piece(fast, prompt, 2, sampling=s) == G.continue_piece(
        slow, prompt, 2, sampling=s
    )
    assert G.add_track(fast, prompt.slice_bars(0, 2), "bass", sampling=s) == G.add_track(
        slow, prompt.slice_bars(0, 2), "bass", sampling=s
    )


def test_batched_generations_decode_without_repairs(fast, prompt):
    short = prompt.slice_bars(2, 2)
    n = 0
    for k in range(2):
        s = SamplingConfig(seed=k, max_bar_tokens=16, top_p=1.0)
        for task, kw in (("continue", {"bars": 1}), ("add", {"instrument": "bass"})):
            for d in G.generate_batch(fast, task, short, 40, s, **kw):
                for w in d.stats["tokens"]:
                    assert decode(w, fast.config).repairs == []
                n += 1
    assert n == 160


def test_cancel_stops_within_one_step(fast, prompt):
    cancel = threading.Event()
    stream = G.stream_continue(fast, prompt, 4, sampling=SamplingConfig(seed=5), cancel=cancel)
    at = None
    for ev in stream:
        assert not isinstance(ev, G.Done)
        if isinstance(ev, G.NoteEvent) and at is None:
            cancel.set()
            at = fast.calls
    assert at is not None and fast.calls - at <= 1
