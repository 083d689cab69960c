"""Single-pass scoring: log-probabilities of continuations given their prompts.

One forward pass over prompt + continuation (right-padded, through ``map_batches``). The
batch's per-row prompt lengths are handed to the steering hooks, so a gate means the same
here as in generation: ``"prefill"`` steers the prompt positions, ``FirstK(k)`` the prompt
and the first ``k`` continuation tokens, ``"generated"`` the continuation only. Scoring the
tokens ``generate`` produced therefore gives the log-probabilities it sampled them from
(tested). Perplexity builds on it; runs under ``torch.inference_mode`` (no gradients).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.core.batching import Batch, condition_masks
from steerlens.core.engines import Engine, PassEngineName
from steerlens.core.models import HookedModel
from steerlens.core.tokens import Prompt, encode_prompts, tokenize
from steerlens.run.passes import forward_batches

__all__ = ["continuation_logprobs", "ids_logprobs"]


def continuation_logprobs(
    model: HookedModel,
    prompts: Sequence[Prompt],
    continuations: Sequence[str] | Sequence[Tensor],
    *,
    chat: bool | None = None,
    system: str | None = None,
    batch_size: int = 16,
    progress_bar: bool = False,
    engine: PassEngineName = "auto",
) -> list[Float[Tensor, " tok"]]:
    """Per continuation, ``log p(token_t | prompt, tokens_<t)`` of each of its tokens (CPU, fp32).

    Args:
        prompts: user prompts or conversations, formatted as ``generate`` formats them.
        continuations: response texts (tokenised without special tokens) or token ids
            (e.g. ``Generation.tokens``). An empty one gives an empty tensor.
        chat: the chat template on/off; by default on when the model has one (as in
            ``generate``).

    Runs under whatever hooks are active (an open ``sl.steering()`` block steers it; its
    gates see where each prompt ends). ``engine`` as in ``generate`` (``"auto"``: the fast
    path when no other hook is active).
    """
    if isinstance(prompts, str) or isinstance(continuations, str):
        raise TypeError("prompts and continuations must be lists, not one string")
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    heads = encode_prompts(model, prompts, chat=chat, system=system) if prompts else []
    tails: list[Tensor] = []
    for i, c in enumerate(continuations):
        if isinstance(c, Tensor):
            if c.ndim != 1:
                raise ValueError(f"continuation {i}: token ids must be 1-D")
            tails.append(c.long().cpu())
        elif not c:
            tails.append(torch.zeros(0, dtype=torch.long))
        else:
            tails.append(tokenize(model, [str(c)], add_special_tokens=False)[0])
    # an open block's Condition pools each prompt's content tokens, as cache_activations does
    masks = condition_masks(model, heads, prompts, chat=chat, system=system)
    return ids_logprobs(
        model,
        heads,
        tails,
        batch_size=batch_size,
        progress_bar=progress_bar,
        engine=engine,
        prompt_masks=masks,
    )


def ids_logprobs(
    model: HookedModel,
    prompt_ids: Sequence[Tensor],
    continuation_ids: Sequence[Tensor],
    *,
    batch_size: int = 16,
    max_tokens: int | None = 0,
    progress_bar: bool = False,
    engine: PassEngineName = "auto",
    prompt_masks: Sequence[Tensor] | None = None,
) -> list[Float[Tensor, " tok"]]:
    """``continuation_logprobs`` on token ids: per row, ``log p(c_t | prompt_ids, c_<t)``.

    For callers that build contexts at the token level (e.g. a history with one token
    removed). ``engine`` as in ``generate``: ``"auto"`` runs on the fast path when no other
    hook is active (open ``sl.steering()`` blocks are carried onto it). Batches hold at most
    ``batch_size`` rows and ``max_tokens`` padded tokens (0: ``token_budget(model)``; None:
    rows only). ``prompt_masks``: per prompt, the tokens an open block's ``Condition``
    pools (default: its non-special tokens, ``condition_masks``).
    """
    if len(prompt_ids) != len(continuation_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(continuation_ids)} continuations")
    if not prompt_ids:
        return []
    if any(int(h.numel()) == 0 for h in prompt_ids):
        raise ValueError("every prompt needs at least one token (the first target's context)")
    heads = [h.long().cpu() for h in prompt_ids]
    tails = [t.long().cpu() for t in continuation_ids]
    # Every input goes through the batch, an empty continuation too (its prompt alone), so
    # per-row values of an open steering() block index the caller's inputs one to one.
    ids = [torch.cat([h, t]) for h, t in zip(heads, tails, strict=True)]
    prompt_lengths = [int(h.numel()) for h in heads]
    if prompt_masks is None:
        prompt_masks = condition_masks(model, heads)
    pool = None
    if prompt_masks is not None:
        if len(prompt_masks) != len(heads):
            raise ValueError(f"{len(prompt_masks)} prompt masks for {len(heads)} prompts")
        pool = [
            torch.cat([m.bool().cpu(), torch.zeros(len(t), dtype=torch.bool)])
            for m, t in zip(prompt_masks, tails, strict=True)
        ]

    def run(eng: Engine, batch: Batch) -> list[Tensor]:
        enc = batch.enc
        spans = [
            range(prompt_lengths[j] - 1, enc.lengths[row] - 1) for row, j in enumerate(batch.rows)
        ]
        picked = eng.logits_at(enc.input_ids, enc.attention_mask, spans)
        rows = []
        for row, j in enumerate(batch.rows):
            p, n_tok = prompt_lengths[j], enc.lengths[row]
            target = enc.input_ids[row, p:n_tok]
            logp = picked[row].float().log_softmax(-1)
            rows.append(logp.gather(-1, target[:, None])[:, 0].cpu())
        return rows

    return forward_batches(
        model,
        ids,
        run,
        engine=engine,
        batch_size=batch_size,
        max_tokens=max_tokens,
        prompt_lengths=prompt_lengths,
        pool_masks=pool,
        progress_bar=progress_bar,
        description="score",
    )
