"""Generation on every execution path: backend (bridge, hooked) x engine (tl, hf).

Each test that claims a path checks that the path ran (``spy_path``), so a test cannot pass
by silently exercising the other engine.
"""

from __future__ import annotations

import pytest
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
