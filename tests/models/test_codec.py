"""The mmmtrack codec against the format's contract: exact round trips and a slow oracle."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from bandmate.models.codec import (
    FILL_BAR,
    Codec,
    decode,
    density_bucket,
    encode_piece,
    encode_track,
    fill_density_slots,
    segment_bars,
    split_at_bars,
)
from bandmate.models.config import CodecConfig
from bandmate.models.midi_io import arrays_to_piece, read_midi, read_segments_arrays, write_midi
from bandmate.models.types import Note, Piece, Track
from bandmate.models.vocab import DENSITY0, FILL_END, FILL_START, NOTE_ON0, Vocab
from hypothesis import given, settings
from hypothesis import strategies as st

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CHORALES = sorted((SHARED / "jsfakes").glob("*/*.mid"))
SATB = CodecConfig(voices=("SOPRANO", "ALTO", "TENOR", "BASS"))


def ref_encode(piece: Piece, config: CodecConfig) -> list[str]:
    """A deliberately plain encoder written from docs/mmmtrack.md, as an oracle."""
    out = ["PIECE_START"]
    for t in piece.tracks:
        notes = split_at_bars(t.notes)
        if not notes:
            continue
        out += ["TRACK_START", f"INST={t.inst}"]
        for b in range(piece.bars):
            out.append("BAR_START")
            ev = []
            for n in notes:
                if n.start // 16 == b:
                    ev.append((n.start - 16 * b, 1, n.pitch))
                    ev.append((n.end - 16 * b, 0, n.pitch))
            ev.sort()
            now = 0
            for tm, on, p in ev:
                if tm != now:
                    out.append(f"TIME_DELTA={tm - now}")
                    now = tm
                out.append(f"NOTE_ON={p}" if on else f"NOTE_OFF={p}")
            out.append("BAR_END")
        out.append("TRACK_END")
    return out


def test_vocabulary_is_deterministic_and_loads_in_tokenizers(tmp_path: Path) -> None:
    v = SATB.vocab
    assert v.tokens[:4] == ("[PAD]", "[UNK]", "PIECE_START", "TRACK_START")
    assert v.ids["NOTE_ON=0"] == 10 and v.ids["NOTE_OFF=127"] == 265
    assert v.ids["TIME_DELTA=1"] == 266 and v.ids["TIME_DELTA=16"] == 281
    assert v.tokens[v.inst_id("BASS")] == "INST=BASS"
    path = tmp_path / "tokenizer.json"
    v.save(path)
    assert Vocab.from_tokenizer_json(path) == v
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    text = "PIECE_START TRACK_START INST=BASS BAR_START NOTE_ON=60 TIME_DELTA=4 NOTE_OFF=60 BAR_END"
    ids = Tokenizer.from_file(str(path)).encode(text).ids
    assert ids == v.encode(text.split())
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert fast(text)["input_ids"] == ids
    assert v.encode(["NOT_A_TOKEN"]) == [1]


def test_bass_example_from_the_format_doc() -> None:
    notes = (Note(0, 61, 4), Note(4, 59, 6), Note(6, 58, 8), Note(8, 56, 12), Note(12, 54, 16))
    cfg = CodecConfig(
        voices=("SOPRANO", "ALTO", "TENOR", "BASS"), density_bins=4, density_edges=(2, 5, 9)
    )
    ids = encode_track(Track("BASS", notes), cfg, 0, 1, density=2)
    text = " ".join(cfg.vocab.decode(ids))
    assert text == (
        "TRACK_START INST=BASS DENSITY=2 BAR_START NOTE_ON=61 TIME_DELTA=4 NOTE_OFF=61 "
        "NOTE_ON=59 TIME_DELTA=2 NOTE_OFF=59 NOTE_ON=58 TIME_DELTA=2 NOTE_OFF=58 NOTE_ON=56 "
        "TIME_DELTA=4 NOTE_OFF=56 NOTE_ON=54 TIME_DELTA=4 NOTE_OFF=54 BAR_END TRACK_END"
    )
    assert density_bucket(5, cfg.density_edges) == 1 and density_bucket(6, cfg.density_edges) == 2
    assert density_bucket(100, cfg.density_edges) == 3


@pytest.mark.skipif(not CHORALES, reason="shared chorales are not beside the checkout")
def test_round_trip_every_window_of_every_chorale() -> None:
    assert len(CHORALES) == 1200
    windows = 0
    for path in CHORALES:
        segs = read_segments_arrays(path, SATB)
        assert len(segs) == 1, path
        piece = arrays_to_piece(segs[0])
        assert [t.inst for t in piece.tracks] == ["SOPRANO", "ALTO", "TENOR", "BASS"]
        for b in range(0, max(piece.bars - 3, 1)):
            n = min(4, piece.bars - b)
            ids = encode_piece(piece, SATB, b, n)
            got = decode(ids, SATB)
            assert got.repairs == [], (path, b, got.repairs)
            want = piece.slice_bars(b, n)
            kept = [t for t in want.tracks if t.notes]
            assert [t.inst for t in got.piece.tracks] == [t.inst for t in kept]
            for w, g in zip(kept, got.piece.tracks, strict=True):
                assert list(g.notes) == split_at_bars(w.notes), (path, b, w.inst)
            windows += 1
    assert windows > 1200


@pytest.mark.skipif(not CHORALES, reason="shared chorales are not beside the checkout")
def test_vectorised_encoder_matches_the_oracle_on_chorales() -> None:
    for path in random.Random(0).sample(CHORALES, 60):
        piece = read_midi(path, SATB)
        assert SATB.vocab.decode(encode_piece(piece, SATB)) == ref_encode(piece, SATB)


@st.composite
def pieces(draw) -> Piece:
    bars = draw(st.integers(1, 5))
    tracks = []
    labels = ["SOPRANO", "ALTO", "TENOR", "BASS", "DRUMS", "33", "0"]
    for i in range(draw(st.integers(1, 4))):
        by_pitch: dict[int, list[tuple[int, int]]] = {}
        for _ in range(draw(st.integers(0, 25))):
            p = draw(st.integers(0, 127))
            s = draw(st.integers(0, bars * 16 - 1))
            e = draw(st.integers(s + 1, bars * 16))
            by_pitch.setdefault(p, []).append((s, e))
        notes = []
        for p, spans in by_pitch.items():  # the codec's rule: same pitch never overlaps
            spans.sort()
            for j, (s, e) in enumerate(spans):
                if j + 1 < len(spans):
                    e = min(e, spans[j + 1][0])
                if e > s:
                    notes.append(Note(s, p, e))
        tracks.append(Track(labels[(i + draw(st.integers(0, 6))) % 7], tuple(sorted(notes))))
    return Piece(tuple(tracks), bars)


@settings(max_examples=300, deadline=None)
@given(pieces())
def test_random_pieces_round_trip_and_match_the_oracle(piece: Piece) -> None:
    ids = encode_piece(piece, SATB)
    assert SATB.vocab.decode(ids) == ref_encode(piece, SATB)
    got = decode(ids, SATB, bars=piece.bars)
    assert got.repairs == []
    kept = [t for t in piece.tracks if t.notes]
    assert len(got.piece.tracks) == len(kept)
    for w, g in zip(kept, got.piece.tracks, strict=True):
        assert g.inst == w.inst
        assert list(g.notes) == split_at_bars(w.notes)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(-5, 700), max_size=200))
def test_decoder_never_raises_on_any_ids(ids: list[int]) -> None:
    got = decode(ids, SATB)
    for t in got.piece.tracks:
        for n in t.notes:
            assert 0 <= n.start < n.end <= got.piece.bars * 16


def test_decoder_repairs_are_reported() -> None:
    v = SATB.vocab
    toks = [
        "PIECE_START",
        "TRACK_START",
        "INST=BASS",
        "BAR_START",
        "NOTE_OFF=40",
        "NOTE_ON=40",
        "TIME_DELTA=12",
        "TIME_DELTA=9",
        "BAR_START",
        "NOTE_ON=41",
        "[UNK]",
    ]
    got = decode(v.encode(toks), SATB)
    assert got.piece.bars == 2
    assert list(got.piece.tracks[0].notes) == [Note(0, 40, 16), Note(16, 41, 32)]
    text = " ".join(got.repairs)
    for what in ("without NOTE_ON", "clamped", "BAR_END missing", "TRACK_END missing", "unknown"):
        assert what in text


def test_fill_blocks_go_into_their_bars() -> None:
    v = SATB.vocab
    toks = [
        "PIECE_START",
        "TRACK_START",
        "INST=ALTO",
        "BAR_START",
        "NOTE_ON=60",
        "TIME_DELTA=16",
        "NOTE_OFF=60",
        "BAR_END",
        "BAR_START",
        "FILL_IN",
        "BAR_END",
        "TRACK_END",
        "FILL_START",
        "NOTE_ON=62",
        "TIME_DELTA=8",
        "NOTE_OFF=62",
        "FILL_END",
    ]
    got = decode(v.encode(toks), SATB)
    assert got.repairs == []
    assert list(got.piece.tracks[0].notes) == [Note(0, 60, 16), Note(16, 62, 24)]


def test_segment_bars_windows_are_slices() -> None:
    piece = Piece((Track("BASS", (Note(0, 40, 20), Note(30, 41, 33))),), 3)
    seg = read_segments_arrays(write_midi(piece), SATB)[0]
    tb = segment_bars(seg)
    assert tb.onsets.tolist() == [[1, 2, 1]]
    whole = tb.window(0, 0, 3)
    assert np.array_equal(np.concatenate([tb.window(0, b, 1) for b in range(3)]), whole)


# --------------------------------------------------------------------------- the codec object

BAND = CodecConfig(label_scheme="gm-family", density_bins=4, density_edges=(12, 28, 52))
DENSE = CodecConfig(voices=SATB.voices, density_bins=4, density_edges=(2, 5, 9))


def test_header_is_the_one_track_header() -> None:
    c = Codec(DENSE)
    assert DENSE.vocab.decode(c.header("BASS", 2)) == ["TRACK_START", "INST=BASS", "DENSITY=2"]
    assert DENSE.vocab.decode(c.header("33")) == ["TRACK_START", "INST=33"]
    assert Codec(SATB).header("BASS", 2) == Codec(SATB).header("BASS")  # no bins: no DENSITY
    band = Codec(BAND)  # a prompt labelled under another scheme is written as the model labels
    for label, want in (("33", "INST=32"), ("BASS", "INST=32"), ("DRUMS", "INST=DRUMS")):
        assert BAND.vocab.decode(band.header(label))[1] == want
    with pytest.raises(ValueError, match="density"):
        c.header("BASS", 4)
    assert Codec.of(DENSE) is Codec.of(DENSE)
    assert c.density_ids() == (DENSITY0, DENSITY0 + 1, DENSITY0 + 2, DENSITY0 + 3)


def test_density_is_scaled_to_the_models_window() -> None:
    c = Codec(DENSE)
    assert [c.density(n) for n in (0, 2, 3, 5, 6, 9, 10, 100)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert c.density(10, bars=8) == c.density(5) == 1  # 10 notes in 8 bars = 5 in a sample
    assert Codec(SATB).density(10) is None
    assert Codec(CodecConfig(density_bins=4)).density(10) == 2  # no edges yet: the middle


@settings(max_examples=150, deadline=None)
@given(pieces(), st.booleans())
def test_sample_is_header_bars_track_end_of_each_track(piece: Piece, keep_empty: bool) -> None:
    c = Codec(DENSE)
    tb = c.bars(piece)
    want = [2]  # PIECE_START
    for i, t in enumerate(piece.tracks):
        n = int(tb.onsets[i].sum())
        if n or keep_empty:
            want += c.track(tb, i, t.inst, c.density(n))
    assert c.sample(piece, keep_empty=keep_empty).tolist() == want
    assert encode_piece(piece, DENSE, keep_empty=keep_empty).tolist() == want


@settings(max_examples=150, deadline=None)
@given(pieces(), st.integers(1, 3), st.booleans())
def test_windows_of_a_segment_are_the_samples_of_each_window(
    piece: Piece, n: int, density: bool
) -> None:
    """Prepare's fast path (every window at once) writes exactly `Codec.sample` per window."""
    c = Codec(DENSE if density else SATB)
    tb = c.bars(piece)
    starts = np.arange(0, max(piece.bars - n + 1, 0), dtype=np.int64)
    w = c.windows(tb, [t.inst for t in piece.tracks], starts, n, density)
    want = {int(s): c.sample(piece, int(s), n) for s in starts}
    want = {s: v for s, v in want.items() if len(v) > 1}
    if w is None:
        assert not want
        return
    tokens = w.tokens.copy()
    fill_density_slots(tokens, w.slot_pos, w.slot_count, DENSE.density_edges)
    assert (w.tokens[w.slot_pos] == DENSITY0).all() and len(w.slot_pos) == density * len(w.track)
    offs = np.concatenate([[0], np.cumsum(w.lengths)])
    got = {int(s): tokens[offs[k] : offs[k + 1]] for k, s in enumerate(w.starts)}
    assert got.keys() == want.keys()
    for s in got:
        np.testing.assert_array_equal(got[s], want[s])


def test_fill_placeholders_and_fill_blocks_round_trip() -> None:
    c = Codec(DENSE)
    alto = (Note(0, 60, 16), Note(16, 62, 24), Note(36, 64, 40))
    piece = Piece((Track("ALTO", alto), Track("BASS", (Note(0, 40, 48),))), 3)
    tb = c.bars(piece)
    filled = c.track(tb, 0, "ALTO", 1, fills={1})
    bar = [tb.window(0, b, 1).tolist() for b in range(3)]
    assert filled == [*c.header("ALTO", 1), *bar[0], *FILL_BAR, *bar[2], 4]  # 4: TRACK_END
    ids = [2, *filled, *c.track(tb, 1, "BASS", 1)]
    ids += [FILL_START, *tb.window(0, 1, 1)[1:-1].tolist(), FILL_END]
    got = c.decode(ids, bars=3)
    assert got.repairs == []
    assert list(got.piece.tracks[0].notes) == list(alto)


def test_synthetic_samples_are_codec_samples() -> None:
    from support.models import CHORALE_CODEC
    from support.synthetic import synthetic_sample

    c = Codec.of(CHORALE_CODEC)
    rng = np.random.default_rng(0)
    for _ in range(5):
        ids = synthetic_sample(rng, CHORALE_CODEC, 4)
        d = c.decode(ids, bars=4)
        assert d.repairs == []
        assert c.sample(d.piece, densities=d.densities).tolist() == ids.tolist()


def test_encode_track_takes_a_window_shorter_than_the_track():
    """A window of a longer track: the notes after it are cut, not a crash."""
    config = CodecConfig(voices=("SOPRANO", "ALTO", "TENOR", "BASS"))
    track = Track("BASS", (Note(0, 40, 4), Note(40, 42, 48)))
    first = encode_track(track, config, 0, 1)
    assert NOTE_ON0 + 40 in first and NOTE_ON0 + 42 not in first
    third = encode_track(track, config, 2, 1)
    assert NOTE_ON0 + 42 in third and NOTE_ON0 + 40 not in third
    assert list(encode_track(track, config)) == list(encode_track(track, config, 0, 3))
