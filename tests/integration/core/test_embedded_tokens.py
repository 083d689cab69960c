"""Token-for-token fidelity with the model's own tokenizer: raw text gets the special tokens
its tokenizer adds (not TransformerLens' BOS default); chat prompts are exactly
``apply_chat_template``'s ids."""

from __future__ import annotations

import pytest
from conftest import BACKENDS
from helpers import TEXTS, check_own_tokenization

import steerlens as sl
from steerlens.core._embedded import load_embedded_hf


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_embedded_ids_are_its_own_tokenizers(backend, embedded):
    _, own = load_embedded_hf()
    model = embedded if backend == "bridge" else sl.load_model(backend="hooked")
    check_own_tokenization(model, own)
    # the case TransformerLens gets wrong: its copy prepends BOS to SmolLM2's raw text
    assert model.tokenizer(TEXTS[0])["input_ids"][0] == 1
    assert sl.tokens.tokenize(model, TEXTS[:1])[0][0].item() != 1
