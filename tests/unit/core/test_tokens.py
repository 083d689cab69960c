"""Token-for-token fidelity with the model's own tokenizer: raw text gets the special tokens
its tokenizer adds (not TransformerLens' BOS default); chat prompts are exactly
``apply_chat_template``'s ids."""

from __future__ import annotations

import pytest
from conftest import BACKENDS

import steerlens as sl
from steerlens.core._embedded import load_embedded_hf
from steerlens.core._tiny import tiny_tokenizer

TEXTS = ["The capital of France is", "Question: 2 + 2 = ?\nAnswer:"]
CONVERSATION = [
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Why?"},
]


def _check(model, own) -> None:
    for text in TEXTS:
        assert sl.tokens.tokenize(model, [text])[0].tolist() == own(text)["input_ids"]
    want = own.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    got = sl.encode_prompts(model, [CONVERSATION], chat=True)[0].tolist()
    assert got == list(want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_ids_are_its_own_tokenizers(backend):
    _check(sl.load_model("tiny-random", backend=backend), tiny_tokenizer())


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_embedded_ids_are_its_own_tokenizers(backend, embedded):
    _, own = load_embedded_hf()
    model = embedded if backend == "bridge" else sl.load_model(backend="hooked")
    _check(model, own)
    # the case TransformerLens gets wrong: its copy prepends BOS to SmolLM2's raw text
    assert model.tokenizer(TEXTS[0])["input_ids"][0] == 1
    assert sl.tokens.tokenize(model, TEXTS[:1])[0][0].item() != 1
