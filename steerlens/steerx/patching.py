"""Where in the network a history's effect is carried: activation patching and attribution
patching between the with-history ("clean") and without-history ("corrupt") runs.

The two runs differ in their contexts but share the target tokens, so they are aligned on
them: aligned position ``j`` is the input position that predicts target token ``y_j`` (the
last context token for ``j = 0``, then ``y_{j-1}``). ``activation_patching`` overwrites the
corrupt run's residual stream (``hook_resid_post`` of layer ``l``, the steering layer
convention) at aligned position ``j`` with the clean run's, and measures how much of
``log p(y_t)`` each patch restores: a [layer, position, target] tensor, with layer x position
and layer-only views (``positions="all"`` patches every aligned position of a layer at
once). ``attribution_patching`` estimates the same per (layer, position) from gradients:
``grad_corrupt · (clean - corrupt)`` with one forward and one backward pass, or averaged
over ``steps`` interpolations between the runs (integrated-gradients style). Their rank
agreement with the exact patching is measured, not assumed (``rank_agreement``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.core.batching import Batch, map_batches
from steerlens.core.engines import Engine, PassEngineName, TLEngine, resolve_engine
from steerlens.core.hooks import current_rows, resid_post
from steerlens.core.models import HookedModel, frozen_weights, model_device
from steerlens.steerx.effects import Message, _context, target_tokens

__all__ = ["PatchingResult", "activation_patching", "attribution_patching", "rank_agreement"]


@dataclass
class PatchingResult:
    """``restored[l, j, t]``: log p(y_t) of the patched corrupt run minus the corrupt run's,
    for a patch at ``layers[l]`` and aligned position ``positions[j]`` (``-1``: all of them).
    """

    layers: list[int]
    positions: list[int]
    tokens: list[str]
    logp_clean: Float[Tensor, " tok"]
    logp_corrupt: Float[Tensor, " tok"]
    restored: Float[Tensor, "layer pos tok"]
    method: str = "activation-patching"

    @property
    def gap(self) -> Tensor:
        """Per target token: log p clean - log p corrupt (what a full restore would add)."""
        return self.logp_clean - self.logp_corrupt

    def layer_position(self) -> Tensor:
        """[layer, pos]: the share of the total log-prob gap over the target restored."""
        total = float(self.gap.sum())
        return self.restored.sum(-1) / (total if abs(total) > 1e-9 else 1.0)

    def by_layer(self) -> Tensor:
        """[layer]: the layer x position view summed over positions."""
        return self.layer_position().sum(-1)


def _runs(
    model: HookedModel,
    prompt: str,
    response: str,
    history: Sequence[Message],
    counterfactual: Sequence[Message] | None,
) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    ids, tokens, _ = target_tokens(model, response)
    clean = torch.cat([_context(model, history, prompt), ids])
    corrupt = torch.cat([_context(model, counterfactual or [], prompt), ids])
    return clean, corrupt, ids, tokens


def _aligned(full: Tensor, n_target: int) -> Tensor:
    """Input positions predicting each target token: the last n_target + 1 ... - 1."""
    n = int(full.numel())
    return torch.arange(n - n_target - 1, n - 1)


def _ones(ids: Tensor, device: Any) -> Tensor:
    """The attention mask of one unpadded row."""
    return torch.ones((1, int(ids.numel())), dtype=torch.long, device=device)


def _target_logp(logits: Tensor, full_len: int, ids: Tensor) -> Tensor:
    n_t = int(ids.numel())
    lp = logits[full_len - n_t - 1 : full_len - 1].float().log_softmax(-1)
    return lp.gather(-1, ids.to(lp.device)[:, None])[:, 0]


def _one_run(
    eng: Engine, tokens: Tensor, layers: Sequence[int], ids: Tensor
) -> tuple[dict[int, Tensor], Tensor]:
    """One unpatched pass over ``tokens`` (the clean or the corrupt run): its residuals at
    ``layers`` and ``log p(y_t)`` of the target ``ids`` it ends with (CPU)."""
    store: dict[int, Tensor] = {}

    def grab(layer: int) -> Any:
        def fn(x: Tensor, *, hook: Any) -> Tensor:
            store[layer] = x[0].detach().clone()
            return x

        return fn

    hooks = [(resid_post(layer), grab(layer)) for layer in layers]
    dev = model_device(eng.model)
    n_t = int(ids.numel())
    with torch.inference_mode(), eng.hooks(hooks):
        (logits,) = eng.logits_at(
            tokens[None].to(dev), _ones(tokens, dev), [_aligned(tokens, n_t).tolist()]
        )
    return store, _picked_logp(logits, ids)


def _picked_logp(logits: Tensor, ids: Tensor) -> Tensor:
    """``log p(y_t)`` from the logits at the columns predicting each target token (CPU)."""
    lp = logits.float().log_softmax(-1)
    return lp.gather(-1, ids.to(lp.device)[:, None])[:, 0].cpu()


def activation_patching(
    model: HookedModel,
    *,
    prompt: str,
    response: str,
    history: Sequence[Message],
    counterfactual: Sequence[Message] | None = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | Literal["all"] | None = None,
    batch_size: int = 16,
    progress_bar: bool = False,
    engine: PassEngineName = "auto",
) -> PatchingResult:
    """Patch the clean residual stream into the corrupt run, one (layer, position) a row.

    Args:
        layers: layers to patch (default: all).
        positions: aligned target positions to patch (default: every one, the layer x
            position view); ``"all"`` patches all of them at once per layer (layer view).
        engine: as in ``generate``; ``"auto"`` patches on the fast path (the HF modules the
            bridge wraps) when no other hook is active, else through TransformerLens hooks.
    """
    clean, corrupt, ids, tokens = _runs(model, prompt, response, history, counterfactual)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    n_t = int(ids.numel())
    every = list(range(n_t))
    pos_list = [-1] if positions == "all" else every if positions is None else list(positions)
    bad = [p for p in pos_list if p != -1 and not 0 <= p < n_t]
    if bad:
        raise ValueError(f"aligned positions {bad} are outside the {n_t} target tokens")
    eng = resolve_engine(model, "hook_resid_post", engine)
    src, lp_clean = _one_run(eng, clean, layers, ids)
    c_pos, k_pos = _aligned(clean, n_t), _aligned(corrupt, n_t)
    at = [k_pos.tolist()]  # the columns whose logits are read (those predicting the target)
    cells = [(layer, p) for layer in layers for p in pos_list]  # one row each, layer-major
    # With no hook open, a row patched at aligned position p is the corrupt run before column
    # k_pos[p] (attention is causal): where the engine can resume a run, each row runs its own
    # columns from there on that run's cache ("cut"), else the whole corrupt sequence (cut 0).
    # A batch starts at its lowest patched block from the corrupt run's residual there, where
    # the engine can start midway (an open steering() block's hooks would act on that
    # residual, or on the resumed run, twice).
    quiet = not eng.hooked()
    resume = quiet and int(k_pos[0]) > 0 and eng.can_resume()  # a cut needs a column before it
    cut = [int(k_pos[max(p, 0)]) if resume else 0 for _, p in cells]
    start = eng.can_resume if resume else eng.can_start_at
    starts = [lyr for lyr in dict.fromkeys(layers) if lyr > 0 and start(lyr)] if quiet else []

    running: list[int] = []  # the cells of the rows being run (a batch's row i: running[i])

    def patch_fn(layer: int) -> Any:
        def fn(x: Tensor, *, hook: Any) -> Tensor:
            ctx = current_rows()
            if ctx is None:
                return x
            x = x.clone()
            for r, i in enumerate(ctx.rows.tolist()):
                j = running[i]
                lyr, p = cells[j]
                if lyr != layer:
                    continue
                idx = every if p == -1 else [p]
                x[r, k_pos[idx] - cut[j]] = src[layer][c_pos[idx]].to(x.dtype)
            return x

        return fn

    dev = model_device(model)
    with torch.inference_mode():
        with eng.hooks([]):
            lp_corrupt = _picked_logp(
                eng.logits_at(corrupt[None].to(dev), _ones(corrupt, dev), at)[0], ids
            )
            pre = dict(
                zip(
                    starts,
                    eng.capture(
                        corrupt[None].to(dev), _ones(corrupt, dev), starts, "hook_resid_pre"
                    )
                    if starts
                    else [],
                    strict=True,
                )
            )

        def run(batch: Batch) -> list[Tensor]:
            enc, n, rows = batch.enc, len(batch.rows), [running[i] for i in batch.rows]
            low = min(cells[j][0] for j in rows)
            if not resume:
                if low in pre:
                    got = eng.logits_from(
                        pre[low].expand(n, -1, -1), enc.attention_mask, low, at * n
                    )
                else:
                    got = eng.logits_at(enc.input_ids, enc.attention_mask, at * n)
                return [_picked_logp(lg, ids) for lg in got]
            cuts = [cut[j] for j in rows]
            first = [int(c - k_pos[0]) for c in cuts]  # each row's first aligned target
            cols = [(k_pos[f:] - c).tolist() for f, c in zip(first, cuts, strict=True)]
            resid: Tensor | None = None
            if low in pre:  # the corrupt run's residual entering `low`, at each row's columns
                resid = torch.zeros(
                    (n, enc.input_ids.shape[1], pre[low].shape[-1]),
                    dtype=pre[low].dtype,
                    device=pre[low].device,
                )
                for r, c in enumerate(cuts):
                    resid[r, : len(corrupt) - c] = pre[low][0, c:]
            got = eng.logits_resumed(
                corrupt.to(dev),
                cuts,
                enc.input_ids,
                enc.attention_mask,
                cols,
                layer=low if resid is not None else 0,
                resid=resid,
            )
            # before its cut a row is the corrupt run: those targets keep its log-probs
            return [
                torch.cat([lp_corrupt[:f], _picked_logp(lg, ids[f:])])
                for f, lg in zip(first, got, strict=True)
            ]

        # resumed or started midway: one layer's rows a call, so that a batch starts at its
        # layer (resumed rows narrow as p grows); whole passes: every row in one call
        parts = (
            [
                [j for j, (lyr, _) in enumerate(cells) if lyr == layer]
                for layer in dict.fromkeys(layers)
            ]
            if resume or starts
            else [list(range(len(cells)))]
        )
        patched: list[Tensor] = [torch.empty(0)] * len(cells)
        with eng.hooks([(resid_post(layer), patch_fn(layer)) for layer in dict.fromkeys(layers)]):
            for rows in parts:
                running[:] = rows
                got = map_batches(
                    model,
                    [corrupt[cut[j] :] for j in rows],
                    run,
                    batch_size=batch_size,
                    side="right",
                    progress_bar=progress_bar,
                    description="patching"
                    if len(parts) == 1
                    else f"patching layer {cells[rows[0]][0]}",
                )
                for j, lp in zip(rows, got, strict=True):
                    patched[j] = lp
    restored = (torch.stack(patched) - lp_corrupt).reshape(len(layers), len(pos_list), n_t)
    return PatchingResult(layers, pos_list, tokens, lp_clean, lp_corrupt, restored)


STEP_ROWS = 8
"""Integrated gradients' steps run as rows of one batched pass, this many at a time (a pass
holds this many rows' activations for the backward pass: lower it for a long input on a
large model)."""


def attribution_patching(
    model: HookedModel,
    *,
    prompt: str,
    response: str,
    history: Sequence[Message],
    counterfactual: Sequence[Message] | None = None,
    layers: Sequence[int] | None = None,
    steps: int = 1,
) -> PatchingResult:
    """Gradient estimate of ``activation_patching``'s layer x position view.

    ``steps=1``: ``grad(Σ_t log p(y_t)) at the corrupt run · (clean - corrupt)`` at every
    (layer, aligned position), one forward and one backward pass. ``steps > 1``: per layer,
    the gradient averaged over ``steps`` runs with that layer's aligned residuals moved
    ``k/steps`` of the way to the clean ones (integrated gradients; per layer, ``steps``
    forward and backward passes, run as the rows of batched ones: ``STEP_ROWS`` a pass). ``restored`` holds the estimate in the ``[layer, pos, 1]``
    slot (the summed target), so ``layer_position()`` compares directly.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    clean, corrupt, ids, tokens = _runs(model, prompt, response, history, counterfactual)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    n_t = int(ids.numel())
    # gradients: the TransformerLens path
    src, lp_clean = _one_run(TLEngine(model), clean, layers, ids)
    c_pos, k_pos = _aligned(clean, n_t), _aligned(corrupt, n_t)
    dev = model_device(model)

    def backward(
        moved: tuple[int, Sequence[float]] | None,
    ) -> tuple[dict[int, Tensor], dict[int, Tensor], Tensor]:
        """Per layer, the target's gradient at the aligned residuals (rows summed: each row's
        own, the rows being independent) and the residuals; ``moved = (layer, fractions)``:
        one row per fraction, that layer's aligned residuals moved that far to the clean
        ones (all in one batched forward and backward pass), and that layer's gradient only
        (the graph starts there: nothing below it is differentiated)."""
        acts: dict[int, Tensor] = {}
        rows = 1 if moved is None else len(moved[1])
        at = list(layers) if moved is None else [moved[0]]
        first = min(at)

        def grab(layer: int) -> Any:
            def fn(x: Tensor, *, hook: Any) -> Tensor:
                if layer == first:  # the weights are frozen: the graph starts here
                    x = x.detach().requires_grad_(True)
                if moved is not None and moved[0] == layer:
                    x = x.clone()
                    for r, a in enumerate(moved[1]):
                        x[r, k_pos] = x[r, k_pos] + a * (
                            src[layer][c_pos].to(x.dtype) - x[r, k_pos]
                        )
                x.retain_grad()
                acts[layer] = x
                return x

            return fn

        with model.hooks(fwd_hooks=[(resid_post(lyr), grab(lyr)) for lyr in at]):
            logits = model(corrupt[None].expand(rows, -1).to(dev))
            lps = [_target_logp(logits[r], int(corrupt.numel()), ids) for r in range(rows)]
            torch.stack(lps).sum().backward()
        grads = {lyr: acts[lyr].grad[:, k_pos].detach().float().sum(0) for lyr in at}  # type: ignore[index]
        values = {lyr: acts[lyr][0, k_pos].detach().float() for lyr in at}
        return grads, values, lps[0].detach().cpu()

    with frozen_weights(model):
        if steps == 1:
            with torch.enable_grad():  # works inside no_grad / set_grad_enabled(False) too
                grads, values, lp_corrupt = backward(None)
        else:  # the gradients come from the moved runs: the corrupt run's values only
            acts, lp_corrupt = _one_run(TLEngine(model), corrupt, layers, ids)
            values = {lyr: acts[lyr][k_pos].float() for lyr in layers}
        est = torch.zeros(len(layers), n_t)
        for i, layer in enumerate(layers):
            diff = src[layer][c_pos].float() - values[layer]
            if steps == 1:
                g = grads[layer]
            else:  # the steps of a layer as rows of one pass, a chunk of at most STEP_ROWS
                total = torch.zeros_like(diff)
                fractions = [k / steps for k in range(1, steps + 1)]
                for j in range(0, steps, STEP_ROWS):
                    with torch.enable_grad():
                        total += backward((layer, fractions[j : j + STEP_ROWS]))[0][layer]
                g = total / steps
            est[i] = (g * diff).sum(-1).cpu()
    restored = torch.zeros(len(layers), n_t, n_t)
    restored[:, :, 0] = est  # the summed-target estimate, so layer_position() compares
    return PatchingResult(
        layers,
        list(range(n_t)),
        tokens,
        lp_clean,
        lp_corrupt,
        restored,
        "attribution-patching" if steps == 1 else f"integrated-gradients-{steps}",
    )


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def rank_agreement(exact: Tensor, estimate: Tensor, top: float = 0.1) -> dict[str, float]:
    """Spearman correlation of two importance maps (flattened) and the overlap of their top
    ``top`` share of cells (by absolute value)."""
    a = exact.flatten().double().numpy()
    b = estimate.flatten().double().numpy()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(exact.shape)} vs {tuple(estimate.shape)}")
    k = max(1, round(top * a.size))
    ta = set(np.argsort(-np.abs(a), kind="stable")[:k].tolist())
    tb = set(np.argsort(-np.abs(b), kind="stable")[:k].tolist())
    return {"spearman": _spearman(a, b), f"top{int(top * 100)}_overlap": len(ta & tb) / k}
