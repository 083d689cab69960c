"""The flat public API: the DESIGN.md contract names at the root, tokenisation internals in
``sl.tokens``."""

from __future__ import annotations

import steerlens as sl

CONTRACT = [
    "load_model",
    "SteeringVector",
    "steering",
    "generate",
    "cache_activations",
    "FirstK",
    "model_name",
    "continuation_logprobs",
    "encode_prompts",
    "response_masks",
    "data",
    "methods",
    "evaluation",
    "steerx",
    "tokens",
]


def test_the_contract_names_are_at_the_root_and_in_all():
    for name in CONTRACT:
        assert hasattr(sl, name) and name in sl.__all__, name
    assert callable(sl.data.load_prism) and callable(sl.methods.pair_activations)
    assert callable(sl.evaluation.mmlu_prompt) and callable(sl.steerx.history_effects)
    assert sorted(sl.__all__) == sorted(set(sl.__all__))
    assert all(hasattr(sl, name) for name in sl.__all__)


def test_tokenisation_helpers_live_in_tokens():
    for name in ("tokenize", "pad", "content_masks", "non_special_mask", "format_chat"):
        assert not hasattr(sl, name) and callable(getattr(sl.tokens, name))
