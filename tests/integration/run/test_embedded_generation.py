"""Generation on the embedded model: every engine (tl, hf; compiled against hf).

Each test that claims a path checks that the path ran (``spy_path``), so a test cannot pass
by silently exercising the other engine.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ENGINES

import steerlens as sl


@pytest.mark.integration
def test_embedded_model_answers_sensibly_offline(embedded):
    out = sl.generate(
        embedded, ["What is the capital of France?"], max_new_tokens=24, return_tokens=True
    )
    assert "Paris" in out.texts[0]
    assert len(out.tokens[0]) < 24  # stopped at its EOS
    assert "<|im_end|>" not in out.texts[0]


@pytest.mark.integration
@pytest.mark.parametrize("engine", ENGINES)
def test_embedded_steering_changes_output_and_batch_is_exact(embedded, engine):
    layers = sl.default_layers(embedded)
    assert layers == list(range(15, 22))
    pos, neg = sl.cache_activations(
        embedded,
        ["I love this, it is wonderful!", "I hate this, it is terrible!"],
        layers=layers,
        pool="mean",
        progress_bar=False,
    )
    vec = sl.SteeringVector(
        {lyr: pos[i] - neg[i] for i, lyr in enumerate(layers)}, model_name=sl.model_name(embedded)
    )
    prompts = ["Describe your day.", "Write one sentence about the sea."]
    alphas = [0.0, 6.0]
    kw = dict(steering=vec, max_new_tokens=12, engine=engine)
    batched = sl.generate(embedded, [prompts[0]] * 2 + [prompts[1]] * 2, alpha=alphas * 2, **kw)
    single = [sl.generate(embedded, [p], alpha=a, **kw)[0] for p in prompts for a in alphas]
    assert batched == single
    assert batched[0] != batched[1]


@pytest.mark.integration
def test_embedded_compiled_engine_gives_the_eager_fast_paths_tokens(embedded):
    """The compiled engine (static cache, inductor-compiled step, steering as data) on the
    embedded model in float32: per-row vectors and α, every gate, left padding, a row that
    stops at its EOS while others go on, and seeded sampling: the eager fast path's tokens."""
    from steerlens.core.engines.compiled import engine_stats

    g = torch.Generator().manual_seed(0)
    d = embedded.cfg.d_model
    vecs = [sl.SteeringVector({lyr: torch.randn(d, generator=g) for lyr in (15, 18)}) for _ in "ab"]
    prompts = ["Describe your day.", "Write one sentence about the sea.", "Reply yes or no?"]
    base = dict(
        steering=[vecs[0], vecs[1], vecs[0]],
        alpha=[2.0, 4.0, 0.0],
        max_new_tokens=16,
        return_tokens=True,
        progress_bar=False,
    )
    sampled = dict(do_sample=True, temperature=0.8, top_p=0.9, seed=3)
    cases = [{"gate": gate} for gate in ("all", "prefill", "generated", sl.FirstK(4))]
    for kw in [*cases, sampled]:
        steps = engine_stats().compiled_steps
        got = sl.generate(embedded, prompts, engine="compiled", **base, **kw)
        assert engine_stats().compiled_steps > steps
        want = sl.generate(embedded, prompts, engine="hf", **base, **kw)
        assert [t.tolist() for t in got.tokens] == [t.tolist() for t in want.tokens], kw
        lengths = [len(t) for t in got.tokens]
        assert min(lengths) < 16 == max(lengths)  # one row stopped at its EOS, one ran on
        if kw.get("gate") == "all":  # α 0 is the unsteered reply
            assert got.texts[2] == sl.generate(embedded, prompts[2:], max_new_tokens=16)[0]
