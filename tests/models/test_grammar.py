"""The bar grammar: every walk it allows is canonical mmmtrack that decodes without repairs."""

from __future__ import annotations

import numpy as np
import pytest
from bandmate.models.codec import decode, encode_bars
from bandmate.models.config import CodecConfig
from bandmate.models.grammar import BarGrammar, check_bar, parse_scale, pitch_mask
from bandmate.models.vocab import (
    BAR_END,
    BAR_START,
    NOTE_OFF0,
    NOTE_ON0,
    PIECE_START,
    TIME_DELTA0,
    TRACK_END,
    TRACK_START,
)

CODEC = CodecConfig(voices=("SOPRANO", "ALTO", "TENOR", "BASS"), density_bins=4,
                    density_edges=(8.0, 12.0, 16.0))
V = CODEC.vocab.size


def walk(rng: np.random.Generator, g: BarGrammar, bias_end: float = 0.0) -> list[int]:
    """A random legal bar: uniform over the legal ids (optionally favouring BAR_END)."""
    out = []
    g.reset()
    while not g.done:
        legal = np.flatnonzero(g.mask())
        assert len(legal), "the grammar must always leave a legal token"
        if bias_end and BAR_END in legal and rng.random() < bias_end:
            tok = BAR_END
        else:
            tok = int(rng.choice(legal))
        g.advance(tok)
        out.append(tok)
    return out


def test_random_walks_decode_without_repairs_and_are_canonical():
    rng = np.random.default_rng(0)
    g = BarGrammar(V, max_tokens=10_000)
    for k in range(300):
        body = walk(rng, g, bias_end=0.02 if k % 2 else 0.0)
        ids = [PIECE_START, TRACK_START, CODEC.vocab.inst_id("BASS"), BAR_START, *body, TRACK_END]
        d = decode(ids, CODEC, bars=1)
        assert d.repairs == []
        notes = d.piece.tracks[0].notes if d.piece.tracks else ()
        assert all(0 <= n.start < n.end <= 16 for n in notes)
        # Re-encoding the decoded notes gives back exactly the walk: the grammar keeps the
        # codec's canonical order (offs before ons, ascending pitch, no stray deltas).
        tb = encode_bars([0] * len(notes), [n.start for n in notes], [n.end for n in notes],
                         [n.pitch for n in notes], 1, 1)
        assert tb.ids.tolist() == [BAR_START, *body]


def test_closing_budget_ends_bars_quickly():
    rng = np.random.default_rng(1)
    g = BarGrammar(V, max_tokens=12)
    for _ in range(200):
        body = walk(rng, g)
        # Once over budget no note starts: at most the open notes, one delta and BAR_END.
        assert len(body) <= 12 + 128 + 2
        d = decode([PIECE_START, TRACK_START, CODEC.vocab.inst_id("ALTO"), BAR_START, *body,
                    TRACK_END], CODEC, bars=1)
        assert d.repairs == []
        ons_after_budget = [t for t in body[12:] if NOTE_ON0 <= t < NOTE_ON0 + 128]
        assert ons_after_budget == []


def test_time_never_passes_the_bar_and_offs_only_for_sounding():
    rng = np.random.default_rng(2)
    g = BarGrammar(V, max_tokens=10_000)
    for _ in range(100):
        g.reset()
        t, sounding = 0, set()
        while not g.done:
            m = g.mask()
            offs = {p for p in range(128) if m[NOTE_OFF0 + p]}
            assert offs <= sounding
            assert not any(m[NOTE_ON0 + p] for p in sounding)
            tok = int(rng.choice(np.flatnonzero(m)))
            g.advance(tok)
            if TIME_DELTA0 < tok <= TIME_DELTA0 + 16:
                t += tok - TIME_DELTA0
            elif NOTE_ON0 <= tok < NOTE_ON0 + 128:
                sounding.add(tok - NOTE_ON0)
            elif NOTE_OFF0 <= tok < NOTE_OFF0 + 128:
                sounding.discard(tok - NOTE_OFF0)
            assert t <= 16
        assert not sounding


def test_pitch_range_and_scale_mask_note_ons():
    allowed = pitch_mask((48, 72), "D minor")
    pcs = set(parse_scale("D minor"))
    assert pcs == {2, 4, 5, 7, 9, 10, 0}
    rng = np.random.default_rng(3)
    g = BarGrammar(V, allowed_on=allowed, max_tokens=10_000)
    for _ in range(50):
        body = walk(rng, g)
        for tok in body:
            if NOTE_ON0 <= tok < NOTE_ON0 + 128:
                p = tok - NOTE_ON0
                assert 48 <= p <= 72 and p % 12 in pcs


def test_empty_pitch_mask_still_ends_the_bar():
    g = BarGrammar(V, allowed_on=np.zeros(128, bool))
    assert np.flatnonzero(g.mask()).tolist() == [BAR_END]


def test_a_bar_that_must_play_cannot_end_empty():
    rng = np.random.default_rng(5)
    g = BarGrammar(V, max_tokens=10_000)
    for _ in range(100):
        g.reset()
        g.must_play = True
        assert not g.mask()[BAR_END]
        out = []
        while not g.done:
            legal = np.flatnonzero(g.mask())
            tok = BAR_END if BAR_END in legal else int(rng.choice(legal))
            out.append(tok)
            g.advance(tok)
        assert any(NOTE_ON0 <= t < NOTE_ON0 + 128 for t in out)
    g.reset()
    assert g.mask()[BAR_END], "reset clears must_play"
    g = BarGrammar(V, allowed_on=np.zeros(128, bool))
    g.must_play = True
    assert np.flatnonzero(g.mask()).tolist() == [BAR_END]  # nothing may play: still ends


def test_check_bar_rejects_illegal_bars():
    on, off, dt = NOTE_ON0, NOTE_OFF0, TIME_DELTA0
    check_bar([on + 60, dt + 4, off + 60, BAR_END], V)
    with pytest.raises(ValueError):
        check_bar([off + 60, BAR_END], V)  # NOTE_OFF of a silent pitch
    with pytest.raises(ValueError):
        check_bar([on + 60, dt + 16, dt + 1], V)  # past step 16 (and a double delta)
    with pytest.raises(ValueError):
        check_bar([on + 60, BAR_END], V)  # a note left open at the bar end
    with pytest.raises(ValueError):
        check_bar([on + 62, on + 60, dt + 2, off + 60, off + 62, BAR_END], V)  # descending ons
    with pytest.raises(ValueError):
        check_bar([on + 60], V)  # never closed


@pytest.mark.parametrize("bad", ["H major", "C dorian", "C", "", "Cx major"])
def test_bad_scales_name_the_allowed_forms(bad):
    with pytest.raises(ValueError, match=r"major|tonic"):
        parse_scale(bad)


def test_scale_names_with_accidentals():
    assert parse_scale("F# major") == tuple(sorted((6 + i) % 12 for i in (0, 2, 4, 5, 7, 9, 11)))
    assert parse_scale("Bb minor") == parse_scale("A# minor")
    assert parse_scale([0, 4, 7]) == (0, 4, 7)
