"""Activation caching: batched, padding-correct, pooled, stopping at the last needed layer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from steerlens import fastpath
from steerlens._progress import progress
from steerlens.chat import encode_prompts, pad, tokenize
from steerlens.hooks import HookFn, hook_name
from steerlens.models import HookedModel, default_layers
from steerlens.store import ActivationStore

Pool = Literal["last", "mean", "none"]

__all__ = ["cache_activations"]


def _as_ids(
    model: HookedModel, inputs: Sequence[str] | Sequence[Tensor], chat: bool
) -> list[Int[Tensor, " pos"]]:
    if isinstance(inputs, str):
        raise TypeError("inputs must be a list of texts or token-id tensors, not one string")
    if len(inputs) == 0:
        raise ValueError("no inputs to cache")
    if all(isinstance(x, str) for x in inputs):
        texts = [str(x) for x in inputs]
        return encode_prompts(model, texts, chat=True) if chat else tokenize(model, texts)
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
        return out
    raise TypeError("inputs must be all strings or all token-id tensors")


def cache_activations(
    model: HookedModel,
    inputs: Sequence[str] | Sequence[Int[Tensor, " pos"]],
    layers: Sequence[int] | None = None,
    *,
    hook: str = "hook_resid_post",
    pool: Pool = "last",
    masks: Sequence[Bool[Tensor, " pos"]] | None = None,
    chat: bool = False,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
    store: str | Path | None = None,
    progress_bar: bool = True,
    engine: Literal["auto", "tl", "hf"] = "auto",
) -> Float[Tensor, "n layer d_model"] | list[Float[Tensor, "layer pos d_model"]] | ActivationStore:
    """Residual-stream activations of each input at ``layers``.

    Args:
        inputs: texts (raw, or user prompts through the chat template with ``chat=True``) or
            token-id tensors (e.g. from ``response_masks``).
        layers: defaults to ``default_layers(model)``.
        hook: ``"hook_resid_post"`` (block output; default), ``"hook_resid_pre"`` or
            ``"hook_resid_mid"``.
        pool: ``"last"`` (last selected token), ``"mean"`` (mean over selected tokens) or
            ``"none"`` (every selected token).
        masks: per input, a boolean mask of its tokens to pool over (e.g. response tokens);
            default all tokens.
        store: a folder: write safetensors shards there (one per batch) and return an
            ``ActivationStore`` instead of holding everything in memory.
        engine: ``"tl"`` reads the TransformerLens hook points (any hooks you have active, e.g.
            a ``steering`` context, act on what is cached); ``"hf"`` reads the same values from
            the decoder layers of a plain HF copy of the model (``steerlens.fastpath``; faster);
            ``"auto"`` takes ``"hf"`` where that is exact and cheap, as ``generate`` does.

    Returns:
        ``[n, layer, d_model]`` (pooled), a list of ``[layer, pos, d_model]`` (``pool="none"``),
        or the ``ActivationStore``. Rows are right-padded, so every real token sees exactly
        the positions it has in a one-at-a-time run.
    """
    if pool not in ("last", "mean", "none"):
        raise ValueError(f"pool must be 'last', 'mean' or 'none', got {pool!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = _as_ids(model, inputs, chat)
    layer_list = list(default_layers(model) if layers is None else layers)
    if not layer_list:
        raise ValueError("no layers to cache")
    bad = [lyr for lyr in layer_list if not 0 <= lyr < model.cfg.n_layers]
    if bad:
        raise ValueError(
            f"layers {bad} out of range for {model.cfg.model_name} (0..{model.cfg.n_layers - 1})"
        )
    names = [hook_name(lyr, hook) for lyr in layer_list]
    if masks is not None:
        if len(masks) != len(ids):
            raise ValueError(f"{len(masks)} masks for {len(ids)} inputs")
        for i, (m, x) in enumerate(zip(masks, ids, strict=True)):
            if m.shape != x.shape:
                raise ValueError(
                    f"input {i}: mask has shape {tuple(m.shape)}, tokens {tuple(x.shape)}"
                )
            if not m.any():
                raise ValueError(f"input {i}: its mask selects no token")
    twin = fastpath.resolve_engine(model, hook, engine)  # validates before anything is written
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
    # Sorting by length wastes less padding; a store is written in input order.
    order = (
        list(range(len(ids)))
        if sink is not None
        else sorted(range(len(ids)), key=lambda i: -int(ids[i].numel()))
    )
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    slots: list[Tensor | None] = [None] * len(ids)
    if model.training:  # eval() walks every module of a bridge: skip it when already off
        model.eval()
    for batch in progress(batches, total=len(batches), description="cache", enabled=progress_bar):
        enc = pad(model, [ids[i] for i in batch], side="right")
        with torch.inference_mode():
            if twin is not None:
                resids = fastpath.capture_residuals(
                    twin, enc.input_ids, enc.attention_mask, layer_list, hook
                )
            else:
                resids = _tl_capture(model, enc.input_ids, enc.attention_mask, names, layer_list)
        stacked = torch.stack(resids, dim=1).to(dtype)  # [b, L, pos, d], on the model's device
        if pool == "none":
            stacked = stacked.cpu()  # one transfer a batch; rows are sliced on the CPU
        rows = []
        for row, i in enumerate(batch):
            n_tok = enc.lengths[row]
            sel = torch.ones(n_tok, dtype=torch.bool) if masks is None else masks[i].bool().cpu()
            acts = stacked[row, :, :n_tok]
            if pool == "last":
                rows.append(acts[:, int(sel.nonzero().max())])
            elif pool == "mean":
                rows.append(acts[:, sel.to(acts.device)].mean(dim=1))
            else:
                rows.append(acts[:, sel].clone())
        if pool != "none":
            rows = list(torch.stack(rows).cpu())  # pooled on the device, one transfer
        for row, i in enumerate(batch):
            slots[i] = rows[row]
        if sink is not None:
            sink.append([slots[i] for i in batch])  # type: ignore[misc]
            for i in batch:
                slots[i] = None
    if sink is not None:
        return sink
    results = [s for s in slots if s is not None]
    return results if pool == "none" else torch.stack(results)


def _tl_capture(
    model: HookedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    names: list[str],
    layers: list[int],
) -> list[Tensor]:
    """The residuals at ``names`` from TransformerLens hook points, stopping after the last."""
    captured: dict[str, Tensor] = {}

    def grab(name: str) -> HookFn:
        def hook_fn(resid: Tensor, *, hook: object) -> None:
            captured[name] = resid.detach()

        return hook_fn

    stop = max(layers) + 1
    model.run_with_hooks(
        input_ids,
        fwd_hooks=[(n, grab(n)) for n in names],  # type: ignore[misc]
        attention_mask=attention_mask,
        stop_at_layer=stop if stop < model.cfg.n_layers else None,
        return_type=None,
    )
    return [captured[n] for n in names]
