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
    embedded model in float32: per-row vectors and α, a first-K gate, left padding."""
    from steerlens.core.compiled import engine_stats

    g = torch.Generator().manual_seed(0)
    d = embedded.cfg.d_model
    vecs = [sl.SteeringVector({lyr: torch.randn(d, generator=g) for lyr in (15, 18)}) for _ in "ab"]
    prompts = ["Describe your day.", "Write one sentence about the sea.", "Name a colour."]
    kw = dict(
        steering=[vecs[0], vecs[1], vecs[0]],
        alpha=[0.0, 4.0, 8.0],
        gate=sl.FirstK(4),
        max_new_tokens=16,
        return_tokens=True,
        progress_bar=False,
    )
    steps = engine_stats().compiled_steps
    got = sl.generate(embedded, prompts, engine="compiled", **kw)
    assert engine_stats().compiled_steps > steps
    want = sl.generate(embedded, prompts, engine="hf", **kw)
    assert [t.tolist() for t in got.tokens] == [t.tolist() for t in want.tokens]
    assert got.texts[0] == sl.generate(embedded, prompts[:1], max_new_tokens=16)[0]  # α 0
