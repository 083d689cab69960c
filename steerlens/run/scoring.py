"""Single-pass scoring: log-probabilities of continuations given their prompts.

A forward pass over prompt + continuation (right-padded, through ``map_batches``). The
batch's per-row prompt lengths are handed to the steering hooks, so a gate means the same
here as in generation: ``"prefill"`` steers the prompt positions, ``FirstK(k)`` the prompt
and the first ``k`` continuation tokens, ``"generated"`` the continuation only. Scoring the
tokens ``generate`` produced therefore gives the log-probabilities it sampled them from
(tested). Perplexity builds on it; runs under ``torch.inference_mode`` (no gradients).
With no hook acting on the model, rows that begin alike may instead run their shared prefix
once and continue its KV cache (``steerlens.run.prefix``): the same numbers, to float
rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.core.batching import Batch, condition_masks
from steerlens.core.engines import Engine, PassEngineName, resolve_engine
from steerlens.core.hooks import active_steering
from steerlens.core.models import HookedModel
from steerlens.core.tokens import Prompt, encode_prompts, tokenize
from steerlens.run.passes import forward_batches
from steerlens.run.prefix import (
    Continued,
    PrefixGroup,
    map_continued,
    shared_plan,
    split_rows,
)
from steerlens.run.repeats import first_copies, merges_rows, spread

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

    With no hook acting on the model, a row repeated exactly (prompt and continuation) runs
    once, every copy getting its own tensor; rows that share at least ``MIN_SHARED`` leading
    tokens run them once and continue their KV cache, where the engine can
    (``Engine.can_share_prefix``), in the groups ``shared_plan`` picks (those
    ``prefix_groups`` finds, or one group at the beginning every row shares) where that
    computes fewer tokens than whole passes: the same numbers, to float rounding.
    """
    if len(prompt_ids) != len(continuation_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(continuation_ids)} continuations")
    if not prompt_ids:
        return []
    if any(int(h.numel()) == 0 for h in prompt_ids):
        raise ValueError("every prompt needs at least one token (the first target's context)")
    if prompt_masks is not None and len(prompt_masks) != len(prompt_ids):
        raise ValueError(f"{len(prompt_masks)} prompt masks for {len(prompt_ids)} prompts")
    heads = [h.long().cpu() for h in prompt_ids]
    tails = [t.long().cpu() for t in continuation_ids]
    eng = resolve_engine(model, "hook_resid_post", engine)
    # With nothing acting on the model, rows that begin alike (a user's history before each
    # prompt, one prompt under several continuations) run their common beginning once.
    quiet = len(heads) > 1 and not active_steering(model) and not eng.hooked()
    if quiet and merges_rows(model, eng):  # a repeated row (two cells' same reply): once
        owner = first_copies(heads, tails)
        if len(set(owner)) < len(owner):
            return spread(
                owner,
                lambda rows: ids_logprobs(
                    model,
                    [heads[i] for i in rows],
                    [tails[i] for i in rows],
                    batch_size=batch_size,
                    max_tokens=max_tokens,
                    progress_bar=progress_bar,
                    engine=engine,
                    prompt_masks=None if prompt_masks is None else [prompt_masks[i] for i in rows],
                ),
            )
    share = quiet and eng.can_share_prefix()
    whole_ids = [torch.cat([h, t]) for h, t in zip(heads, tails, strict=True)] if share else []
    groups = shared_plan(model, heads, whole_ids, batch_size, max_tokens) if share else []
    grouped, rest = split_rows(len(heads), groups)
    out: list[Tensor | None] = [None] * len(heads)
    if rest:
        whole = _whole_logprobs(
            model, eng, heads, tails, rest, batch_size, max_tokens, progress_bar, prompt_masks
        )
        for i, lp in zip(rest, whole, strict=True):
            out[i] = lp
    if grouped:
        shared = _shared_logprobs(
            model, eng, heads, tails, whole_ids, groups, batch_size, max_tokens, progress_bar
        )
        for i, lp in zip(grouped, shared, strict=True):
            out[i] = lp
    return out  # type: ignore[return-value]


def _shared_logprobs(
    model: HookedModel,
    eng: Engine,
    heads: list[Tensor],
    tails: list[Tensor],
    ids: list[Tensor],
    groups: list[PrefixGroup],
    batch_size: int,
    max_tokens: int | None,
    progress_bar: bool,
) -> list[Tensor]:
    """``ids_logprobs`` of the grouped rows (``split_rows`` order; ``ids``: each row's prompt
    and continuation): each group's prefix runs once a batch, its rows continue that prefix's
    cache (``map_continued``)."""

    def run(eng: Engine, c: Continued) -> list[Tensor]:
        spans = []
        for i, start in zip(c.rows, c.starts, strict=True):
            first = int(heads[i].numel()) - 1 - start
            spans.append(range(first, first + int(tails[i].numel())))
        picked = eng.logits_after(
            c.prefix.input_ids,
            c.prefix.attention_mask,
            c.owner,
            c.batch.enc.input_ids,
            c.batch.enc.attention_mask,
            spans,
        )
        return [_target_logprobs(picked[r], tails[i]) for r, i in enumerate(c.rows)]

    return map_continued(
        model,
        eng,
        ids,
        groups,
        run,
        batch_size=batch_size,
        max_tokens=max_tokens,
        progress_bar=progress_bar,
        description="score",
    )


def _target_logprobs(logits: Tensor, target: Tensor) -> Tensor:
    """``log p(target_t)`` from the logits that predict each target token (CPU, fp32)."""
    logp = logits.float().log_softmax(-1)
    return logp.gather(-1, target.to(logp.device)[:, None])[:, 0].cpu()


def _whole_logprobs(
    model: HookedModel,
    eng: Engine,
    heads: list[Tensor],
    tails: list[Tensor],
    rows: list[int],
    batch_size: int,
    max_tokens: int | None,
    progress_bar: bool,
    prompt_masks: Sequence[Tensor] | None,
) -> list[Tensor]:
    """``ids_logprobs`` of ``rows``, each prompt + continuation as one pass (under the hooks
    open on the model)."""
    sel_heads = [heads[i] for i in rows]
    # Every input goes through the batch, an empty continuation too (its prompt alone), so
    # per-row values of an open steering() block index the caller's inputs one to one.
    ids = [torch.cat([heads[i], tails[i]]) for i in rows]
    prompt_lengths = [int(h.numel()) for h in sel_heads]
    if prompt_masks is None:
        masks = condition_masks(model, sel_heads)
    else:
        masks = [prompt_masks[i] for i in rows]
    pool = None
    if masks is not None:
        pool = [
            torch.cat([m.bool().cpu(), torch.zeros(len(tails[i]), dtype=torch.bool)])
            for m, i in zip(masks, rows, strict=True)
        ]

    def run(eng: Engine, batch: Batch) -> list[Tensor]:
        enc = batch.enc
        spans = [
            range(prompt_lengths[j] - 1, enc.lengths[row] - 1) for row, j in enumerate(batch.rows)
        ]
        picked = eng.logits_at(enc.input_ids, enc.attention_mask, spans)
        return [_target_logprobs(picked[row], tails[rows[j]]) for row, j in enumerate(batch.rows)]

    return forward_batches(
        model,
        ids,
        run,
        engine=eng,
        batch_size=batch_size,
        max_tokens=max_tokens,
        prompt_lengths=prompt_lengths,
        pool_masks=pool,
        progress_bar=progress_bar,
        description="score",
    )
