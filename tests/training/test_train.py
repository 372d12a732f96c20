"""Training: packing, schedule, config, a real tiny run, and resume after a real kill."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from bandmate.models.vocab import PAD, PIECE_START
from bandmate.training import data as D
from bandmate.training.flops import flops_per_token, peak_tflops
from bandmate.training.run_folder import latest_checkpoint
from bandmate.training.train import TrainConfig, lr_at, resolve_precision, train
from support.models import CHORALE_CODEC
from support.synthetic import write_synthetic_data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic_data(tmp_path_factory.mktemp("d") / "data", CHORALE_CODEC, 160, 32)


# ----------------------------------------------------------------- pure logic


def test_pack_never_splits_and_covers_every_sample():
    lengths = np.array([5, 9, 3, 10, 12, 1, 7])
    order = np.array([3, 0, 6, 1, 5, 2, 4])
    blocks = D.pack(lengths, order, block=10)
    assert np.concatenate(blocks).tolist() == order.tolist()  # order kept, nothing lost
    for b in blocks:
        assert sum(min(lengths[i], 10) for i in b) <= 10
    # Greedy: the next sample would not have fitted in the previous block.
    for prev, nxt in itertools.pairwise(blocks):
        assert sum(min(lengths[i], 10) for i in prev) + min(lengths[nxt[0]], 10) > 10


def _pack_loop(lengths, order, block):
    """The greedy loop `pack` replaced (one Python iteration per sample): the reference."""
    blocks, cur, used = [], [], 0
    for i in order.tolist():
        n = min(int(lengths[i]), block)
        if cur and used + n > block:
            blocks.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n
    if cur:
        blocks.append(cur)
    return blocks


def test_vectorised_pack_equals_the_greedy_loop_on_random_lengths():
    rng = np.random.default_rng(0)
    for t in range(200):
        n, block = int(rng.integers(0, 3000)), int(rng.integers(2, 64))
        lengths = rng.integers(0, 90, n)  # zero-length and longer-than-a-block samples too
        order = rng.permutation(n)
        got = D.pack(lengths, order, block)
        want = _pack_loop(lengths, order, block)
        assert [b.tolist() for b in got] == want
        assert got.tokens.tolist() == [sum(min(lengths[i], block) for i in b) for b in want]
        # Small segments, and lengths whose greedy chains never meet (exactly half a block:
        # the pointer-doubling fallback) or meet late.
        for lens in (lengths, np.full(n, block // 2), rng.integers(block // 2, block // 2 + 2, n)):
            csum = np.concatenate([[0], np.cumsum(np.minimum(lens[order], block))])
            bounds = D.pack_bounds(csum, block, segment=int(rng.integers(1, 40)), rounds=4)
            cuts = [order[a:b].tolist() for a, b in itertools.pairwise(bounds)]
            assert cuts == _pack_loop(lens, order, block), t


def test_eval_blocks_are_the_same_samples_for_any_number_of_ranks():
    for world in (1, 2, 3, 8):
        plans = [D.eval_blocks(50, 4, 3, world, r) for r in range(world)]
        seen = sorted(int(b) for plan in plans for mb in plan for b in mb)
        assert seen == list(range(12))  # 4 batches x 3 blocks, counted over the whole job
        assert all(len(mb) <= 3 for plan in plans for mb in plan)
    assert sorted(int(b) for mb in D.eval_blocks(5, 4, 3, 1, 0) for b in mb) == list(range(5))


def test_move_track_last_keeps_every_token_and_the_other_tracks_order():
    from bandmate.models.vocab import TRACK_END, TRACK_START

    def track(label: int, n: int) -> list[int]:
        return [TRACK_START, label, *([label + 100] * n), TRACK_END]

    toks = np.array([PIECE_START, *track(10, 2), *track(11, 3), *track(12, 1), *track(13, 4)])
    for k, want in ((0, [11, 12, 13, 10]), (1, [10, 12, 13, 11]), (2, [10, 11, 13, 12])):
        out = D.move_track_last(toks, k)
        assert sorted(out.tolist()) == sorted(toks.tolist()) and out[0] == PIECE_START
        labels = out[np.flatnonzero(out == TRACK_START) + 1].tolist()
        assert labels == want
        # Each track's body moves whole.
        body = out[np.flatnonzero(out == TRACK_START)[-1] :].tolist()
        assert body == track(want[-1], {10: 2, 11: 3, 12: 1, 13: 4}[want[-1]])
    np.testing.assert_array_equal(D.move_track_last(toks, 3), toks)  # already last
    np.testing.assert_array_equal(D.move_track_last(toks[:5], 0), toks[:5])  # one track


def test_reorder_is_deterministic_and_keeps_lengths(data_dir):
    split = D.open_data(data_dir, "train")
    plain = D.PackedEpochs(split, block=1024, micro=4, accum=1, seed=2)
    mixed = D.PackedEpochs(split, block=1024, micro=4, accum=1, seed=2, reorder=1.0)
    again = D.PackedEpochs(split, block=1024, micro=4, accum=1, seed=2, reorder=1.0)
    moved = 0
    for k in range(3):
        (a, sa), = plain.step_batches(0, k)
        (b, sb), = mixed.step_batches(0, k)
        (c, _), = again.step_batches(0, k)
        assert sa == sb  # packing does not depend on the reordering
        np.testing.assert_array_equal(b, c)
        np.testing.assert_array_equal(np.sort(a, axis=1), np.sort(b, axis=1))
        moved += int((a != b).any())
    assert moved  # p = 1 moves a track in every sample of more than one track
    assert D.reorder_choice(0, 0, 5, 0.0, 4) is None
    picks = {D.reorder_choice(0, e, 5, 1.0, 4) for e in range(40)}
    assert picks == {0, 1, 2}  # never the last track itself
    with pytest.raises(ValueError, match="reorder"):
        TrainConfig(reorder=1.5)


def test_blocks_start_with_piece_start_and_pad_is_never_a_label(data_dir):
    split = D.open_data(data_dir, "train")
    p = D.PackedEpochs(split, block=128, micro=4, accum=2, seed=1)
    (ids, samples), _ = p.step_batches(0, 0)
    assert ids.shape == (4, 128)
    assert (ids[:, 0] == PIECE_START).all()
    labels = D.labels_for(ids)
    assert (labels[ids == PAD] == D.IGNORE).all() and (labels[ids != PAD] == ids[ids != PAD]).all()
    # Real tokens are the samples back to back.
    want = np.concatenate([np.asarray(split[i]) for i in samples[0]])[:128]
    np.testing.assert_array_equal(ids[0, : len(want)], want)


def test_step_targets_counts_every_non_pad_label_of_all_ranks(data_dir):
    split = D.open_data(data_dir, "train")
    ranks = [D.PackedEpochs(split, 128, micro=2, accum=2, world=2, rank=r, seed=5) for r in (0, 1)]
    for step in range(3):
        want = sum(
            int((D.labels_for(ids)[:, 1:] != D.IGNORE).sum())
            for p in ranks
            for ids, _ in p.step_batches(1, step)
        )
        assert ranks[0].step_targets(1, step) == ranks[1].step_targets(1, step) == want


def test_data_order_is_deterministic_and_ranks_partition_a_step(data_dir):
    split = D.open_data(data_dir, "train")
    one = D.PackedEpochs(split, 128, micro=2, accum=1, world=2, rank=0, seed=3)
    two = D.PackedEpochs(split, 128, micro=2, accum=1, world=2, rank=1, seed=3)
    again = D.PackedEpochs(split, 128, micro=2, accum=1, world=2, rank=0, seed=3)
    a = one.step_batches(1, 2)[0][1]
    assert a == again.step_batches(1, 2)[0][1]
    b = two.step_batches(1, 2)[0][1]
    assert not set(map(tuple, a)) & set(map(tuple, b))
    assert one.step_batches(0, 2)[0][1] != a  # a new epoch reshuffles


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, 200, cfg) for s in range(200)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(x >= y for x, y in itertools.pairwise(lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-2)


def test_config_validation_and_json_roundtrip():
    cfg = TrainConfig(preset="seed")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_positions) == (6, 8, 512, 2048)
    assert TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    with pytest.raises(ValueError, match="tiny"):
        TrainConfig(preset="huge")
    with pytest.raises(ValueError, match="bf16"):
        TrainConfig(precision="int4")
    with pytest.raises(ValueError, match="multiple"):
        TrainConfig(n_embd=66, n_head=4)


def test_precision_by_device():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, cpu_bf16=False) == "fp32"
    assert resolve_precision("auto", cpu, cpu_bf16=True) == "bf16"  # AVX512-BF16 / AMX
    assert resolve_precision("fp32", cpu, cpu_bf16=True) == "fp32"
    gpu = torch.device("cuda", 0)  # a device object only: no GPU is touched
    assert resolve_precision("auto", gpu, capability=(9, 0)) == "bf16"  # H100
    assert resolve_precision("auto", gpu, capability=(8, 0)) == "bf16"  # A100
    assert resolve_precision("auto", gpu, capability=(7, 0)) == "fp16"  # V100 (DGX-2)
    with pytest.raises(ValueError, match="V100"):
        resolve_precision("bf16", gpu, capability=(7, 0))
    with pytest.raises(ValueError, match="GPU"):
        resolve_precision("fp16", torch.device("cpu"))


def test_megatron_flops_formula():
    # Seed model, s=2048: 72*l*h^2*(1 + s/6h + V/12lh) per token, and eq. 3 (x4/3 passes).
    f = flops_per_token(6, 512, 2048, 430)
    assert f == pytest.approx(72 * 6 * 512**2 * (1 + 2048 / 3072 + 430 / (12 * 6 * 512)))
    assert flops_per_token(6, 512, 2048, 430, recompute=True) / f == pytest.approx(4 / 3, 0.01)
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert peak_tflops("Tesla V100-SXM3-32GB", "fp16") == 125.0
    assert peak_tflops("Tesla V100-SXM3-32GB", "bf16") is None
    assert peak_tflops("cpu", "fp32") is None


# ----------------------------------------------------------------- integration


@pytest.mark.slow
def test_compiled_bf16_reordered_run_validates_and_resumes(data_dir, tmp_path):
    """The CPU recipe (torch.compile, bf16 autocast, track reordering) through validation,
    a stop and a resume: a compiled module must never be tested for truth (len())."""
    cfg = TrainConfig(
        preset="tiny", n_positions=128, batch_size=2, max_steps=2, warmup_steps=1,
        eval_every=1, eval_batches=1, log_every=1, save_every=1, compile=True,
        precision="bf16", reorder=0.5,
    )  # fmt: skip
    s = train(data_dir, tmp_path / "run", cfg, progress=False)
    assert s["finished"] and s["precision"] == "bf16" and math.isfinite(s["val_loss"])
    more = TrainConfig(**{**cfg.to_json(), "max_steps": 3})
    s = train(data_dir, tmp_path / "run", more, resume=True, progress=False)
    assert s["finished"] and s["steps"] == 3


def test_tiny_run_learns_and_checkpoints(data_dir, tmp_path):
    cfg = TrainConfig(
        preset="tiny",
        n_positions=128,
        batch_size=4,
        max_steps=40,
        lr=3e-3,
        warmup_steps=4,
        eval_every=20,
        log_every=10,
        save_every=20,
    )
    s = train(data_dir, tmp_path / "run", cfg, progress=False)
    assert s["finished"] and s["steps"] == 40
    assert s["val_loss"] < s["unigram_val_loss"]  # the grammar is learnable
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    tr = [x for x in lines if x["event"] == "train"]
    assert tr[-1]["loss"] < tr[0]["loss"] and all(math.isfinite(x["loss"]) for x in tr)
    assert tr[0]["tokens_per_s"] > 0 and tr[0]["model_tflops"] > 0
    assert 0 <= s["loop_overhead_fraction"] < 1
    ck = latest_checkpoint(tmp_path / "run")
    assert ck.name == "step-0000040"
    assert {p.name for p in ck.iterdir()} == {
        "model.safetensors",
        "optim.safetensors",
        "optim.json",
        "state.json",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "codec.json",
    }
    assert list((tmp_path / "run" / "tb").glob("events.*"))
    with pytest.raises(FileExistsError, match="--resume"):
        train(data_dir, tmp_path / "run", cfg, progress=False)


def _cli(data_dir, run, steps, *extra):
    return [
        sys.executable,
        "-m",
        "bandmate",
        "train",
        str(data_dir),
        "-o",
        str(run),
        "--preset",
        "tiny",
        "--n-positions",
        "64",
        "--batch-size",
        "2",
        "--lr",
        "3e-3",
        "--max-steps",
        str(steps),
        "--log-every",
        "1",
        "--save-every",
        "5",
        "--eval-every",
        "50",
        "--warmup-steps",
        "5",
        "--dropout",
        "0.1",
        "--no-progress",
        *extra,
    ]


def _log(run: Path) -> dict[int, dict]:
    recs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in recs if r["event"] == "train"}


def test_resume_after_kill_continues_steps_and_data_order(data_dir, tmp_path):
    steps = 150
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run(
        _cli(data_dir, ref, steps), check=True, env=env, timeout=300, capture_output=True
    )
    proc = subprocess.Popen(
        _cli(data_dir, run, steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        ck = latest_checkpoint(run)
        if ck is not None and int(ck.name.split("-")[1]) >= 10:
            proc.send_signal(signal.SIGKILL)  # no chance to save anything more
            killed_at = int(ck.name.split("-")[1])
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert killed_at is not None and killed_at < steps, "the run ended before it was killed"
    assert proc.returncode == -signal.SIGKILL
    subprocess.run(
        _cli(data_dir, run, steps, "--resume"),
        check=True,
        env=env,
        timeout=300,
        capture_output=True,
    )
    a, b = _log(ref), _log(run)
    assert sorted(b) == list(range(1, steps + 1))  # every step once, none repeated or lost
    for s in range(1, steps + 1):
        assert a[s]["batch"] == b[s]["batch"], f"data order differs at step {s}"
        assert math.isfinite(b[s]["loss"])
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], abs=1e-4), f"step {s}"
    final = json.loads((run / "summary.json").read_text())
    assert final["steps"] == steps and final["finished"]


def test_torchrun_two_processes_equal_one_process_with_accumulation(data_dir, tmp_path):
    """DDP (gloo, 2 CPU ranks) computes the same steps as 1 process accumulating 2 blocks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [
        "--preset",
        "tiny",
        "--n-positions",
        "64",
        "--batch-size",
        "2",
        "--max-steps",
        "8",
        "--log-every",
        "1",
        "--eval-every",
        "4",
        "--save-every",
        "4",
        "--precision",  # bf16 autocast (auto on CPUs with avx512_bf16) rounds per batch shape
        "fp32",
        "--no-progress",
    ]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(29500 + os.getpid() % 1000),
    ]
    subprocess.run(
        [*torchrun, "-m", "bandmate", "train", str(data_dir), "-o", str(tmp_path / "ddp"), *common],
        check=True,
        env=env,
        timeout=300,
        capture_output=True,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bandmate",
            "train",
            str(data_dir),
            "-o",
            str(tmp_path / "one"),
            "--grad-accum",
            "2",
            *common,
        ],
        check=True,
        env=env,
        timeout=300,
        capture_output=True,
    )
    a, b = _log(tmp_path / "one"), _log(tmp_path / "ddp")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for s in a:
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], abs=1e-5)
    sa = json.loads((tmp_path / "one" / "summary.json").read_text())
    sb = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert sb["world_size"] == 2 and sb["val_loss"] == pytest.approx(sa["val_loss"], abs=1e-5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_stops_with_75(data_dir, tmp_path, sig):
    """SLURM / torchrun stop a job with SIGTERM, a user with Ctrl-C (SIGINT): the run saves
    where it is and exits with 75, not 0, so that a stopped run never looks finished."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _cli(data_dir, run, 100000),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and latest_checkpoint(run) is None:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err  # EX_TEMPFAIL: stopped unfinished, resume it
    summary = json.loads((run / "summary.json").read_text())
    assert not summary["finished"] and summary["steps"] >= 5
    assert latest_checkpoint(run).name == f"step-{summary['steps']:07d}"
    assert "resume with --resume" in err


def test_resume_applies_the_given_flags_even_at_their_defaults_and_names_the_ignored(caplog):
    """On --resume a flag the user gave applies when it may (max steps, time limit, eval, log
    and save intervals), even when it equals the default; any other given flag that differs
    from the run's setting is named in a warning instead of being dropped silently."""
    import argparse
    import logging

    from bandmate.training import train as T
    from bandmate.training import train_cli

    parser = argparse.ArgumentParser()
    train_cli.configure(parser)
    args = parser.parse_args(["data", "-o", "run", "--resume", "--eval-every", "200",
                              "--lr", "0.5", "--compile", "--seed", "0"])  # fmt: skip
    assert args.given == {"eval_every", "lr", "compile", "seed"}
    assert not hasattr(parser.parse_args(["data", "-o", "run"]), "given")
    cfg = T.TrainConfig(**{f: getattr(args, f) for f in T.TrainConfig.__dataclass_fields__})
    saved = T.TrainConfig(preset="tiny", eval_every=250, lr=1e-3, compile=True, seed=0)
    with caplog.at_level(logging.WARNING):
        got = T._resumed_config(saved, cfg, args.given)
    assert got.eval_every == 200  # the default value, given: it applies
    assert got.lr == 1e-3 and got.compile and got.preset == "tiny"  # the run's own
    assert "ignored --lr 0.5" in caplog.text and "compile" not in caplog.text
    # Called without the CLI (given=None): resumable settings that differ from the defaults.
    assert T._resumed_config(saved, T.TrainConfig(max_steps=9), None).max_steps == 9
    assert T._resumed_config(saved, T.TrainConfig(), None).eval_every == 250
