"""Activation caching: batched, padding-correct, pooled, stopping at the last needed layer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from steerlens.core.batching import Batch, condition_masks
from steerlens.core.engines import Engine, PassEngineName, resolve_engine
from steerlens.core.hook_names import hook_name
from steerlens.core.models import HookedModel, default_layers
from steerlens.core.tokens import content_masks, encode_prompts, non_special_mask, resolve_chat
from steerlens.run.passes import forward_batches
from steerlens.run.prefix import (
    Continued,
    PrefixGroup,
    map_continued,
    shared_plan,
    split_rows,
)
from steerlens.run.repeats import first_copies, merges_rows
from steerlens.run.store import ActivationStore

Pool = Literal["last", "mean", "none"]

__all__ = ["cache_activations"]


def _as_ids(
    model: HookedModel, inputs: Sequence[str] | Sequence[Tensor], chat: bool
) -> tuple[list[Int[Tensor, " pos"]], bool]:
    """Token ids of the inputs, and whether they are texts."""
    if isinstance(inputs, str):
        raise TypeError("inputs must be a list of texts or token-id tensors, not one string")
    if len(inputs) == 0:
        raise ValueError("no inputs to cache")
    if all(isinstance(x, str) for x in inputs):
        texts = [str(x) for x in inputs]
        return encode_prompts(model, texts, chat=chat), True
    if all(isinstance(x, Tensor) for x in inputs):
        out = []
        for i, x in enumerate(inputs):
            assert isinstance(x, Tensor)
            if (
                x.ndim != 1
                or x.numel() == 0
                or x.dtype not in (torch.long, torch.int32, torch.int64)
            ):
                raise ValueError(f"input {i}: token ids must be a non-empty 1-D integer tensor")
            out.append(x.long().cpu())
        return out, False
    raise TypeError("inputs must be all strings or all token-id tensors")


def cache_activations(
    model: HookedModel,
    inputs: Sequence[str] | Sequence[Int[Tensor, " pos"]],
    layers: Sequence[int] | None = None,
    *,
    hook: str = "hook_resid_post",
    pool: Pool = "last",
    masks: Sequence[Bool[Tensor, " pos"]] | None = None,
    chat: bool | None = None,
    exclude_template: bool = True,
    batch_size: int = 16,
    max_tokens: int | None = 0,
    dtype: torch.dtype = torch.float32,
    store: str | Path | None = None,
    progress_bar: bool = True,
    engine: PassEngineName = "auto",
) -> Float[Tensor, "n layer d_model"] | list[Float[Tensor, "layer pos d_model"]] | ActivationStore:
    """Residual-stream activations of each input at ``layers``.

    Args:
        inputs: texts or token-id tensors (e.g. from ``response_masks``).
        layers: defaults to ``default_layers(model)``.
        hook: ``"hook_resid_post"`` (block output; default), ``"hook_resid_pre"`` or
            ``"hook_resid_mid"``.
        pool: ``"last"`` (last selected token), ``"mean"`` (mean over selected tokens) or
            ``"none"`` (every selected token).
        masks: per input, a boolean mask of its tokens to pool over (e.g. response tokens).
        chat: texts are user prompts formatted with the model's chat template, exactly as
            ``generate`` formats them; the default (None) does so when the model has a
            template, as ``generate`` does. ``False``: raw text.
        exclude_template: with ``pool="mean"`` and no ``masks``, average over the text's own
            tokens only: no special tokens (BOS, chat markers) and no chat-template tokens
            (``sl.tokens.content_masks``). BOS residuals are huge on Llama-3 and template tokens are
            the same in every prompt, so including them swamps the mean. ``"last"`` always
            reads the last token (the position that predicts the reply).
        batch_size / max_tokens: a batch holds at most ``batch_size`` rows and ``max_tokens``
            padded tokens, so long and short inputs pack (0: ``token_budget(model)``, the
            device's default; None: rows only).
        store: a folder: write safetensors shards there (one per batch) and return an
            ``ActivationStore`` instead of holding everything in memory.
        engine: ``"tl"`` reads the TransformerLens hook points (any hooks you have active act
            on what is cached); ``"hf"`` reads the same values from the decoder layers of the
            plain HF model of the fast path (``steerlens.core.engines.hf``; open ``steering()``
            contexts are carried onto it); ``"auto"`` takes ``"hf"`` where that is exact.

    Returns:
        ``[n, layer, d_model]`` (pooled), a list of ``[layer, pos, d_model]`` (``pool="none"``),
        or the ``ActivationStore``. Rows are right-padded, so every real token sees exactly
        the positions it has in a one-at-a-time run.
    """
    if pool not in ("last", "mean", "none"):
        raise ValueError(f"pool must be 'last', 'mean' or 'none', got {pool!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    use_chat = resolve_chat(model, chat)
    ids, are_texts = _as_ids(model, inputs, use_chat)
    layer_list = _layers(model, layers)
    if masks is not None:
        _check_masks(masks, ids)
    elif pool == "mean" and exclude_template:
        texts = [str(x) for x in inputs] if are_texts else None
        masks = (
            content_masks(model, texts, ids, chat=use_chat)
            if texts is not None
            else [non_special_mask(model, x) for x in ids]
        )
        # a text of special tokens only: average what there is rather than nothing
        masks = [m if m.any() else torch.ones_like(m) for m in masks]
    for lyr in layer_list:
        hook_name(lyr, hook)  # a bad hook or layer is an error before anything is written
    eng = resolve_engine(model, hook, engine)  # validates before anything is written
    sink = (
        ActivationStore.create(
            store,
            model_name=str(model.cfg.model_name),
            hook=hook,
            layers=layer_list,
            pool=pool,
            d_model=int(model.cfg.d_model),
        )
        if store is not None
        else None
    )
    if model.training:  # eval() walks every module of a bridge: skip it when already off
        model.eval()
    # Identical inputs (the chosen response of a conversation sits in each of its pairs) run
    # once, unless a hook is active: a per-row hook must see every input in its own row.
    merge = sink is None and merges_rows(model, eng)
    owner = first_copies(ids, masks) if merge else list(range(len(ids)))
    unique = sorted(set(owner))
    run_ids = [ids[i] for i in unique]
    run_masks = None if masks is None else [masks[i] for i in unique]

    def pooled(acts: Tensor, i: int, start: int, n_tok: int) -> Tensor:
        """Run row ``i``'s ``[layer, pos, d]`` from column ``start`` on (``n_tok`` tokens)."""
        sel = (
            torch.ones(start + n_tok, dtype=torch.bool)
            if run_masks is None
            else run_masks[i].bool().cpu()
        )
        return _pooled(acts[:, :n_tok], sel[start:], pool)

    def finish(rows: list[Tensor]) -> Sequence[Tensor | None]:
        if pool != "none":
            rows = list(torch.stack(rows).cpu())  # pooled on the device, one transfer
        if sink is None:
            return rows
        sink.append(rows)  # in input order: the store's batches are not sorted
        return [None] * len(rows)

    groups = (
        _shared_groups(model, run_ids, run_masks, pool, batch_size, max_tokens)
        if sink is None and pool != "none" and not eng.hooked() and eng.can_share_prefix()
        else []
    )
    grouped, rest = split_rows(len(run_ids), groups)

    def run(eng: Engine, batch: Batch) -> Sequence[Tensor | None]:
        enc = batch.enc
        resids = eng.capture(enc.input_ids, enc.attention_mask, layer_list, hook)
        stacked = torch.stack(resids, dim=1).to(dtype)  # [b, L, pos, d], on the model's device
        if pool == "none":
            stacked = stacked.cpu()  # one transfer a batch; rows are sliced on the CPU
        return finish(
            [pooled(stacked[r], rest[j], 0, enc.lengths[r]) for r, j in enumerate(batch.rows)]
        )

    def run_after(eng: Engine, c: Continued) -> Sequence[Tensor | None]:
        enc = c.batch.enc
        resids = eng.capture_after(
            c.prefix.input_ids,
            c.prefix.attention_mask,
            c.owner,
            enc.input_ids,
            enc.attention_mask,
            layer_list,
            hook,
        )
        stacked = torch.stack(resids, dim=1).to(dtype)  # [b, L, own pos, d]
        return finish(
            [
                pooled(stacked[r], i, start, enc.lengths[r])
                for r, (i, start) in enumerate(zip(c.rows, c.starts, strict=True))
            ]
        )

    results: list[Tensor | None] = [None] * len(run_ids)
    if rest:
        rest_ids = [run_ids[i] for i in rest]
        whole = forward_batches(
            model,
            rest_ids,
            run,
            engine=eng,
            batch_size=batch_size,
            max_tokens=max_tokens,
            sort=sink is None,  # sorting by length wastes less padding
            # under an open conditioned steering() block: what its Condition pools
            pool_masks=condition_masks(
                model, rest_ids, _texts(inputs, [unique[i] for i in rest], are_texts), chat=use_chat
            ),
            progress_bar=progress_bar,
            description="cache",
        )
        for i, r in zip(rest, whole, strict=True):
            results[i] = r
    if grouped:
        shared = map_continued(
            model,
            eng,
            run_ids,
            groups,
            run_after,
            batch_size=batch_size,
            max_tokens=max_tokens,
            progress_bar=progress_bar,
            description="cache",
        )
        for i, r in zip(grouped, shared, strict=True):
            results[i] = r
    if sink is not None:
        return sink
    at = {i: k for k, i in enumerate(unique)}
    done: list[Tensor] = []
    for i in range(len(ids)):
        r = results[at[owner[i]]]
        assert r is not None
        done.append(r if owner[i] == i else r.clone())  # a copy: rows never alias
    return done if pool == "none" else torch.stack(done)


def _shared_groups(
    model: HookedModel,
    ids: Sequence[Tensor],
    masks: Sequence[Tensor] | None,
    pool: Pool,
    batch_size: int,
    max_tokens: int | None,
) -> list[PrefixGroup]:
    """Groups of inputs whose tokens before the first one they read (pool "mean": the first
    selected; "last": the last) are the same (a prompt before several responses), where
    running each group's beginning once computes fewer tokens than whole passes
    (``shared_plan``)."""
    heads = []
    for i, x in enumerate(ids):
        sel = torch.ones(len(x), dtype=torch.bool) if masks is None else masks[i].bool().cpu()
        on = sel.nonzero()
        need = int(on.max() if pool == "last" else on.min())  # the first position read
        heads.append(x[: need + 1])  # a group's prefix stops before it
    return shared_plan(model, heads, ids, batch_size, max_tokens)


def _texts(inputs: Sequence[object], unique: Sequence[int], are_texts: bool) -> list[str] | None:
    """The texts of the inputs run (None for token ids)."""
    return [str(inputs[i]) for i in unique] if are_texts else None


def _layers(model: HookedModel, layers: Sequence[int] | None) -> list[int]:
    """The layers to cache (default ``default_layers``), each checked against the model."""
    layer_list = list(default_layers(model) if layers is None else layers)
    if not layer_list:
        raise ValueError("no layers to cache")
    bad = [lyr for lyr in layer_list if not 0 <= lyr < model.cfg.n_layers]
    if bad:
        raise ValueError(
            f"layers {bad} out of range for {model.cfg.model_name} (0..{model.cfg.n_layers - 1})"
        )
    return layer_list


def _check_masks(masks: Sequence[Tensor], ids: Sequence[Tensor]) -> None:
    """One mask per input, of its shape, selecting at least one token."""
    if len(masks) != len(ids):
        raise ValueError(f"{len(masks)} masks for {len(ids)} inputs")
    for i, (m, x) in enumerate(zip(masks, ids, strict=True)):
        if m.shape != x.shape:
            raise ValueError(f"input {i}: mask has shape {tuple(m.shape)}, tokens {tuple(x.shape)}")
        if not m.any():
            raise ValueError(f"input {i}: its mask selects no token")


def _pooled(acts: Tensor, sel: Tensor, pool: Pool) -> Tensor:
    """One row's ``[layer, pos, d_model]`` pooled over its selected positions."""
    if pool == "last":
        return acts[:, int(sel.nonzero().max())]
    if pool == "mean":
        return acts[:, sel.to(acts.device)].mean(dim=1)
    return acts[:, sel].clone()
