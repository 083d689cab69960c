"""Side effects of steering on neutral text, and strength calibrated to a KL budget.

``steering_divergence`` runs each text twice in the same batch, unsteered and steered (one
vector and α per row, so all users' vectors go through one batched pass), and returns per
text the mean per-token KL divergence of the steered from the unsteered next-token
distribution, ``KL(p_steered ‖ p_unsteered)`` averaged over the text's positions, and the
text's negative log-likelihood under steering (its perplexity).

``calibrate_alpha`` finds, per vector, the α whose mean KL over a few neutral texts equals a
budget (a safeguarded root search: steps of α·sqrt(budget / KL) kept inside the bracket, else
bisection on log α; every vector's search in the same batched passes, the unsteered pass
computed once), and records it in the vector's metadata so the vector carries its
calibration. A sweep over KL budgets
then compares users at equal side effect rather than at equal norm.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens.core import fastpath
from steerlens.core.batching import Batch, map_batches
from steerlens.core.hooks import steering_hooks
from steerlens.core.models import HookedModel
from steerlens.core.tokens import tokenize
from steerlens.core.vectors import SteeringVector

__all__ = [
    "Divergence",
    "calibrate_alpha",
    "reference_logprobs",
    "steering_divergence",
    "texts_key",
]


@dataclass(frozen=True)
class Divergence:
    """One text under one vector and α."""

    kl: float
    """Mean over the text's positions of ``KL(p_steered ‖ p_unsteered)`` (nats)."""
    nll: float
    """Sum of ``-log p_steered(token_t | tokens_<t)`` over the text's tokens after the first."""
    n_tokens: int
    """Number of predicted tokens (the text's length minus one)."""

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.n_tokens) if self.n_tokens else float("nan")


def _ids(model: HookedModel, texts: Sequence[str] | Sequence[Tensor]) -> list[Tensor]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list, not one string")
    if all(isinstance(t, Tensor) for t in texts):
        return [t.long().cpu() for t in texts]  # type: ignore[union-attr]
    return tokenize(model, [str(t) for t in texts])


def steering_divergence(
    model: HookedModel,
    texts: Sequence[str] | Sequence[Int[Tensor, " pos"]],
    vector: SteeringVector | Sequence[SteeringVector],
    alpha: float | Sequence[float] = 1.0,
    *,
    batch_size: int = 16,
    progress_bar: bool = False,
    engine: Literal["auto", "tl", "hf"] = "auto",
    reference: Sequence[Tensor] | None = None,
) -> list[Divergence]:
    """Per text: the KL of the steered from the unsteered next-token distribution, and the
    text's log-likelihood under steering.

    Args:
        texts: neutral text (encoded with the model's own tokenizer rule) or token ids.
        vector: one vector for every text, or one per text (e.g. each user's vector, the same
            text repeated once per user).
        alpha: one strength, or one per text.
        reference: per text, its unsteered log-probabilities ``[pos, vocab]``
            (``reference_logprobs``); then only the steered pass runs (a calibration reuses
            them at every step).

    Every position is steered (gate ``"all"``). Both passes run under whatever hooks are
    already open, so "unsteered" means the model as the caller has it.
    """
    ids = _ids(model, texts)
    n = len(ids)
    if isinstance(vector, Sequence) and len(vector) != n:
        raise ValueError(f"{len(vector)} vectors for {n} texts")
    if not isinstance(alpha, int | float) and len(alpha) != n:
        raise ValueError(f"{len(alpha)} alphas for {n} texts")
    if any(int(t.numel()) < 2 for t in ids):
        raise ValueError("every text needs at least two tokens")
    if n == 0:
        return []
    if reference is not None and len(reference) != n:
        raise ValueError(f"{len(reference)} reference rows for {n} texts")
    fast = fastpath.resolve_engine(model, "hook_resid_post", engine)
    alphas = float(alpha) if isinstance(alpha, int | float) else [float(a) for a in alpha]
    pairs = steering_hooks(model, vector, alphas)

    def run(batch: Batch) -> list[Divergence]:
        ref = None if reference is not None else _logprobs(model, fast, batch, [])
        steered = _logprobs(model, fast, batch, pairs)
        rows = []
        for row, n_tok in enumerate(batch.enc.lengths):
            lp = steered[row, :n_tok]
            if ref is not None:
                lq = ref[row, :n_tok]
            else:
                lq = reference[batch.rows[row]].to(lp.device)  # type: ignore[index]
                if lq.shape != lp.shape:
                    raise ValueError(f"reference row {batch.rows[row]} has shape {tuple(lq.shape)}")
            kl = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0).mean()
            target = batch.enc.input_ids[row, 1:n_tok]
            nll = -lp[:-1].gather(-1, target[:, None]).sum()
            rows.append(Divergence(float(kl), float(nll), int(n_tok) - 1))
        return rows

    with torch.inference_mode():
        return map_batches(
            model,
            ids,
            run,
            batch_size=batch_size,
            side="right",
            progress_bar=progress_bar,
            description="divergence",
        )


def _logprobs(model: HookedModel, fast: Any, batch: Batch, hooks: list[Any]) -> Tensor:
    """Log-softmax of the batch's logits under ``hooks`` (and whatever hooks are open)."""
    enc = batch.enc
    with fastpath.engine_hooks(model, fast, hooks):
        if fast is None:
            out = model(enc.input_ids, attention_mask=enc.attention_mask)
        else:
            out = fast.twin(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    return out.float().log_softmax(-1)  # type: ignore[no-any-return]


def reference_logprobs(
    model: HookedModel,
    texts: Sequence[str] | Sequence[Int[Tensor, " pos"]],
    *,
    batch_size: int = 16,
    engine: Literal["auto", "tl", "hf"] = "auto",
) -> list[Float[Tensor, "pos vocab"]]:
    """Per text, the unsteered next-token log-probabilities (CPU, float32), for
    ``steering_divergence(..., reference=...)``."""
    ids = _ids(model, texts)
    fast = fastpath.resolve_engine(model, "hook_resid_post", engine)

    def run(batch: Batch) -> list[Tensor]:
        lp = _logprobs(model, fast, batch, [])
        return [lp[row, :n].cpu() for row, n in enumerate(batch.enc.lengths)]

    with torch.inference_mode():
        return map_batches(model, ids, run, batch_size=batch_size, side="right")


def texts_key(texts: Sequence[str] | Sequence[Tensor]) -> str:
    """A short fingerprint of a text set (a calibration holds only for the texts it used)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.numpy().tobytes() if isinstance(t, Tensor) else str(t).encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def _mean_kl(
    model: HookedModel,
    ids: list[Tensor],
    vectors: Sequence[SteeringVector],
    alphas: Sequence[float],
    batch_size: int,
    engine: Literal["auto", "tl", "hf"],
    reference: list[Tensor],
) -> list[float]:
    """Per vector, its mean KL over ``ids`` at its α (one batched steered pass for all)."""
    k = len(ids)
    rows = steering_divergence(
        model,
        [t for _ in vectors for t in ids],
        [v for v in vectors for _ in ids],
        [a for a in alphas for _ in ids],
        batch_size=batch_size,
        engine=engine,
        reference=[r for _ in vectors for r in reference],
    )
    return [sum(d.kl for d in rows[i * k : (i + 1) * k]) / k for i in range(len(vectors))]


def calibrate_alpha(
    model: HookedModel,
    vectors: SteeringVector | Sequence[SteeringVector],
    texts: Sequence[str] | Sequence[Int[Tensor, " pos"]],
    budget: float,
    *,
    start: float = 1.0,
    max_alpha: float = 64.0,
    iterations: int = 12,
    rtol: float = 0.02,
    batch_size: int = 16,
    engine: Literal["auto", "tl", "hf"] = "auto",
    use_cache: bool = True,
    reference: Sequence[Tensor] | None = None,
) -> list[float]:
    """Per vector, the α > 0 whose mean per-token KL on ``texts`` equals ``budget`` (nats).

    KL grows with α (about as α² for small α): from ``start`` each step goes to
    α·sqrt(budget / KL), kept inside the bracket found so far (else the bracket's geometric
    midpoint), until the KL is within ``rtol`` of the budget or ``iterations`` passes are
    spent; all vectors share each batched pass. ``reference``: the texts' unsteered
    log-probabilities (``reference_logprobs``), when the caller calibrates several budgets. A vector whose KL
    stays below the budget up to ``max_alpha`` gets ``max_alpha`` (logged in its metadata as
    not reached).

    The result is cached in ``vector.metadata["kl_alpha"]`` under the budget and the texts'
    fingerprint (``texts_key``), so a saved vector carries its calibration and a second call
    runs nothing.
    """
    vecs = [vectors] if isinstance(vectors, SteeringVector) else list(vectors)
    if not budget > 0:
        raise ValueError(f"budget must be > 0 (nats), got {budget}")
    if not 0 < start <= max_alpha:
        raise ValueError("need 0 < start <= max_alpha")
    ids = _ids(model, texts)
    if not ids:
        raise ValueError("calibration needs at least one text")
    key = f"{budget:g}@{texts_key(ids)}"
    out: list[float | None] = [None] * len(vecs)
    todo = []
    for i, v in enumerate(vecs):
        cached = v.metadata.get("kl_alpha", {}).get(key) if use_cache else None
        if cached is not None:
            out[i] = float(cached["alpha"])
        else:
            todo.append(i)
    if todo:
        found = _search(
            model,
            [vecs[i] for i in todo],
            ids,
            budget,
            start,
            max_alpha,
            iterations,
            rtol,
            batch_size,
            engine,
            list(reference)
            if reference is not None
            else reference_logprobs(model, ids, batch_size=batch_size, engine=engine),
        )
        for i, (alpha, kl, reached) in zip(todo, found, strict=True):
            out[i] = alpha
            store = vecs[i].metadata.setdefault("kl_alpha", {})
            store[key] = {"alpha": alpha, "kl": kl, "reached": reached, "n_texts": len(ids)}
    return [float(a) for a in out]  # type: ignore[arg-type]


def _search(
    model: HookedModel,
    vecs: list[SteeringVector],
    ids: list[Tensor],
    budget: float,
    start: float,
    max_alpha: float,
    iterations: int,
    rtol: float,
    batch_size: int,
    engine: Literal["auto", "tl", "hf"],
    reference: list[Tensor],
) -> list[tuple[float, float, bool]]:
    """A safeguarded root search per vector, all vectors in each batched pass: the next α is
    ``α · sqrt(budget / KL)`` (exact where KL grows as α², as it does for small α), kept
    inside the bracket found so far; where it leaves the bracket, the bracket's geometric
    midpoint (bisection on log α) is taken instead."""
    n = len(vecs)
    lo = [0.0] * n  # KL(lo) < budget (α = 0 gives KL 0)
    hi: list[float | None] = [None] * n  # KL(hi) >= budget, once found
    best = [(start, math.inf)] * n  # (α, |KL - budget|) closest so far
    kl_at = [0.0] * n
    alpha = [start] * n
    done = [False] * n
    for _ in range(iterations):
        active = [i for i in range(n) if not done[i]]
        if not active:
            break
        kls = _mean_kl(
            model,
            ids,
            [vecs[i] for i in active],
            [alpha[i] for i in active],
            batch_size,
            engine,
            reference,
        )
        for i, kl in zip(active, kls, strict=True):
            a = alpha[i]
            if abs(kl - budget) < best[i][1]:
                best[i], kl_at[i] = (a, abs(kl - budget)), kl
            if abs(kl - budget) <= rtol * budget:
                done[i] = True
                continue
            if kl < budget:
                lo[i] = a
                if a >= max_alpha:
                    done[i] = True  # not reached within max_alpha
                    continue
            else:
                hi[i] = a
            step = a * math.sqrt(budget / kl) if kl > 0 else 2 * a
            h = hi[i]
            inside = lo[i] < step and (h is None or step < h)
            if h is None:
                alpha[i] = min(step if inside else 2 * a, max_alpha)
            else:
                alpha[i] = step if inside else (math.sqrt(lo[i] * h) if lo[i] > 0 else h / 2)
    return [(best[i][0], kl_at[i], abs(kl_at[i] - budget) <= rtol * budget) for i in range(n)]
