"""The one batching loop: sort by length, pad, run, restore input order.

Every steerlens function that runs the model (``generate``, ``cache_activations``, the
scoring functions) goes through ``map_batches``. While a batch runs it sets the row context
(``steerlens.core.hooks.batch_rows``), so per-row hooks — a per-row α or vector given to
``generate`` *or* to an enclosing ``sl.steering()`` block — index their values by the
batch's input rows and each value follows its prompt, whatever order the batches run in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from jaxtyping import Int
from torch import Tensor

from steerlens.core._progress import progress
from steerlens.core.hooks import HookPair, batch_rows, conditions_open
from steerlens.core.models import HookedModel
from steerlens.core.tokens import Encoded, Prompt, content_masks, non_special_mask, pad

T = TypeVar("T")

__all__ = ["Batch", "condition_masks", "map_batches", "padded_tokens", "token_budget"]


@dataclass(frozen=True)
class Batch:
    """One padded batch: ``rows[i]`` is the input index of batch row ``i``."""

    rows: list[int]
    enc: Encoded
    prompt_lengths: list[int] | None
    """Per batch row, the column where its prompt ends (None outside scoring)."""


def map_batches(
    model: HookedModel,
    ids: Sequence[Int[Tensor, " pos"]],
    fn: Callable[[Batch], Sequence[T]],
    *,
    batch_size: int,
    side: Literal["left", "right"],
    sort: bool = True,
    prompt_lengths: Sequence[int] | None = None,
    max_tokens: int | None = None,
    pool_masks: Sequence[Tensor] | None = None,
    progress_bar: bool = False,
    description: str = "run",
) -> list[T]:
    """Run ``fn`` on padded batches of ``ids`` and return its per-row results in input order.

    Args:
        fn: takes a ``Batch`` and returns one result per batch row, in batch order.
        side: ``"left"`` for generation (prompts end together), ``"right"`` for scoring and
            caching (every token keeps its one-at-a-time position).
        sort: longest first, which wastes the least padding; ``False`` keeps input order
            (e.g. an on-disk store written batch by batch).
        prompt_lengths: per input, the prompt part of a prompt + response sequence
            (right-padded scoring); gates then steer the response as generated tokens.
        max_tokens: a token budget per batch (rows x padded length), so long and short
            inputs pack: a batch of long prompts holds fewer rows, one of short prompts up to
            ``batch_size``. A single input longer than the budget runs alone. ``None``: rows
            only.
        pool_masks: per input, a bool mask over its tokens of the prompt tokens a
            ``Condition`` averages (its content tokens); default: every real prompt token.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(ids)
    if prompt_lengths is not None and len(prompt_lengths) != n:
        raise ValueError(f"{len(prompt_lengths)} prompt lengths for {n} inputs")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if pool_masks is not None and len(pool_masks) != n:
        raise ValueError(f"{len(pool_masks)} pool masks for {n} inputs")
    order = sorted(range(n), key=lambda i: -int(ids[i].numel())) if sort else list(range(n))
    chunks = _chunks(order, [int(x.numel()) for x in ids], batch_size, max_tokens)
    out: list[T | None] = [None] * n
    filled = [False] * n
    for rows in progress(chunks, total=len(chunks), description=description, enabled=progress_bar):
        enc = pad(model, [ids[i] for i in rows], side=side)
        lengths = None
        if prompt_lengths is not None:  # where each row's prompt ends, in batch columns
            width = enc.input_ids.shape[1]
            shift = [width - n_tok if side == "left" else 0 for n_tok in enc.lengths]
            lengths = [int(prompt_lengths[i]) + s for i, s in zip(rows, shift, strict=True)]
        last, pooled = _prompt_positions(enc, side, lengths, rows, pool_masks)
        with batch_rows(rows, n, lengths, last=last, pool_masks=pooled):
            results = fn(Batch(rows, enc, lengths))
        if len(results) != len(rows):
            raise RuntimeError(
                f"batch function returned {len(results)} results for {len(rows)} rows"
            )
        for i, r in zip(rows, results, strict=True):
            out[i] = r
            filled[i] = True
    assert all(filled)
    return out  # type: ignore[return-value]


def condition_masks(
    model: HookedModel,
    ids: Sequence[Int[Tensor, " pos"]],
    prompts: Sequence[Prompt] | None = None,
    *,
    pairs: Sequence[HookPair] = (),
    chat: bool | None = None,
    system: str | None = None,
) -> list[Tensor] | None:
    """Per input, the tokens a ``Condition`` averages (``map_batches(pool_masks=)``), as
    ``cache_activations`` pools them: the content tokens of ``prompts`` (the texts ``ids``
    were encoded from), else the non-special tokens; None when no condition acts on the call
    (in ``pairs`` or an open ``steering()`` block), so nothing is computed."""
    if not ids or not conditions_open(model, pairs):
        return None
    if prompts is None:
        return [non_special_mask(model, x) for x in ids]
    return content_masks(model, prompts, ids, chat=chat, system=system)


def _prompt_positions(
    enc: Encoded,
    side: str,
    prompt_ends: list[int] | None,
    rows: list[int],
    pool_masks: Sequence[Tensor] | None,
) -> tuple[Tensor, Tensor]:
    """Per batch row, the column of its last prompt token and ``[batch, width]`` the prompt
    tokens a condition pools (``RowContext.last`` / ``pool_masks``), in batch columns."""
    n_rows, width = enc.input_ids.shape
    real = enc.attention_mask.bool().cpu()
    if prompt_ends is not None:
        last = torch.tensor(prompt_ends) - 1
    elif side == "left":
        last = torch.full((n_rows,), width - 1)
    else:
        last = torch.tensor(enc.lengths) - 1
    pool = real & (torch.arange(width).view(1, -1) <= last.view(-1, 1))
    if pool_masks is not None:
        given = torch.zeros(n_rows, width, dtype=torch.bool)
        for row, i in enumerate(rows):
            m = pool_masks[i].bool().cpu()
            start = width - enc.lengths[row] if side == "left" else 0
            given[row, start : start + len(m)] = m
        chosen = pool & given
        # a prompt of special tokens only: pool what there is (as cache_activations does)
        pool = torch.where(chosen.any(dim=1, keepdim=True), chosen, pool)
    return last, pool


def _chunks(
    order: list[int], lengths: list[int], batch_size: int, max_tokens: int | None
) -> list[list[int]]:
    """Consecutive runs of ``order``: at most ``batch_size`` rows, and (with ``max_tokens``)
    rows x the run's longest input within the budget."""
    if max_tokens is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    chunks: list[list[int]] = []
    cur: list[int] = []
    width = 0
    for i in order:
        w = max(width, lengths[i])
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * w > max_tokens):
            chunks.append(cur)
            cur, w = [], lengths[i]
        cur.append(i)
        width = w
    if cur:
        chunks.append(cur)
    return chunks


def padded_tokens(lengths: Sequence[int], batch_size: int, max_tokens: int | None) -> int:
    """Tokens, padding included, of the batches ``map_batches`` makes of inputs of these
    lengths (sorted, longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    chunks = _chunks(order, list(lengths), batch_size, max_tokens)
    return sum(len(c) * max(lengths[i] for i in c) for c in chunks)


def token_budget(model: HookedModel) -> int:
    """The default token budget of a prefill batch (rows x padded length): prefill-heavy work
    (scoring, MMLU, caching) packs long and short inputs by it. On a CPU, small batches keep
    the matrix multiplies in cache (1024 measured fastest on the embedded model, 2 cores); on
    a GPU, large ones fill the device."""
    device = getattr(model.cfg, "device", None)
    return 16384 if device is not None and str(device).startswith("cuda") else 1024
