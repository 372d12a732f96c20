"""Megatron indexed dataset: read back by megatron-core's IndexedDataset, byte-identical to
its own builder."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from bandmate.training.data import open_data
from bandmate.training.megatron import main, read_indexed, write_indexed
from support.models import CHORALE_CODEC
from support.synthetic import write_synthetic_data

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "Transformer Engine and Apex are not installed"
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder


def test_megatron_core_reads_what_we_write(tmp_path):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 430, rng.integers(1, 300)).astype(np.uint16) for _ in range(57)]
    write_indexed(seqs, tmp_path / "ours")
    ds = IndexedDataset(str(tmp_path / "ours"))
    assert len(ds) == len(seqs)
    for a, b in zip(seqs, (ds[i] for i in range(len(ds))), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ds.document_indices, np.arange(len(seqs) + 1))
    # Byte-identical to megatron-core's own builder.
    builder = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.uint16)
    for s in seqs:
        builder.add_item(torch.from_numpy(s.astype(np.int64)))
        builder.end_document()
    builder.finalize(str(tmp_path / "theirs.idx"))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"theirs{ext}").read_bytes()
    assert all(
        np.array_equal(a, b) for a, b in zip(read_indexed(tmp_path / "ours"), seqs, strict=True)
    )


def test_cli_converts_prepared_data(tmp_path):
    data = write_synthetic_data(tmp_path / "data", CHORALE_CODEC, 30, 7)
    assert main([str(data), "-o", str(tmp_path / "mg")]) == 0
    meta = json.loads((tmp_path / "mg" / "megatron.json").read_text())
    assert meta["vocab_size"] == CHORALE_CODEC.vocab.size
    for split, n in (("train", 30), ("val", 7)):
        ds = IndexedDataset(str(tmp_path / "mg" / f"{split}_text_document"))
        src = open_data(data, split)
        assert len(ds) == n
        for i in range(n):
            np.testing.assert_array_equal(ds[i], src[i])


def test_cli_without_prepared_data(tmp_path):
    assert main([str(tmp_path), "-o", str(tmp_path / "mg")]) == 2


def test_out_of_range_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="wider dtype"):
        write_indexed([np.array([70000])], tmp_path / "x")
