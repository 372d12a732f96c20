"""`bandmate prepare`: encoding against the codec, the CLI, manifest, formats, determinism.

The corpora are built in tmp folders from the two chorale fixtures, MIDI files written by the
codec's own writer, and deliberately broken files, so the tests need nothing outside the
checkout. The resume-after-kill test is in test_prepare_resume.py.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
from bandmate.models.codec import Codec, decode, encode_piece
from bandmate.models.config import CodecConfig
from bandmate.models.midi_io import read_midi_segments, write_midi
from bandmate.models.types import DRUM_CHANNEL, Note, Piece, Track
from bandmate.models.vocab import DENSITY0, PIECE_START, Vocab
from bandmate.training.prepare import (
    PrepareConfig,
    density_edges_from_hist,
    encode_file,
    list_sources,
    select_shard,
)
from bandmate.training.shards import open_split
from support import faults

from bandmate.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"
CHORALES = [DATA / "jsfakes-0.mid", DATA / "jsfakes-1.mid"]
VOICES = "SOPRANO,ALTO,TENOR,BASS"


def random_piece(seed: int, bars: int = 9, drums: bool = True, low: int = 30) -> Piece:
    """A few tracks of random notes (one drum track), some near the pitch limits."""
    rng = random.Random(seed)
    tracks = []
    for t, (lo, hi) in enumerate([(low, low + 20), (60, 84), (100, 127)]):
        notes = set()
        for _ in range(rng.randrange(4, 30)):
            s = rng.randrange(bars * 16)
            notes.add(Note(s, rng.randrange(lo, hi + 1), min(s + rng.randrange(1, 20), bars * 16)))
        # One note per (pitch) at a time, as the codec stores them.
        clean, last_end = [], {}
        for n in sorted(notes):
            if n.start >= last_end.get(n.pitch, -1):
                clean.append(n)
                last_end[n.pitch] = n.end
        tracks.append(Track(str(t * 10), tuple(clean), program=t * 10, channel=t))
    if drums:
        kit = tuple(Note(s, 36 + (s % 3), s + 1) for s in range(0, bars * 16, 4))
        tracks.append(Track("DRUMS", kit, channel=DRUM_CHANNEL))
    return Piece(tuple(tracks), bars, 100.0)


def make_corpus(root: Path, n_random: int = 6) -> dict[str, list[str]]:
    """Good, duplicate and broken files; returns the names expected in each outcome."""
    (root / "a_chorales").mkdir(parents=True)
    (root / "b_random" / "deeper").mkdir(parents=True)
    (root / "c_bad").mkdir()
    for p in CHORALES:
        (root / "a_chorales" / p.name).write_bytes(p.read_bytes())
    for i in range(n_random):
        sub = "deeper/" if i % 2 else ""
        write_midi(random_piece(i), root / "b_random" / f"{sub}r{i}.MID")
    (root / "b_random" / "same_as_chorale.midi").write_bytes(CHORALES[0].read_bytes())
    bad = {
        "empty.mid": b"",
        "random.mid": bytes(random.Random(5).randrange(256) for _ in range(300)),
        "text.kar": b"hello world, not midi at all",
        "smpte.mid": b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\xe7\x28"
        + b"MTrk\x00\x00\x00\x04\x00\xff\x2f\x00",
        "no_tracks.mid": b"MThd\x00\x00\x00\x06\x00\x01\x00\x00\x01\xe0",
        "truncated.mid": CHORALES[1].read_bytes()[:30],
    }
    for name, data in bad.items():
        (root / "c_bad" / name).write_bytes(data)
    short = Piece((Track("0", (Note(0, 60, 4),)),), 1)
    write_midi(short, root / "c_bad" / "one_bar.mid")
    (root / "c_bad" / "notes.txt").write_text("not a MIDI suffix: ignored")
    return {
        "bad": [*bad, "one_bar.mid"],
        "dup": ["same_as_chorale.midi"],
        "total": [str(2 + n_random + 1 + len(bad) + 1)],
    }


def run_cli(*argv: str) -> int:
    return main(["prepare", *map(str, argv), "--progress", "off"])


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("corpus")
    return root, make_corpus(root)


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> Path:
    src, _ = corpus
    out = tmp_path_factory.mktemp("prep") / "out"
    rc = run_cli(src, "-o", out, "--workers", 2, "--chunk-files", 3, "--val-fraction", 0.3)
    assert rc == 0
    return out


# --------------------------------------------------------------------------- pure encoding


def _samples(enc) -> list[np.ndarray]:
    offs = np.concatenate([[0], np.cumsum(enc.lengths)])
    return [enc.tokens[offs[i] : offs[i + 1]].astype(np.int32) for i in range(len(enc.lengths))]


def _transposed(piece: Piece, k: int) -> Piece:
    return Piece(
        tuple(
            t
            if t.is_drum
            else t.with_notes(tuple(Note(n.start, n.pitch + k, n.end) for n in t.notes))
            for t in piece.tracks
        ),
        piece.bars,
        piece.tempo,
    )


@pytest.mark.parametrize(("bars", "hop"), [(4, 0), (4, 1), (8, 3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_samples_equal_codec_windows_with_transpositions(tmp_path, bars, hop, seed):
    path = tmp_path / "p.mid"
    write_midi(random_piece(seed, bars=17, low=2 + seed), path)
    cfg = PrepareConfig(sources=(str(tmp_path),), bars=bars, hop=hop, transpose=(-4, 3))
    codec = cfg.codec()
    enc = encode_file(path, cfg)
    (piece,) = read_midi_segments(path, codec)
    got = _samples(enc)
    shifts = [0, -4, -3, -2, -1, 1, 2, 3]
    expected = {k: [] for k in shifts}
    for start in range(0, piece.bars - bars + 1, hop or max(1, bars // 4)):
        win = piece.slice_bars(start, bars)
        for k in shifts:
            pitched = [n.pitch for t in win.tracks if not t.is_drum for n in t.notes]
            if k and (not pitched or min(pitched) + k < 0 or max(pitched) + k > 127):
                continue  # a shift leaving 0..127 is skipped; drum-only windows never shift
            e = encode_piece(_transposed(win, k), codec, 0, bars, [0] * len(win.tracks))
            if len(e) > 1:
                expected[k].append(e)
    want = [s for k in shifts for s in expected[k]]
    assert enc.n_orig == len(expected[0])
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        # DENSITY slots hold a placeholder until the merge; compare everything else.
        np.testing.assert_array_equal(
            np.where(g == DENSITY0, -1, g), np.where(w == DENSITY0, -1, w)
        )
    # The low track of seed 0 reaches pitch 2: some downward shifts must have been skipped.
    assert len(want) < len(shifts) * enc.n_orig


@pytest.mark.parametrize("labels", ["program", "gm-family"])
def test_prepared_samples_are_codec_samples(tmp_path, labels):
    """What `bandmate prepare` writes is `Codec.sample` of each window, DENSITY included."""
    src = tmp_path / "src"
    src.mkdir()
    write_midi(random_piece(4), src / "p.mid")
    out = tmp_path / "out"
    args = ["--transpose", "0:0", "--density-bins", 3, "--labels", labels, "--workers", 1]
    assert run_cli(src, "-o", out, *args) == 0
    m = json.loads((out / "manifest.json").read_text())
    codec = Codec.of(CodecConfig.from_json(m["codec"]))
    assert codec.config.density_edges and codec.config.label_scheme == labels
    (piece,) = read_midi_segments(src / "p.mid", codec.config)
    want = [codec.sample(piece, b, 4) for b in range(piece.bars - 3)]
    got = [np.asarray(s[i]) for split in ("train", "val") for s in [open_split(out, split)]
           for i in range(len(s))]
    assert len(got) == len(want) > 3
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_density_slots_carry_note_counts(tmp_path):
    path = tmp_path / "p.mid"
    write_midi(random_piece(3), path)
    cfg = PrepareConfig(sources=(str(tmp_path),), transpose=(0, 0), density_bins=3)
    enc = encode_file(path, cfg)
    assert (enc.tokens[enc.slot_pos] == DENSITY0).all()
    for pos, count in zip(enc.slot_pos, enc.slot_count, strict=True):
        # The bars after the slot hold `count` NOTE_ONs up to TRACK_END.
        rest = enc.tokens[pos + 1 :].astype(np.int64)
        end = int(np.argmax(rest == 4))
        assert int(((rest[:end] >= 10) & (rest[:end] < 138)).sum()) == count


def test_density_edges_are_inverted_cdf_quantiles():
    rng = np.random.default_rng(0)
    for bins in (2, 4, 7):
        counts = rng.integers(1, 60, 500)
        edges = density_edges_from_hist(np.bincount(counts), bins)
        q = np.quantile(counts, [(d + 1) / bins for d in range(bins - 1)], method="inverted_cdf")
        assert edges == tuple(float(x) for x in q)
    assert density_edges_from_hist(np.zeros(3, np.int64), 3) == (1.0, 2.0)


def test_listing_and_shards(corpus):
    src, _ = corpus
    files = list_sources([str(src)])
    names = [Path(f.path).name for f in files]
    assert "notes.txt" not in names and "r1.MID" in names and "text.kar" in names
    rel = [f.key for f in files]
    assert rel == sorted(rel)
    parts = [select_shard(files, (i, 3)) for i in range(3)]
    keys = [f.key for p in parts for f in p]
    assert sorted(keys) == sorted(rel) and len(set(keys)) == len(keys)


def test_config_validation():
    with pytest.raises(ValueError, match="bars"):
        PrepareConfig(sources=("x",), bars=5)
    with pytest.raises(ValueError, match="transpose"):
        PrepareConfig(sources=("x",), transpose=(1, 3))
    with pytest.raises(ValueError, match="shard"):
        PrepareConfig(sources=("x",), shard=(2, 2))
    with pytest.raises(ValueError, match="format"):
        PrepareConfig(sources=("x",), format="csv")
    with pytest.raises(ValueError, match="density_edges"):
        PrepareConfig(sources=("x",), density_bins=3, density_edges=(1.0,))
    cfg = PrepareConfig(sources=("a", "b"), voices=("soprano",), transpose=(-2, 2))
    assert PrepareConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg


# --------------------------------------------------------------------------- the CLI


def test_manifest_contents(prepared, corpus):
    _, expect = corpus
    m = json.loads((prepared / "manifest.json").read_text())
    assert m["files_total"] == int(expect["total"][0])
    assert m["duplicates"] == 1
    assert m["duplicate_files"][0]["path"].endswith("same_as_chorale.midi")
    assert m["duplicate_files"][0]["same_as"].endswith("jsfakes-0.mid")
    skipped = {Path(s["path"]).name: s["reason"] for s in m["skipped"]}
    assert sorted(skipped) == sorted(expect["bad"])
    assert m["files_skipped"] == len(expect["bad"])
    assert m["files_ok"] == m["files_total"] - m["files_skipped"] - m["duplicates"]
    assert "SMPTE" in skipped["smpte.mid"]
    assert "not a MIDI file" in skipped["text.kar"]
    assert "too short" in skipped["empty.mid"]
    assert "4-bar" in skipped["one_bar.mid"]
    for key in ("samples", "tokens", "config", "codec", "density_bins", "labels_seen"):
        assert key in m
    assert m["created_by"].startswith("bandmate ")
    assert m["config"]["transpose"] == [-5, 6] and "workers" not in m["config"]
    edges = m["codec"]["density_edges"]
    assert len(edges) == 3 and edges == m["density_bins"]["edges"] and edges == sorted(edges)
    assert set(m["labels_seen"]) <= {"0", "10", "20", "DRUMS"}
    for split in ("train", "val"):
        s = open_split(prepared, split)
        assert len(s) == m["samples"][split] and s.tokens_total == m["tokens"][split]
    assert m["samples"]["val"] > 0 and m["samples"]["train"] > m["samples"]["val"]
    assert not (prepared / ".work").exists()


def test_samples_are_valid_and_decode(prepared):
    vocab = Vocab.from_tokenizer_json(prepared / "tokenizer.json")
    m = json.loads((prepared / "manifest.json").read_text())
    assert vocab.density_bins == 4
    label_total = dict.fromkeys(m["labels_seen"], 0)
    for split in ("train", "val"):
        s = open_split(prepared, split)
        for i in range(len(s)):
            toks = np.asarray(s[i])
            assert toks[0] == PIECE_START and toks[-1] == 4  # TRACK_END
            assert toks.max() < vocab.size
            d = decode(toks, vocab, bars=4)
            assert d.repairs == [], d.repairs
            assert all(x is not None for x in d.densities)
            for t in d.piece.tracks:
                label_total[t.inst] += 1
    assert label_total == m["labels_seen"]


def test_val_is_not_augmented_and_split_follows_content(prepared, corpus, tmp_path):
    """Val samples are the plain windows of val files; the split does not depend on paths."""
    m = json.loads((prepared / "manifest.json").read_text())
    src, _ = corpus
    moved = tmp_path / "moved"
    moved.mkdir()
    for p in sorted(src.rglob("*")):
        if p.is_file():
            (moved / ("x_" + p.name)).write_bytes(p.read_bytes())
    out = tmp_path / "o"
    assert run_cli(moved, "-o", out, "--val-fraction", 0.3, "--workers", 1) == 0
    m2 = json.loads((out / "manifest.json").read_text())
    assert m2["samples"] == m["samples"] and m2["tokens"] == m["tokens"]
    val = open_split(prepared, "val")
    shifted = 0
    for i in range(len(val)):
        # An un-augmented sample is exactly re-encodable at its own pitch: cheap check that no
        # two val samples are transpositions of each other.
        a = np.asarray(val[i]).astype(np.int64)
        for j in range(i + 1, len(val)):
            b = np.asarray(val[j]).astype(np.int64)
            if len(a) == len(b) and len(np.unique(b - a)) == 2:
                shifted += 1
    assert shifted == 0


def test_workers_give_identical_bytes(corpus, tmp_path):
    """One worker (the parent writes the shards) and 2 or 3 (the workers write them)."""
    src, _ = corpus
    outs = []
    for w in (1, 2, 3):
        out = tmp_path / f"w{w}"
        argv = (src, "-o", out, "--workers", w, "--chunk-files", 2, "--val-fraction", 0.3)
        assert run_cli(*argv, "--density-bins", 3) == 0
        outs.append(read_tree(out))
    assert outs[0] == outs[1] == outs[2]
    assert "train-00000.bin" in outs[0] and "manifest.json" in outs[0]
    # Automatic units (ending in halving sizes) change nothing either.
    out = tmp_path / "auto"
    argv = (src, "-o", out, "--workers", 2, "--val-fraction", 0.3, "--density-bins", 3)
    assert run_cli(*argv) == 0
    auto = read_tree(out)
    m_auto, m_fixed = (json.loads(t.pop("manifest.json")) for t in (auto, dict(outs[0])))
    assert auto == {k: v for k, v in outs[0].items() if k != "manifest.json"}
    for m in (m_auto, m_fixed):  # the configuration differs by --chunk-files alone
        del m["config"], m["config_hash"]
    assert m_auto == m_fixed


def test_text_format_matches_bin(prepared, corpus, tmp_path):
    src, _ = corpus
    out = tmp_path / "txt"
    rc = run_cli(src, "-o", out, "--format", "text", "--chunk-files", 3, "--val-fraction", 0.3)
    assert rc == 0
    vocab = Vocab.from_tokenizer_json(out / "tokenizer.json")
    for split in ("train", "val"):
        lines = (out / f"{split}.txt").read_text().splitlines()
        s = open_split(prepared, split)
        assert len(lines) == len(s)
        for line, i in zip(lines, range(len(s)), strict=True):
            assert line == " ".join(vocab.decode(s[i]))
        assert lines[0].startswith("PIECE_START TRACK_START INST=")
    assert not list(out.glob("*.bin"))


def test_rerun_same_args_is_a_no_op_and_other_args_are_refused(prepared, corpus, capsys):
    src, _ = corpus
    before = read_tree(prepared)
    argv = (src, "-o", prepared, "--workers", 1, "--chunk-files", 3, "--val-fraction", 0.3)
    assert run_cli(*argv) == 0
    assert read_tree(prepared) == before
    assert run_cli(src, "-o", prepared, "--val-fraction", 0.3) == 2
    assert "other arguments" in capsys.readouterr().err
    assert read_tree(prepared) == before


def test_refuses_foreign_folder_and_bad_arguments(corpus, tmp_path, capsys):
    src, _ = corpus
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    assert run_cli(src, "-o", tmp_path / "busy") == 2
    assert "not empty" in capsys.readouterr().err
    assert run_cli(tmp_path / "missing", "-o", tmp_path / "o") == 2
    assert "no such file" in capsys.readouterr().err
    assert run_cli(src, "-o", tmp_path / "o2", "--transpose", "3:5") == 2
    assert "transpose" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(src, "-o", tmp_path / "o3", "--shard", "1-2")


def test_shard_parts_are_disjoint_and_complete(corpus, tmp_path):
    src, expect = corpus
    totals = []
    for i in range(2):
        out = tmp_path / f"s{i}"
        assert run_cli(src, "-o", out, "--shard", f"{i}/2", "--density-edges", "8,12,16") == 0
        m = json.loads((out / "manifest.json").read_text())
        assert m["codec"]["density_edges"] == [8.0, 12.0, 16.0]
        totals.append(m["files_total"])
    assert sum(totals) == int(expect["total"][0])


def test_worker_crash_skips_only_that_file(corpus, tmp_path):
    """A worker that dies (as on a crash in C++ code) costs only the file it was on."""
    src, _ = corpus
    out = tmp_path / "crash"
    with faults.injected(crash="r3.MID"):
        assert run_cli(src, "-o", out, "--workers", 2, "--chunk-files", 2) == 0
    m = json.loads((out / "manifest.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in m["skipped"]}
    assert "crashed" in skipped["r3.MID"]
    ref = tmp_path / "ref"
    assert run_cli(src, "-o", ref, "--workers", 2, "--chunk-files", 2) == 0
    mr = json.loads((ref / "manifest.json").read_text())
    assert m["files_ok"] == mr["files_ok"] - 1
    assert m["files_total"] == mr["files_total"]


def test_a_worker_that_dies_writing_the_merge_costs_nothing(corpus, tmp_path, monkeypatch,
                                                           caplog):
    """The merge's writes are shared out to the workers: one that dies there has its part
    written by the parent (no replacement is forked beside the merge's sync threads), and the
    output is the same bytes."""
    import os

    from bandmate.training.corpus import workers as corpus_workers

    src, _ = corpus
    argv = ("--workers", 2, "--chunk-files", 2)
    ref = tmp_path / "ref"
    assert run_cli(src, "-o", ref, *argv) == 0
    parent, real = os.getpid(), corpus_workers.write_group

    def dies_in_a_worker(tasks, scratch=None):
        if os.getpid() != parent:
            os._exit(70)
        return real(tasks, scratch)

    monkeypatch.setattr(corpus_workers, "write_group", dies_in_a_worker)
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="bandmate.prepare"):
        assert run_cli(src, "-o", out, *argv) == 0
    assert "a worker died during the merge" in caplog.text
    assert read_tree(out) == read_tree(ref)


@pytest.mark.skipif(not hasattr(__import__("signal"), "setitimer"), reason="POSIX timers")
def test_a_file_that_never_finishes_is_skipped_after_the_timeout(corpus, tmp_path):
    """A parser stuck on a damaged file would stall the batch for ever: the file is given
    up after --file-timeout, reported with that reason, and the rest is prepared."""
    src, _ = corpus
    out = tmp_path / "hang"
    argv = ("--workers", 2, "--chunk-files", 2)
    with faults.injected(hang="r3.MID"):
        assert run_cli(src, "-o", out, *argv, "--file-timeout", 0.5) == 0
    m = json.loads((out / "manifest.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in m["skipped"]}
    assert "--file-timeout" in skipped["r3.MID"]
    ref = tmp_path / "ref"
    assert run_cli(src, "-o", ref, *argv) == 0
    mr = json.loads((ref / "manifest.json").read_text())
    assert m["files_ok"] == mr["files_ok"] - 1
    assert run_cli(src, "-o", tmp_path / "bad", "--file-timeout", -1) == 2


def _interrupted_before_the_merge(corpus, tmp_path, monkeypatch, workers: int) -> tuple:
    """A reference run into tmp/ref, and the same run into tmp/o stopped (as by Ctrl-C) once
    every work unit is on disk, just before the merge. Returns the run's arguments."""
    from bandmate.training.corpus import run as corpus_run

    src, _ = corpus
    argv = (src, "-o", tmp_path / "o", "--chunk-files", 2, "--workers", workers)
    assert run_cli(*argv[:2], tmp_path / "ref", *argv[3:]) == 0

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus_run, "merge", stop)  # where the run looks it up
    assert run_cli(*argv) == 130
    monkeypatch.undo()
    return argv


def test_torn_work_unit_is_redone(corpus, tmp_path, monkeypatch):
    """A work unit cut short (say by a power loss) is detected on resume and redone."""
    from bandmate.training import prepare as P

    argv = _interrupted_before_the_merge(corpus, tmp_path, monkeypatch, workers=1)
    chunks = sorted((tmp_path / "o" / P.WORK).glob("chunk-*.bin"))
    assert len(chunks) > 3
    data = chunks[1].read_bytes()
    chunks[1].write_bytes(data[: len(data) // 2])
    chunks[2].write_bytes(b"")
    assert P.read_chunk(chunks[1]) is None and P.read_chunk(chunks[2]) is None
    assert run_cli(*argv) == 0
    assert read_tree(tmp_path / "o") == read_tree(tmp_path / "ref")


def test_unreadable_state_starts_the_folder_over(corpus, tmp_path, monkeypatch, caplog):
    """state.json is not fsynced: after a power loss it may be empty. That folder is
    started over (with a warning), not refused and not trusted."""
    from bandmate.training import prepare as P

    argv = _interrupted_before_the_merge(corpus, tmp_path, monkeypatch, workers=2)
    state = tmp_path / "o" / P.WORK / "state.json"
    state.write_bytes(b"")
    with caplog.at_level("WARNING", logger="bandmate.prepare"):
        assert run_cli(*argv) == 0
    assert "starting this folder over" in caplog.text
    assert read_tree(tmp_path / "o") == read_tree(tmp_path / "ref")


def _waltz(path: Path) -> None:
    import mido

    mid = mido.MidiFile(type=1, ticks_per_beat=96)
    tr = mido.MidiTrack()
    tr.append(mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0))
    for i in range(8 * 3):
        tr.append(mido.Message("note_on", note=60 + i % 12, velocity=70, time=0))
        tr.append(mido.Message("note_off", note=60 + i % 12, velocity=0, time=96))
    mid.tracks.append(tr)
    mid.save(path)


def test_meter_assume_44_reads_files_whose_signature_lies(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    _waltz(src / "waltz.mid")
    assert run_cli(src, "-o", tmp_path / "strict", "--workers", 1) == 0
    m = json.loads((tmp_path / "strict" / "manifest.json").read_text())
    assert m["files_ok"] == 0 and "4/4" in m["skipped"][0]["reason"]
    assert run_cli(src, "-o", tmp_path / "free", "--meter", "assume-4/4", "--workers", 1) == 0
    m = json.loads((tmp_path / "free" / "manifest.json").read_text())
    assert m["files_ok"] == 1 and m["samples"]["train"] + m["samples"]["val"] > 0
    capsys.readouterr()
    out = tmp_path / "bar"
    assert main(["prepare", str(src), "-o", str(out), "--progress", "on", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "prepare" in err and "1/1" in err and "skipped" in err


def test_spawned_workers_give_the_same_bytes(corpus, tmp_path, monkeypatch):
    """Nothing relies on state inherited by fork: spawn (macOS, Windows) gives the same bytes."""
    import multiprocessing as mp

    from bandmate.training.corpus import run as corpus_run

    src, _ = corpus
    assert run_cli(src, "-o", tmp_path / "fork", "--workers", 2) == 0
    monkeypatch.setattr(corpus_run, "mp_context", lambda: mp.get_context("spawn"))
    assert run_cli(src, "-o", tmp_path / "spawn", "--workers", 2) == 0
    assert read_tree(tmp_path / "fork") == read_tree(tmp_path / "spawn")


def test_empty_and_all_bad_corpora(tmp_path):
    (tmp_path / "empty").mkdir()
    assert run_cli(tmp_path / "empty", "-o", tmp_path / "o1", "--workers", 1) == 0
    m = json.loads((tmp_path / "o1" / "manifest.json").read_text())
    assert m["files_total"] == 0 and m["samples"] == {"train": 0, "val": 0}
    assert len(open_split(tmp_path / "o1", "train")) == 0
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mid").write_bytes(b"MThd nope")
    assert run_cli(tmp_path / "bad", "-o", tmp_path / "o2", "--workers", 1) == 0
    m = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert m["files_skipped"] == 1 and m["files_ok"] == 0


def test_mutated_files_never_stop_the_batch(tmp_path):
    """Truncations and byte flips of real files: each is prepared or skipped with a reason."""
    rng = random.Random(7)
    good = [p.read_bytes() for p in CHORALES]
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        data = bytearray(good[i % 2])
        if i % 2:
            data = data[: rng.randrange(14, len(data))]
        else:
            for _ in range(rng.randrange(1, 30)):
                data[rng.randrange(14, len(data))] = rng.randrange(256)
        (src / f"m{i:02d}.mid").write_bytes(bytes(data))
    assert run_cli(src, "-o", tmp_path / "o", "--workers", 2, "--chunk-files", 4) == 0
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["files_ok"] + m["files_skipped"] + m["duplicates"] == 40
    assert all(s["reason"] for s in m["skipped"])
    assert not any("unexpected error" in s["reason"] for s in m["skipped"]), m["skipped"]


def test_second_run_on_the_same_folder_is_refused(corpus, tmp_path, capsys):
    import subprocess
    import sys

    src, _ = corpus
    out = tmp_path / "o"
    (out / ".work").mkdir(parents=True)
    holder = subprocess.Popen(  # holds the lock as a running `bandmate prepare` would
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a');"
            "fcntl.lockf(f.fileno(), fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            str(out / ".work" / "lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run_cli(src, "-o", out) == 2
        assert "another" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert run_cli(src, "-o", out, "--workers", 1) == 0
    assert not (out / ".work").exists()


def test_absurd_lengths_are_skipped_not_allocated(tmp_path, monkeypatch):
    import mido
    from bandmate.training import prepare as P
    from bandmate.training.corpus import samples

    mid = mido.MidiFile(type=1, ticks_per_beat=480)
    for _ in range(4):
        tr = mido.MidiTrack()
        tr.append(mido.Message("note_on", note=60, velocity=64, time=0))
        tr.append(mido.Message("note_off", note=60, velocity=0, time=480))
        tr.append(mido.Message("note_on", note=62, velocity=64, time=2**24))  # ~2,200 bars on
        tr.append(mido.Message("note_off", note=62, velocity=0, time=480))
        mid.tracks.append(tr)
    mid.save(tmp_path / "late.mid")
    monkeypatch.setattr(samples, "MAX_TRACK_BARS", 4000)  # read by samples.encode_file
    with pytest.raises(P.MidiError, match="damaged"):
        encode_file(tmp_path / "late.mid", PrepareConfig(sources=("x",)))


def test_unit_bounds_cover_the_list_and_end_in_small_units():
    from bandmate.training.prepare import auto_chunk_files, unit_bounds

    for n in (0, 1, 2, 7, 16, 100, 300, 1200, 5000, 100_000):
        b = unit_bounds(n)
        sizes = [b1 - b0 for b0, b1 in itertools.pairwise(b)]
        assert b[0] == 0 and b[-1] == n and all(s > 0 for s in sizes)
        assert max(sizes, default=0) <= auto_chunk_files(n)
        if n >= 100:
            assert sizes[-2:] == [1, 1]  # the last units handed out are single files
    assert unit_bounds(10, 3) == [0, 3, 6, 9, 10]


def test_exclude_leaves_out_files_by_content_under_any_name(tmp_path, capsys):
    import hashlib
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    for p in CHORALES:
        shutil.copy(p, src / p.name)
    shutil.copy(CHORALES[0], src / "renamed_copy.mid")  # the held-out file under another name
    digest = hashlib.blake2b(CHORALES[0].read_bytes(), digest_size=16).hexdigest()
    listing = tmp_path / "holdout.txt"
    listing.write_text(f"# held out\n{digest}  midi/0.mid\n\n")
    out = tmp_path / "out"
    argv = ["prepare", str(src), "-o", str(out), "--voices", VOICES, "--transpose=0:0"]
    assert main([*argv, "--exclude", str(listing), "--progress", "off"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["exclude"] == [digest]
    excluded = sorted(Path(s["path"]).name for s in m["skipped"] if "exclude" in s["reason"])
    # One of the two copies is excluded, the other is its duplicate: neither is encoded.
    assert m["files_ok"] == 1 and excluded and "jsfakes-1.mid" not in excluded
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert main([*argv, "--exclude", str(empty)]) == 2
    assert "no digests" in capsys.readouterr().err
    with pytest.raises(ValueError, match="32 hex"):
        PrepareConfig(sources=("x",), exclude=("not-a-digest",))


def test_band_corpus_options(tmp_path):
    """gm-family labels, a meter per source, and a train/val split by piece name."""
    from bandmate.training.prepare import _process_file, piece_key

    assert piece_key("history/1223d6cb0b_d_intro.mid") == piece_key("current/D_INTRO.MID")
    assert piece_key("a/someone_hates_you_remaster.mid") == piece_key("someone_hates_you_.mid")
    assert piece_key("x/1_funk_80_beat_4-4.mid") == "1_funk_80_beat_4-4"
    strict, free = tmp_path / "strict", tmp_path / "free"
    strict.mkdir()
    free.mkdir()
    _waltz(free / "waltz.mid")  # 3/4 on paper: read only under assume-4/4
    band = random_piece(5)
    write_midi(band, strict / "d_tune.mid")
    (strict / "0123456789_d_tune.mid").write_bytes((strict / "d_tune.mid").read_bytes() + b"\0")
    out = tmp_path / "out"
    argv = [strict, free, "-o", out, "--labels", "gm-family", "--split-by", "piece"]
    assert run_cli(*argv, "--meter", "strict,assume-4/4", "--val-fraction", "0.5") == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["files_ok"] == 3 and m["codec"]["label_scheme"] == "gm-family"
    assert m["codec"]["meter"] == "strict"  # the first source's: what prompts are read with
    assert set(m["labels_seen"]) <= {"DRUMS"} | {str(p) for p in range(0, 128, 8)}
    # Both revisions of the tune on one side of the split, whichever side it is.
    cfg = PrepareConfig.from_json(m["config"])
    splits = {}
    for f in list_sources(cfg.sources):
        splits.setdefault(piece_key(f.path), set()).add(_process_file(f, cfg).split)
    assert set(splits) == {"tune", "waltz"} and len(splits["tune"]) == 1
    with pytest.raises(ValueError, match="one per source"):
        PrepareConfig(sources=("a", "b", "c"), meter="strict,assume-4/4")
    with pytest.raises(ValueError, match="split_by"):
        PrepareConfig(sources=("a",), split_by="name")
