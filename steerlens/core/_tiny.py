"""The ``"tiny-random"`` model: a seeded, random-init Llama-shaped model for unit tests.

It has a byte-level tokenizer (256 byte symbols plus four special tokens) and a ChatML-style
chat template, so every code path that the embedded model uses (chat formatting, padding,
EOS stopping) runs on it too, in well under a second and with no files.
"""

from __future__ import annotations

from typing import Any

import torch

TINY_NAME = "tiny-random"
_SPECIALS = ("<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>")
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer() -> Any:
    """A byte-level tokenizer (vocab 260) that prepends ``<|bos|>`` like Llama's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(_SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = _CHAT_TEMPLATE
    # TransformerLens re-loads a tokenizer by name to force BOS unless it already adds one.
    tok.init_kwargs["name_or_path"] = TINY_NAME
    tok.init_kwargs["add_bos_token"] = True
    return tok


def tiny_hf_model(
    seed: int = 0, n_layers: int = 4, d_model: int = 64, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """A seeded random ``LlamaForCausalLM`` and its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        # A larger init than HF's 0.02 so that random logits are not nearly flat (greedy
        # decoding would otherwise hinge on float noise in equality tests).
        for p in model.parameters():
            if p.ndim == 2:
                torch.nn.init.normal_(p, std=0.3)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.to(dtype).eval(), tok  # type: ignore[arg-type]
