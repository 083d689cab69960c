from __future__ import annotations

import pytest
from conftest import assert_close_impl

import steerlens as sl


@pytest.mark.integration
def test_embedded_fast_cache_equals_transformerlens(embedded):
    texts = ["What is the capital of France?", "Tell me a short story about a cat."]
    layers = sl.default_layers(embedded)
    tl = sl.cache_activations(embedded, texts, layers, pool="mean", engine="tl", progress_bar=False)
    hf = sl.cache_activations(embedded, texts, layers, pool="mean", engine="hf", progress_bar=False)
    assert_close_impl(hf, tl)
