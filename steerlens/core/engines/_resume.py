"""Rows that resume one sequence's run from a column each: a row sees the sequence's keys and
values before its cut and runs only its own tokens from there.

Activation patching at position ``p`` changes nothing before ``p`` (attention is causal): a
patched row is the unpatched run up to its cut, then its own columns. ``resumed_logits`` runs
the whole sequence once (no hooks: its layers' hooks set aside), hands every row that run's
KV cache, masked after the row's cut, and runs the rows' own columns from decoder layer
``layer`` on (``resid``, the residual entering it; token ids from layer 0), under the hooks
on the layers. It composes a shared prefix's cache (``HFEngine.logits_after``) with a pass
that starts midway (``HFEngine.logits_from``), and runs where the probes found both exact.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens.core import decoding
from steerlens.core.decoding import _cache_kwarg

from ._prefill import bare_layers, only_layers

__all__ = ["resumed_logits", "whole_run"]


def whole_run(twin: Any, ids: Int[Tensor, " pos"], device: Any, **kw: Any) -> Any:
    """The KV cache of one unhooked pass over ``ids`` (the layers' hooks set aside; ``kw``:
    e.g. ``logits_to_keep``), for ``resumed_logits`` to hand its rows (it copies it)."""
    cache = decoding._new_cache()
    whole = ids.to(device)[None]
    with bare_layers(twin):  # the unpatched run: no hook of the rows acts on it
        twin(
            input_ids=whole,
            attention_mask=torch.ones_like(whole),
            use_cache=True,
            **{_cache_kwarg(type(twin)): cache},
            **kw,
        )
    return cache


def resumed_logits(
    twin: Any,
    run: Any,
    length: int,
    cuts: Sequence[int],
    input_ids: Int[Tensor, "batch width"],
    attention_mask: Tensor,
    *,
    layer: int = 0,
    resid: Float[Tensor, "batch width d_model"] | None = None,
    **kw: Any,
) -> Tensor:
    """Logits of each row's own columns (``input_ids[row]``, right-padded: the tokens from its
    cut on, e.g. ``ids[cut:]``) after ``ids[:cut]``, where ``run`` is ``whole_run``'s cache
    of the ``length`` tokens of ``ids`` (left as it is; ``kw``: e.g. ``logits_to_keep``).

    From ``layer`` > 0 the rows enter that decoder layer with ``resid`` (the same columns);
    the layers below are not run for them."""
    n, width = int(input_ids.shape[0]), int(input_ids.shape[1])
    if len(cuts) != n:
        raise ValueError(f"{len(cuts)} cuts for {n} rows")
    if any(not 0 < c <= length for c in cuts):
        raise ValueError(f"every cut must lie in (0, {length}], got {list(cuts)}")
    if (layer > 0) != (resid is not None):
        raise ValueError("a row run from layer > 0 needs its residual there (and only then)")
    device = input_ids.device
    cache = copy.deepcopy(run)
    # every row that run's keys and values
    cache.batch_select_indices(torch.zeros(n, dtype=torch.long, device=device))
    cut = torch.as_tensor(list(cuts), device=device)
    seen = (torch.arange(length, device=device)[None, :] < cut[:, None]).to(attention_mask.dtype)
    mask = torch.cat([seen, attention_mask], dim=1)
    position_ids = cut[:, None] + torch.arange(width, device=device)[None, :]
    args: dict[str, Any] = dict(
        attention_mask=mask,
        position_ids=position_ids,
        use_cache=True,
        **{_cache_kwarg(type(twin)): cache},
        **kw,
    )
    if layer == 0:
        return twin(input_ids=input_ids, **args).logits  # type: ignore[no-any-return]
    with only_layers(twin, layer):
        return twin(inputs_embeds=resid, **args).logits  # type: ignore[no-any-return]
