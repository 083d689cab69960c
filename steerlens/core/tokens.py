"""Prompt formatting and tokenisation shared by generation, caching and scoring.

steerlens tokenises with the HF tokenizer directly (not ``model.to_tokens``) so that both
model classes see the same ids: chat prompts through the model's own chat template with
``add_special_tokens=False`` (the template writes any BOS itself); raw text with the
model's own tokenizer and its special-token rule (not TransformerLens' BOS default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from steerlens.core.models import HookedModel, model_device, own_tokenizer

Messages: TypeAlias = Sequence[Mapping[str, str]]
Prompt: TypeAlias = str | Messages
"""A user prompt, or a whole conversation as chat messages ``[{"role", "content"}, ...]``."""

__all__ = [
    "Encoded",
    "Messages",
    "Prompt",
    "content_masks",
    "encode_prompts",
    "format_chat",
    "has_chat_template",
    "non_special_mask",
    "pad",
    "response_masks",
    "tokenize",
]


def _tokenizer(model: HookedModel) -> Any:
    tok = model.tokenizer
    if tok is None:
        raise ValueError("this model has no tokenizer; pass token ids instead of text")
    return tok


def _messages(prompt: Prompt, system: str | None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    if isinstance(prompt, str):
        return [*head, {"role": "user", "content": prompt}]
    if not isinstance(prompt, Sequence) or not prompt:
        raise TypeError("a prompt must be a string or a non-empty list of chat messages")
    msgs = []
    for i, m in enumerate(prompt):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise TypeError(f"message {i} must be a mapping with 'role' and 'content'")
        msgs.append({"role": str(m["role"]), "content": str(m["content"])})
    if msgs[-1]["role"] != "user":
        raise ValueError("a conversation prompt must end with a user message")
    return head + msgs if head and msgs[0]["role"] != "system" else msgs


def has_chat_template(model: HookedModel) -> bool:
    tok = model.tokenizer
    return tok is not None and bool(getattr(tok, "chat_template", None))


def resolve_chat(model: HookedModel, chat: bool | None) -> bool:
    """``chat=None`` -> whether the model has a chat template."""
    return has_chat_template(model) if chat is None else bool(chat)


def format_chat(
    model: HookedModel, prompts: Sequence[Prompt], *, system: str | None = None
) -> list[str]:
    """Wrap each prompt (a user message or a conversation) in the model's chat template."""
    tok = _tokenizer(model)
    if not getattr(tok, "chat_template", None):
        raise ValueError(
            f"{model.cfg.model_name} has no chat template; call with chat=False for raw text"
        )
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list, not one string")
    return [
        tok.apply_chat_template(_messages(p, system), tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


@dataclass(frozen=True)
class Encoded:
    """A padded batch: ids, attention mask (1 = real token) and each row's true length."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    lengths: list[int]


def pad_token_id(model: HookedModel) -> int:
    tok = _tokenizer(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token")
    return int(pad)


def tokenize(
    model: HookedModel, texts: Sequence[str], *, add_special_tokens: bool = True
) -> list[Int[Tensor, " pos"]]:
    """Token ids of each text (unpadded, on CPU), as the model's own tokenizer encodes it:
    with ``add_special_tokens`` its own rule (e.g. no BOS for SmolLM2's raw text, where
    TransformerLens' copy would prepend one), so ids agree with transformers and
    lm-evaluation-harness."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got {type(t).__name__}")
    tok = own_tokenizer(model) if add_special_tokens else _tokenizer(model)
    if tok is None:
        raise ValueError("this model has no tokenizer; pass token ids instead of text")
    enc = tok(list(texts), add_special_tokens=add_special_tokens)
    out = [torch.tensor(ids, dtype=torch.long) for ids in enc["input_ids"]]
    for i, ids in enumerate(out):
        if ids.numel() == 0:
            raise ValueError(f"text {i} tokenises to nothing")
    return out


def pad(
    model: HookedModel,
    sequences: Sequence[Int[Tensor, " pos"]],
    *,
    side: Literal["left", "right"] = "left",
) -> Encoded:
    """Pad token-id sequences into one batch on the model's device."""
    if len(sequences) == 0:
        raise ValueError("nothing to pad")
    pad_id = pad_token_id(model)
    width = max(int(s.numel()) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        n = int(s.numel())
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        ids[i, sl] = s
        mask[i, sl] = 1
    dev = model_device(model)
    return Encoded(ids.to(dev), mask.to(dev), [int(s.numel()) for s in sequences])


def encode_prompts(
    model: HookedModel,
    prompts: Sequence[Prompt],
    *,
    chat: bool | None = None,
    system: str | None = None,
    response_prefix: str | Sequence[str] | None = None,
) -> list[Int[Tensor, " pos"]]:
    """Token ids of prompts: through the chat template when ``chat``, else raw text.

    ``chat=None`` (the default everywhere in steerlens) means: the template when the model has
    one, so ``generate``, ``cache_activations`` and scoring format a prompt identically.

    ``response_prefix`` (one string, or one per prompt) is appended after the prompt as the
    start of the reply, so generation continues it.
    """
    if resolve_chat(model, chat):
        ids = tokenize(model, format_chat(model, prompts, system=system), add_special_tokens=False)
    else:
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("chat=False takes raw text prompts, not message lists")
        ids = tokenize(model, [str(p) for p in prompts])
    if response_prefix is None:
        return ids
    prefixes = (
        [response_prefix] * len(ids) if isinstance(response_prefix, str) else list(response_prefix)
    )
    if len(prefixes) != len(ids):
        raise ValueError(f"{len(prefixes)} response prefixes for {len(ids)} prompts")
    out = []
    for head, prefix in zip(ids, prefixes, strict=True):
        tail = tokenize(model, [prefix], add_special_tokens=False)[0] if prefix else head[:0]
        out.append(torch.cat([head, tail]))
    return out


def response_masks(
    model: HookedModel,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    *,
    chat: bool | None = None,
    system: str | None = None,
) -> tuple[list[Int[Tensor, " pos"]], list[Bool[Tensor, " pos"]]]:
    """Token ids of prompt + response, and per sequence a mask of the response's tokens.

    The prompt is tokenised exactly as ``generate`` tokenises it and the response's ids are
    appended, so the activations are those the model has while producing that response.
    Feed both to ``cache_activations(model, ids, masks=masks)``.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    heads = encode_prompts(model, prompts, chat=chat, system=system)
    tails = tokenize(model, responses, add_special_tokens=False) if responses else []
    ids, masks = [], []
    for head, tail in zip(heads, tails, strict=True):
        ids.append(torch.cat([head, tail]))
        masks.append(
            torch.cat(
                [torch.zeros_like(head, dtype=torch.bool), torch.ones_like(tail, dtype=torch.bool)]
            )
        )
    return ids, masks


def non_special_mask(model: HookedModel, ids: Int[Tensor, " pos"]) -> Bool[Tensor, " pos"]:
    """True for every token that is not a special token (BOS, EOS, chat markers, padding)."""
    special = torch.tensor(sorted(set(_tokenizer(model).all_special_ids)), dtype=torch.long)
    return ~torch.isin(ids, special)


def content_masks(
    model: HookedModel,
    prompts: Sequence[Prompt],
    ids: Sequence[Int[Tensor, " pos"]],
    *,
    chat: bool | None = None,
    system: str | None = None,
) -> list[Bool[Tensor, " pos"]]:
    """Per sequence, the tokens that belong to the text itself: no special tokens (BOS, EOS,
    chat markers) and, for chat-formatted prompts, none of the template's own tokens (role
    names, separators). ``ids`` are the sequences ``encode_prompts`` made from ``prompts``.

    Llama-3's BOS residual is orders of magnitude larger than the others and template tokens
    are the same in every prompt, so a mean over them is dominated by tokens that carry no
    content and do not cancel between texts of different lengths.
    """
    out = [non_special_mask(model, x) for x in ids]
    if not resolve_chat(model, chat):
        return out
    tok = _tokenizer(model)
    texts = format_chat(model, prompts, system=system)
    for i, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        if enc["input_ids"] != ids[i][: len(enc["input_ids"])].tolist():
            continue  # a response prefix or an unusual tokenizer: keep the special-token mask
        spans = []
        cursor = 0
        for m in _messages(prompt, system):
            content = m["content"].strip()  # templates may trim (Llama-3 does)
            start = text.find(content, cursor) if content else -1
            if start < 0:
                continue
            spans.append((start, start + len(content)))
            cursor = start + len(content)
        if not spans:
            continue  # the template rewrote the text: keep the special-token mask
        keep = torch.zeros(len(ids[i]), dtype=torch.bool)
        for j, (a, b) in enumerate(enc["offset_mapping"]):
            keep[j] = any(a < e and b > s0 for s0, e in spans)
        if len(ids[i]) > len(enc["input_ids"]):  # a response prefix after the prompt counts
            keep[len(enc["input_ids"]) :] = True
        if (keep & out[i]).any():
            out[i] = keep & out[i]
    return out
