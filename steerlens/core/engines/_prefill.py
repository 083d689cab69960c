"""Generation's prompt pass, run once per distinct prompt below the lowest hooked layer.

A sweep repeats each prompt once per cell (method x α x gate) in one decoding batch, and no
hook acts on the decoder layers below the lowest one a steering hook sits at: those layers
compute the same keys, values and residual for every copy of a prompt. ``shared_prefill``
runs them once per distinct row (its tokens and mask), hands each row its copy's cache
entries and residual, and runs the layers from the lowest hooked one on over every row, where
the hooks see the whole batch as in a plain pass; the decoding steps then continue one
cache. ``prefill_exact`` checks, once per model and layer, that this gives a plain prompt
pass's logits and next step; where it does not (or raises), prompts run whole.

Both swap module state for the length of a call (the decoder's layer list; a probe's layer
hooks): as for ``Engine.forward_from``, callers sharing a model across threads hold a lock.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens.core import decoding
from steerlens.core.decoding import _cache_kwarg, hf_steps

from ._binding import decoder_layers

__all__ = ["bare_layers", "only_layers", "prefill_exact", "shared_prefill"]

logger = logging.getLogger(__name__)
_EXACT: weakref.WeakKeyDictionary[Any, dict[int, bool]] = weakref.WeakKeyDictionary()


@contextmanager
def only_layers(twin: Any, start: int, stop: int | None = None) -> Iterator[None]:
    """``twin``'s decoder runs its layers ``[start:stop]`` only, until exit (after an error
    too); the layer modules, their hooks and their ``layer_idx`` (cache slots) stay their
    own, but a decoder that looks up per-layer settings by loop position (``layer_types``)
    reads the wrong ones: callers refuse such models."""
    inner = twin.model
    layers = inner.layers
    inner.layers = torch.nn.ModuleList(list(layers)[start:stop])
    try:
        yield
    finally:
        inner.layers = layers


@contextmanager
def bare_layers(twin: Any) -> Iterator[None]:
    """The decoder layers' hooks set aside until exit (a probe's passes see none of them)."""
    layers = list(decoder_layers(twin))
    saved = [(m._forward_hooks, m._forward_pre_hooks) for m in layers]
    try:
        for m in layers:
            m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
        yield
    finally:
        for m, (fwd, pre) in zip(layers, saved, strict=True):
            m._forward_hooks, m._forward_pre_hooks = fwd, pre


def shared_prefill(
    twin: Any,
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Tensor,
    position_ids: Tensor,
    *,
    below: int,
) -> tuple[Float[Tensor, "batch vocab"], Any] | None:
    """The prompt pass of a (left-padded) batch whose layers ``[0, below)`` no hook acts on:
    its last position's logits and its filled KV cache, those layers run once per distinct
    row; None where every row is distinct (a plain pass costs no more)."""
    both = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1)
    distinct, owner = torch.unique(both, dim=0, return_inverse=True)
    rows = both.shape[0]
    if distinct.shape[0] == rows:
        return None
    first = torch.full((distinct.shape[0],), rows, device=owner.device).scatter_reduce(
        0, owner, torch.arange(rows, device=owner.device), reduce="amin"
    )  # each distinct row's first copy
    kwarg = _cache_kwarg(type(twin))
    lower, upper = decoding._new_cache(), decoding._new_cache()
    grabbed: list[Tensor] = []

    def grab(module: Any, args: Any, output: Any) -> None:
        grabbed.append(output[0] if isinstance(output, tuple) else output)

    handle = decoder_layers(twin)[below - 1].register_forward_hook(grab)
    try:
        with only_layers(twin, 0, below):
            twin.model(
                input_ids=input_ids[first],
                attention_mask=attention_mask[first],
                position_ids=position_ids[first],
                use_cache=True,
                **{kwarg: lower},
            )
    finally:
        handle.remove()
    if len(lower.layers) != below:
        raise RuntimeError(f"the lower pass filled {len(lower.layers)} cache layers, not {below}")
    lower.batch_select_indices(owner)  # each row its prompt's keys and values
    with only_layers(twin, below):
        out = twin(
            inputs_embeds=grabbed[-1][owner],
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{kwarg: upper},
        )
    # the upper pass filled its layers' slots and left placeholders below them
    upper.layers[:below] = lower.layers
    return out.logits[:, -1], upper


def prefill_exact(twin: Any, below: int) -> bool:
    """Whether ``shared_prefill`` at ``below`` gives a plain prompt pass's logits and the next
    decoding step's, checked once per model and layer (the layers' hooks set aside) on three
    left-padded rows, two of them alike. A model whose forward does not take a residual as
    its input embeddings, or whose cache cannot be spliced by layer, fails it; one whose
    layers differ in kind (``layer_types``: sliding-window and full attention, say) is
    refused without a probe, since its decoder picks each layer's mask by the layer's place
    in the list it runs (a short probe would not reach the window)."""
    seen = _EXACT.setdefault(twin, {})
    if below in seen:
        return seen[below]
    kinds = set(getattr(twin.config, "layer_types", None) or ["one"])
    ok = 0 < below < len(decoder_layers(twin)) and len(kinds) == 1
    err = float("nan")
    if ok:
        vocab = int(twin.config.vocab_size)
        device = next(twin.parameters()).device
        toks = torch.arange(1, 13, device=device) * 7919 % max(vocab - 1, 1)
        ids = torch.stack([toks[:6], toks[6:], toks[:6]])
        mask = torch.ones_like(ids)
        mask[1, :2] = 0  # a shorter row, left-padded
        try:
            with torch.inference_mode(), bare_layers(twin):
                plain = hf_steps(twin, ids, mask)
                shared = hf_steps(
                    twin, ids, mask, prefill=functools.partial(shared_prefill, twin, below=below)
                )
                first, got_first = plain(None), shared(None)
                nxt = first.argmax(-1)
                ref = torch.cat([first, plain(nxt)]).float()
                got = torch.cat([got_first, shared(nxt)]).float()
            err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        except Exception as e:  # a model that cannot share its prompt pass runs it whole
            logger.info("shared prompt passes off for %s: %s", type(twin).__name__, e)
        tol = 1e-3 if next(twin.parameters()).dtype in (torch.float32, torch.float64) else 1e-2
        ok = err < tol  # NaN (no probe) fails
        if not ok:
            logger.info(
                "shared prompt passes off for %s at layer %d (relative error %.3g)",
                type(twin).__name__,
                below,
                err,
            )
    seen[below] = ok
    return ok
