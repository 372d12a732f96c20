"""The shard writer and memmap reader (docs/contracts.md, "Prepared data")."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from bandmate.training.shards import ShardWriter, index_path, open_split, shard_path


def _samples(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    return [rng.integers(0, 400, rng.integers(1, 30)).astype(np.uint16) for _ in range(n)]


@pytest.mark.parametrize("shard_tokens", [1, 7, 50, 1 << 20])
def test_round_trip_in_blocks(tmp_path, shard_tokens):
    rng = np.random.default_rng(0)
    samples = _samples(rng, 60)
    w = ShardWriter(tmp_path, "train", shard_tokens)
    for a, b in ((0, 10), (10, 11), (11, 60)):
        block = samples[a:b]
        w.add(np.concatenate(block), np.array([len(s) for s in block]))
    idx = w.close()
    split = open_split(tmp_path, "train")
    assert len(split) == 60 == len(idx)
    assert split.tokens_total == sum(len(s) for s in samples)
    for i, s in enumerate(samples):
        assert split[i].dtype == np.uint16
        np.testing.assert_array_equal(split[i], s)
    np.testing.assert_array_equal(split[-1], samples[-1])
    # A sample never straddles shards; shards hold at most shard_tokens unless one sample is
    # longer than that.
    for k in range(int(idx[:, 0].max()) + 1):
        rows = idx[idx[:, 0] == k]
        size = shard_path(tmp_path, "train", k).stat().st_size // 2
        assert size == int(rows[:, 2].sum())
        assert size <= shard_tokens or len(rows) == 1
    assert not list(tmp_path.glob("*.tmp*"))


def test_empty_split_and_errors(tmp_path):
    w = ShardWriter(tmp_path, "val")
    w.add(np.zeros(0, np.uint16), np.zeros(0, np.int64))
    w.close()
    split = open_split(tmp_path, "val")
    assert len(split) == 0 and split.tokens_total == 0
    with pytest.raises(IndexError):
        split[0]
    with pytest.raises(ValueError, match="split"):
        open_split(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="bandmate prepare"):
        open_split(tmp_path, "train")
    with pytest.raises(ValueError, match="add up"):
        ShardWriter(tmp_path, "train").add(np.zeros(3, np.uint16), np.array([2]))
    with pytest.raises(ValueError, match="uint16"):
        ShardWriter(tmp_path, "train").add(np.array([70000]), np.array([1]))


def test_reader_reports_missing_shard(tmp_path):
    w = ShardWriter(tmp_path, "train", 4)
    w.add(np.arange(8, dtype=np.uint16), np.array([4, 4]))
    w.close()
    assert index_path(tmp_path, "train").exists()
    shard_path(tmp_path, "train", 1).unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        open_split(tmp_path, "train")


def test_training_reader_uses_it(tmp_path):
    from bandmate.training.data import open_data, sample_lengths

    w = ShardWriter(tmp_path, "train")
    w.add(np.arange(10, dtype=np.uint16), np.array([3, 7]))
    w.close()
    split = open_data(tmp_path, "train")
    np.testing.assert_array_equal(sample_lengths(split), [3, 7])


@pytest.mark.parametrize("shard_tokens", [1, 5, 13, 40, 1 << 20])
def test_plan_shards_matches_the_writer(tmp_path, shard_tokens):
    from bandmate.training.shards import plan_shards

    rng = np.random.default_rng(shard_tokens)
    lens = rng.integers(1, 20, 200)
    w = ShardWriter(tmp_path, "train", shard_tokens)
    for a in range(0, 200, 37):
        part = lens[a : a + 37]
        w.add(np.zeros(int(part.sum()), np.uint16), part)
    np.testing.assert_array_equal(plan_shards(lens, shard_tokens), w.close())
    assert plan_shards(np.zeros(0, np.int64), 4).shape == (0, 3)


@pytest.mark.parametrize("shard_tokens", [1, 5, 13, 40, 1 << 20])
def test_planner_fed_in_pieces_plans_as_one_call(shard_tokens):
    """The preprocessor plans unit by unit: any cut of the lengths gives the same index."""
    from bandmate.training.shards import ShardPlanner, plan_shards

    rng = np.random.default_rng(shard_tokens + 1)
    lens = rng.integers(1, 30, 300)
    whole = plan_shards(lens, shard_tokens)
    cuts = sorted(set(rng.integers(0, 300, 12).tolist()) | {0, 300})
    planner = ShardPlanner(shard_tokens)
    parts = [planner.add(lens[a:b]) for a, b in itertools.pairwise(cuts)]
    parts.append(planner.add(lens[:0]))
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert planner.shards == int(whole[:, 0].max()) + 1
