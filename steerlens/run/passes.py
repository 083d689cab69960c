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
from steerlens.core.hook_names import hook_layer, resid_pre
from steerlens.core.hooks import HookPair
from steerlens.core.models import HookedModel

__all__ = ["forward_batches", "reading", "start_layer"]

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


def start_layer(eng: Engine, pairs: Sequence[HookPair]) -> int | None:
    """The lowest block any of ``pairs`` acts on, where ``eng`` can start a pass there (a
    steered pass then reuses an unsteered pass's lower blocks: ``Engine.forward_from``);
    else None."""
    layers = [hook_layer(str(name)) for name, _ in pairs]
    if not layers or None in layers:
        return None
    start = min(x for x in layers if x is not None)
    return start if eng.can_start_at(start) else None


def reading(layer: int) -> tuple[list[HookPair], list[Tensor]]:
    """A hook that keeps the residual entering block ``layer`` (``hook_resid_pre``), and the
    list it appends each pass's value to."""
    seen: list[Tensor] = []

    def grab(resid: Tensor, *, hook: object) -> None:
        seen.append(resid.detach())

    return [(resid_pre(layer), grab)], seen
