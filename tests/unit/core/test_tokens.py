"""Token-for-token fidelity with the model's own tokenizer: raw text gets the special tokens
its tokenizer adds (not TransformerLens' BOS default); chat prompts are exactly
``apply_chat_template``'s ids."""

from __future__ import annotations

import pytest
from conftest import BACKENDS
from helpers import check_own_tokenization

import steerlens as sl
from steerlens.core._tiny import tiny_tokenizer


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_ids_are_its_own_tokenizers(backend):
    check_own_tokenization(sl.load_model("tiny-random", backend=backend), tiny_tokenizer())
