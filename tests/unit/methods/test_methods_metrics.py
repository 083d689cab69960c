from __future__ import annotations

import math

import pytest
import torch
from conftest import on_device

import steerlens as sl
from steerlens.data.schema import PreferencePair
from steerlens.methods import mean_difference
from steerlens.metrics.text import continuation_nll, perplexity, toxicity_abs_error


def _pair(prompt, chosen, rejected, **kw):
    base = dict(
        user_id="u",
        conversation_id="c",
        interaction_id="i",
        turn=0,
        category="benign_control",
        chosen_score=80,
        rejected_score=20,
        chosen_model="a",
        rejected_model="b",
        chosen_utterance_id="x",
        rejected_utterance_id="y",
    )
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, **{**base, **kw})


def test_mean_difference_is_chosen_minus_rejected_response_means(tiny):
    pairs = [_pair("q1?", "good answer", "bad"), _pair("q2?", "fine", "awful answer here")]
    vec = mean_difference(tiny, pairs, [1, 3], progress_bar=False)
    ids_p, m_p = sl.response_masks(tiny, ["q1?", "q2?"], ["good answer", "fine"])
    ids_n, m_n = sl.response_masks(tiny, ["q1?", "q2?"], ["bad", "awful answer here"])
    pos = sl.cache_activations(tiny, ids_p, [1, 3], pool="mean", masks=m_p, progress_bar=False)
    neg = sl.cache_activations(tiny, ids_n, [1, 3], pool="mean", masks=m_n, progress_bar=False)
    expected = pos.mean(0) - neg.mean(0)
    assert vec.layers == [1, 3] and vec.method == "caa" and vec.model_name == "tiny-random"
    torch.testing.assert_close(vec.as_tensor(), expected, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="at least one"):
        mean_difference(tiny, [], [1])


def test_continuation_nll_matches_manual_log_softmax(tiny_bridge):
    m = tiny_bridge
    (nll,) = continuation_nll(m, ["hi?"], ["ok then"])
    ids, masks = sl.response_masks(m, ["hi?"], ["ok then"])
    with torch.no_grad():
        logp = m(on_device(m, ids[0][None]))[0].cpu().log_softmax(-1)
    pos = masks[0].nonzero().flatten()
    manual = -torch.stack([logp[p - 1, ids[0][p]] for p in pos]).mean()
    assert nll == pytest.approx(float(manual), abs=1e-4)
    batch = continuation_nll(m, ["hi?", "a longer question here?", "x"], ["ok then", "no", ""])
    assert batch[0] == pytest.approx(nll, abs=1e-4) and math.isnan(batch[2])
    assert perplexity([0.0, math.log(4.0), math.nan])[:2] == pytest.approx([1.0, 4.0])
    assert toxicity_abs_error([0.5, 0.1], [0.2, 0.3]) == pytest.approx([0.3, 0.2])
    with pytest.raises(ValueError):
        toxicity_abs_error([0.1], [0.1, 0.2])


def test_profanity_scorer_separates_styles():
    from steerlens.metrics import get_scorer

    s = get_scorer()
    clean, rude = s(["Here is a recipe for bread.", "Shut up, you damn idiot, this is bullshit."])
    assert rude > 0.9 > 0.1 > clean
    with pytest.raises(ValueError, match="unknown toxicity scorer"):
        get_scorer("vibes")


def test_distinct_n_flags_repetition():
    from steerlens.metrics.text import distinct_n

    varied, looped, short = distinct_n(["the cat sat on the mat", "5 5 5 5 5 5", "one"], 2)
    assert varied == 1.0 and looped == pytest.approx(1 / 5) and math.isnan(short)


def test_corpus_distinct_and_degenerate():
    from steerlens.metrics.text import corpus_distinct_n, degenerate

    assert corpus_distinct_n(["a b c", "a b c"]) == 0.5  # 2 distinct bigrams of 4
    assert math.isnan(corpus_distinct_n(["a", ""]))
    assert degenerate(["", "  ", "fine words here", "go go go go go go"]) == [
        True,
        True,
        False,
        True,
    ]
