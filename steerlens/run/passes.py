"""One right-padded, token-budgeted pass over token-id rows on an engine: the set-up shared by
scoring, MMLU and activation caching (resolve the engine, register the open ``steering()``
blocks on it, no gradients, right padding so every token keeps its one-at-a-time position)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from jaxtyping import Int
from torch import Tensor

from steerlens.core.batching import Batch, map_batches, token_budget
from steerlens.core.engines import Engine, PassEngineName, resolve_engine
from steerlens.core.models import HookedModel

__all__ = ["forward_batches"]

T = TypeVar("T")


def forward_batches(
    model: HookedModel,
    ids: Sequence[Int[Tensor, " pos"]],
    fn: Callable[[Engine, Batch], Sequence[T]],
    *,
    engine: PassEngineName | Engine = "auto",
    hook: str = "hook_resid_post",
    batch_size: int = 16,
    max_tokens: int | None = 0,
    prompt_lengths: Sequence[int] | None = None,
    pool_masks: Sequence[Tensor] | None = None,
    sort: bool = True,
    progress_bar: bool = False,
    description: str = "run",
) -> list[T]:
    """``fn(engine, batch)`` on right-padded batches of ``ids``, per-row results in input order.

    Args:
        engine: an engine name (resolved here for ``hook``) or an ``Engine`` already resolved
            (a caller that validates before writing anything).
        max_tokens: a token budget per batch (0: ``token_budget(model)``, the device's
            default; None: ``batch_size`` rows only).
        prompt_lengths / pool_masks / sort / progress_bar / description: as in
            ``map_batches``.
    """
    eng = engine if isinstance(engine, Engine) else resolve_engine(model, hook, engine)

    def run(batch: Batch) -> Sequence[T]:
        return fn(eng, batch)

    with eng.hooks([]), torch.inference_mode():
        return map_batches(
            model,
            ids,
            run,
            batch_size=batch_size,
            side="right",
            sort=sort,
            prompt_lengths=prompt_lengths,
            pool_masks=pool_masks,
            max_tokens=token_budget(model) if max_tokens == 0 else max_tokens,
            progress_bar=progress_bar,
            description=description,
        )
