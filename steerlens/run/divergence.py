"""Side effects of steering on neutral text, and strength calibrated to a KL budget.

``steering_divergence`` runs each text unsteered and steered (one vector and α per row, so
all users' vectors go through one batched pass; with no hook open, a text that several rows
repeat runs unsteered once, and the steered pass starts at the first block steered, from the
unsteered pass's residual there, where the engine can start midway), and returns per
text the mean per-token KL divergence of the steered from the unsteered next-token
distribution, ``KL(p_steered ‖ p_unsteered)`` averaged over the text's positions, and the
text's negative log-likelihood under steering (its perplexity).

``calibrate_alpha`` finds, per vector, the α whose mean KL over a few neutral texts equals a
budget (a safeguarded root search: steps of α·sqrt(budget / KL) kept inside the bracket, else
bisection on log α; every vector's search in the same batched passes, the unsteered pass
computed once), and records it in the vector's metadata, under ``calibration_key`` (budget,
texts and search settings), so the vector carries its calibration. A sweep over KL budgets
then compares users at equal side effect rather than at equal norm.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens.core.batching import Batch, condition_masks, map_batches
from steerlens.core.engines import Engine, PassEngineName, resolve_engine
from steerlens.core.hooks import (
    AnyGate,
    ConditionState,
    active_steering,
    condition_state,
    steering_hooks,
)
from steerlens.core.models import HookedModel
from steerlens.core.tokens import tokenize
from steerlens.core.vectors import SteeringVector
from steerlens.run.passes import reading, start_layer

__all__ = [
    "Divergence",
    "calibrate_alpha",
    "calibration_key",
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
    projection: float | None = None
    """With a ``Condition`` gate: the text's projection on its direction (else None)."""
    steered: bool | None = None
    """With a ``Condition`` gate: whether the text was steered (projection above threshold)."""

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
    engine: PassEngineName = "auto",
    reference: Sequence[Tensor] | None = None,
    gate: AnyGate = "all",
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
        gate: every position is steered by default (``"all"``); a ``Condition`` steers only
            the texts it selects, each read as a whole prompt (its non-special tokens
            pooled), and the rows report ``projection`` and ``steered``.

    Both passes run under whatever hooks are already open, so "unsteered" means the model
    as the caller has it. With none open and no ``reference``, a text repeated over rows
    (one per vector or α) runs its unsteered pass once for all of them (in groups of texts
    whose log-probabilities fit in ``SHARED_REFERENCE_BYTES``), and the steered rows skip
    the blocks below the first one steered where the engine can (``Engine.can_start_at``):
    the same numbers as whole passes, to float rounding. With a ``reference`` and none open,
    a repeated text runs those lower blocks once for all its rows (and no unembedding).
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
    alphas = float(alpha) if isinstance(alpha, int | float) else [float(a) for a in alpha]
    pairs = steering_hooks(model, vector, alphas, gate)
    eng = resolve_engine(model, "hook_resid_post", engine, pairs=pairs)
    state = condition_state(pairs)
    # with nothing else acting on the model, one text's unsteered pass is the same in every
    # row: distinct texts run it once, and the steered pass starts where the hooks do
    quiet = not active_steering(model) and not eng.hooked()
    groups = _text_groups(model, ids) if reference is None and quiet else None
    if groups is not None:  # too many distinct texts to hold at once: a call per group
        out: list[Divergence | None] = [None] * n
        for rows in groups:
            part = steering_divergence(
                model,
                [ids[i] for i in rows],
                [vector[i] for i in rows] if isinstance(vector, Sequence) else vector,
                [alphas[i] for i in rows] if isinstance(alphas, list) else alphas,
                batch_size=batch_size,
                progress_bar=progress_bar,
                engine=engine,
                gate=gate,
            )
            for i, d in zip(rows, part, strict=True):
                out[i] = d
        return out  # type: ignore[return-value]
    start = start_layer(eng, pairs) if quiet else None
    resids = None
    if reference is None and quiet:
        reference, resids = _shared_reference(model, eng, ids, batch_size, start) or (None, None)
    elif start is not None:  # the caller's reference: a repeated text's lower blocks once
        resids = _repeated_resids(model, eng, ids, batch_size, start)
    pool = condition_masks(model, ids, pairs=pairs)  # each text read as a whole prompt

    def run(batch: Batch) -> list[Divergence]:
        ref, steered = _batch_logprobs(eng, batch, pairs, start, resids, reference is None)
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
            proj = None if state is None else _projection(state, batch.rows[row])
            rows.append(
                Divergence(
                    float(kl),
                    float(nll),
                    int(n_tok) - 1,
                    proj,
                    None if proj is None else proj > state.condition.threshold,  # type: ignore[union-attr]
                )
            )
        return rows

    with torch.inference_mode():
        return map_batches(
            model,
            ids,
            run,
            batch_size=batch_size,
            side="right",
            pool_masks=pool,
            progress_bar=progress_bar,
            description="divergence",
        )


SHARED_REFERENCE_BYTES = 2**31
"""The most memory (bytes, on the CPU) that the unsteered log-probabilities of a call's
distinct texts may take at once, computed once for every row repeating them; a call whose
texts need more runs in groups of texts that fit (a single text over it: one unsteered pass
per row, in its batch)."""


def _text_groups(model: HookedModel, ids: list[Tensor]) -> list[list[int]] | None:
    """Rows grouped by text so that each group's distinct texts' log-probabilities fit in
    ``SHARED_REFERENCE_BYTES`` (every row of a text in its text's group); None when they
    fit at once, or when no text repeats (nothing to share)."""
    rows_of: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(ids):
        rows_of.setdefault(tuple(t.tolist()), []).append(i)
    per_token = int(model.cfg.d_vocab) * 4
    sizes = [len(text) * per_token for text in rows_of]
    if len(rows_of) == len(ids) or sum(sizes) <= SHARED_REFERENCE_BYTES:
        return None
    groups: list[list[int]] = [[]]
    used = 0
    for rows, size in zip(rows_of.values(), sizes, strict=True):
        if groups[-1] and used + size > SHARED_REFERENCE_BYTES:
            groups.append([])
            used = 0
        groups[-1].extend(rows)
        used += size
    return groups if len(groups) > 1 else None


def _batch_logprobs(
    eng: Engine,
    batch: Batch,
    pairs: list[Any],
    start: int | None,
    resids: list[Tensor] | None,
    unsteered: bool,
) -> tuple[Tensor | None, Tensor]:
    """(unsteered, steered) log-probabilities of a batch; the unsteered ones only when
    ``unsteered`` (else the caller holds them). With a ``start`` block, the steered pass
    starts there, from the residual of the batch's own unsteered pass or the texts'
    ``resids``."""
    enc = batch.enc
    ref = resid = None
    if unsteered:
        if start is None:
            ref = _logprobs(eng, batch, [])
        else:
            ref, resid = _logprobs_reading(eng, batch, start)
    elif start is not None and resids is not None:
        resid = _padded([resids[i] for i in batch.rows], enc.input_ids.shape[1])
    if resid is None:
        return ref, _logprobs(eng, batch, pairs)
    with eng.hooks(pairs):
        out = eng.forward_from(resid.to(enc.input_ids.device), enc.attention_mask, start)  # type: ignore[arg-type]
    return ref, out.float().log_softmax(-1)


def _logprobs_reading(eng: Engine, batch: Batch, layer: int) -> tuple[Tensor, Tensor]:
    """The batch's unsteered log-probabilities, and the residual entering block ``layer``."""
    hooks, seen = reading(layer)
    lp = _logprobs(eng, batch, hooks)
    return lp, seen[-1]


def _padded(rows: list[Tensor], width: int) -> Tensor:
    """Residuals ``[pos, d_model]`` of several texts, right-padded with zeros to ``width``."""
    out = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


def _shared_reference(
    model: HookedModel, eng: Engine, ids: list[Tensor], batch_size: int, layer: int | None
) -> tuple[list[Tensor], list[Tensor] | None] | None:
    """Per row, the unsteered log-probabilities of its text (and with a ``layer``, the
    residual entering that block), each distinct text run once for every row that repeats
    it (a text steered by many vectors or at many α); None where no text repeats, or where
    the distinct texts' log-probabilities would take more than ``SHARED_REFERENCE_BYTES``
    (each row then runs its own unsteered pass, in its batch; ``steering_divergence`` splits
    a call into groups of texts that fit first)."""
    first: dict[tuple[int, ...], int] = {}
    owner = [first.setdefault(tuple(t.tolist()), i) for i, t in enumerate(ids)]
    distinct = sorted(first.values())
    size = sum(int(ids[i].numel()) for i in distinct) * int(eng.model.cfg.d_vocab) * 4
    if len(distinct) == len(ids) or size > SHARED_REFERENCE_BYTES:
        return None

    def run(batch: Batch) -> list[tuple[Tensor, Tensor | None]]:
        if layer is None:
            lp, resid = _logprobs(eng, batch, []), None
        else:
            lp, resid = _logprobs_reading(eng, batch, layer)
        return [
            (lp[row, :n].cpu(), None if resid is None else resid[row, :n])
            for row, n in enumerate(batch.enc.lengths)
        ]

    with torch.inference_mode():
        got = map_batches(
            model, [ids[i] for i in distinct], run, batch_size=batch_size, side="right"
        )
    by_text = dict(zip(distinct, got, strict=True))
    refs = [by_text[o][0] for o in owner]
    return refs, None if layer is None else [by_text[o][1] for o in owner]  # type: ignore[misc]


def _repeated_resids(
    model: HookedModel, eng: Engine, ids: list[Tensor], batch_size: int, layer: int
) -> list[Tensor] | None:
    """Per row, the unsteered residual entering block ``layer`` of its text, each distinct
    text run once and only through the blocks below ``layer`` (``Engine.capture``); None
    where no text repeats (a whole steered pass per row costs no more)."""
    first: dict[tuple[int, ...], int] = {}
    owner = [first.setdefault(tuple(t.tolist()), i) for i, t in enumerate(ids)]
    distinct = sorted(first.values())
    if len(distinct) == len(ids):
        return None

    def run(batch: Batch) -> list[Tensor]:
        enc = batch.enc
        (resid,) = eng.capture(enc.input_ids, enc.attention_mask, [layer], "hook_resid_pre")
        return [resid[row, :n].clone() for row, n in enumerate(enc.lengths)]  # not the batch

    with torch.inference_mode(), eng.hooks([]):
        got = map_batches(
            model, [ids[i] for i in distinct], run, batch_size=batch_size, side="right"
        )
    by_text = dict(zip(distinct, got, strict=True))
    return [by_text[o] for o in owner]


def _unsteered(model: HookedModel, eng: Engine, ids: list[Tensor], batch_size: int) -> list[Tensor]:
    """Per text, its log-probabilities under no hooks of the call's own (CPU, float32)."""

    def run(batch: Batch) -> list[Tensor]:
        lp = _logprobs(eng, batch, [])
        return [lp[row, :n].cpu() for row, n in enumerate(batch.enc.lengths)]

    with torch.inference_mode():
        return map_batches(model, ids, run, batch_size=batch_size, side="right")


def _projection(state: ConditionState, row: int) -> float:
    assert state.projections is not None
    return float(state.projections[row])


def _logprobs(eng: Engine, batch: Batch, hooks: list[Any]) -> Tensor:
    """Log-softmax of the batch's logits under ``hooks`` (and whatever hooks are open)."""
    enc = batch.enc
    with eng.hooks(hooks):
        out = eng.forward(enc.input_ids, enc.attention_mask)
    return out.float().log_softmax(-1)


def reference_logprobs(
    model: HookedModel,
    texts: Sequence[str] | Sequence[Int[Tensor, " pos"]],
    *,
    batch_size: int = 16,
    engine: PassEngineName = "auto",
) -> list[Float[Tensor, "pos vocab"]]:
    """Per text, the unsteered next-token log-probabilities (CPU, float32), for
    ``steering_divergence(..., reference=...)``."""
    return _unsteered(
        model, resolve_engine(model, "hook_resid_post", engine), _ids(model, texts), batch_size
    )


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
    engine: PassEngineName,
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


def calibration_key(
    budget: float,
    texts_fingerprint: str,
    *,
    start: float = 1.0,
    max_alpha: float = 64.0,
    iterations: int = 12,
    rtol: float = 0.02,
) -> str:
    """The key of a calibration in ``vector.metadata["kl_alpha"]``: the budget, the texts'
    fingerprint (``texts_key`` of their token ids) and every search setting that can change
    the α found, e.g. ``"0.05@3f2a9c0d1b7e:start=1.0,max_alpha=64.0,iterations=12,rtol=0.02"``.
    The defaults are ``calibrate_alpha``'s. Numbers are written exactly (``repr`` of the float),
    so two settings share a key only when they are equal."""

    def num(x: float) -> str:
        return repr(float(x))

    return (
        f"{num(budget)}@{texts_fingerprint}:start={num(start)},max_alpha={num(max_alpha)},"
        f"iterations={int(iterations)},rtol={num(rtol)}"
    )


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
    engine: PassEngineName = "auto",
    use_cache: bool = True,
    reference: Sequence[Tensor] | None = None,
) -> list[float]:
    """Per vector, the α > 0 whose mean per-token KL on ``texts`` equals ``budget`` (nats).

    KL grows with α (about as α² for small α): from ``start`` each step goes to
    α·sqrt(budget / KL), kept strictly inside the bracket ``[lo, hi]`` found so far
    (``KL(lo) < budget <= KL(hi)``, else the bracket's geometric midpoint), until the KL is
    within ``rtol`` of the budget or ``iterations`` passes are spent; all vectors share each
    batched pass. KL need not be monotone in α: the bracket always holds a sign change and
    ``lo < hi``. ``reference``: the texts' unsteered log-probabilities
    (``reference_logprobs``), when the caller calibrates several budgets. The α returned is
    the probed one whose KL came closest to the budget (``max_alpha`` for a KL that grows
    with α and stays below the budget up to there); where that KL is not within ``rtol`` of
    the budget (out of reach, or out of iterations) the metadata records it as not reached.

    The result is cached in ``vector.metadata["kl_alpha"]`` under ``calibration_key`` (the
    budget, the texts' fingerprint and the search settings) as ``{"alpha", "kl", "reached",
    "n_texts"}``, so a saved vector carries its calibration and a second call with the same
    settings runs nothing.
    """
    vecs = [vectors] if isinstance(vectors, SteeringVector) else list(vectors)
    if not budget > 0:
        raise ValueError(f"budget must be > 0 (nats), got {budget}")
    if not 0 < start <= max_alpha:
        raise ValueError("need 0 < start <= max_alpha")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    ids = _ids(model, texts)
    if not ids:
        raise ValueError("calibration needs at least one text")
    key = calibration_key(
        budget, texts_key(ids), start=start, max_alpha=max_alpha, iterations=iterations, rtol=rtol
    )
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
    engine: PassEngineName,
    reference: list[Tensor],
) -> list[tuple[float, float, bool]]:
    """``_root_search`` with each step's KL measured on the model, every vector still
    searching in the same batched pass."""

    def kl_at(rows: list[int], alphas: list[float]) -> list[float]:
        return _mean_kl(model, ids, [vecs[i] for i in rows], alphas, batch_size, engine, reference)

    return _root_search(
        kl_at,
        len(vecs),
        budget,
        start=start,
        max_alpha=max_alpha,
        iterations=iterations,
        rtol=rtol,
    )


_StepObserver = Callable[[int, float, float, float, "float | None"], None]
"""``(row, α probed, its KL, lo, hi)``, called after each probe has updated the bracket."""


def _root_search(
    kl_at: Callable[[list[int], list[float]], Sequence[float]],
    n: int,
    budget: float,
    *,
    start: float,
    max_alpha: float,
    iterations: int,
    rtol: float,
    on_step: _StepObserver | None = None,
) -> list[tuple[float, float, bool]]:
    """A safeguarded root search of ``KL(α) = budget`` for ``n`` rows at once; ``kl_at(rows,
    alphas)`` gives each listed row's KL at its α (one batched pass). Returns per row
    ``(α, KL(α), reached)``: the probed α whose KL came closest to the budget, and whether
    that KL is within ``rtol`` of it.

    Per row a bracket ``lo < hi`` with ``KL(lo) < budget <= KL(hi)`` (``lo = 0``: KL 0; ``hi``
    unknown until a probe reaches the budget). Every probe lies strictly inside it, so it
    replaces the end of its own side and the bracket keeps a sign change and ``lo < hi``
    whether or not KL is monotone (a probe that contradicts monotonicity just moves the end
    it agrees with). The next probe is ``α · sqrt(budget / KL)`` (exact where KL grows as
    α², as it does for small α), grown up to ``max_alpha`` while there is no ``hi``; once
    there is, it is kept only when strictly inside the bracket and when the last step halved
    the bracket's log-width, else the geometric midpoint is probed (bisection on log α, so
    the search converges even where the steps do not). A row stops when its KL is within
    ``rtol``, at ``max_alpha`` still below the budget (not reachable), when its bracket
    cannot be split any further in floating point, or after ``iterations`` probes.
    A non-finite KL counts as above the budget."""
    lo = [0.0] * n
    hi: list[float | None] = [None] * n
    best: list[tuple[float, float] | None] = [None] * n  # (α, KL) closest to the budget
    alpha = [float(start)] * n
    done = [False] * n
    width: list[float] = [math.inf] * n  # log(hi / lo) before the last probe

    def gap(kl: float) -> float:
        return abs(kl - budget) if math.isfinite(kl) else math.inf

    for _ in range(iterations):
        active = [i for i in range(n) if not done[i]]
        if not active:
            break
        kls = kl_at(active, [alpha[i] for i in active])
        for i, kl in zip(active, kls, strict=True):
            a, kl = alpha[i], float(kl)
            b = best[i]
            if b is None or gap(kl) <= gap(b[1]):  # a tie: the later probe
                best[i] = (a, kl)
            if gap(kl) <= rtol * budget:
                done[i] = True
            elif math.isfinite(kl) and kl < budget:
                lo[i] = a
                if a >= max_alpha:
                    done[i] = True  # not reachable within max_alpha
            else:
                hi[i] = a
            if on_step is not None:
                on_step(i, a, kl, lo[i], hi[i])
            if done[i]:
                continue
            nxt = _next_alpha(a, kl, budget, lo[i], hi[i], max_alpha, width[i])
            h = hi[i]
            width[i] = math.log(h / lo[i]) if h is not None and lo[i] > 0 else math.inf
            if nxt is None:
                done[i] = True  # the bracket cannot be split any further
            else:
                alpha[i] = nxt
    out = []
    for i in range(n):
        a, kl = best[i] or (alpha[i], math.nan)
        out.append((a, kl, gap(kl) <= rtol * budget))
    return out


def _next_alpha(
    a: float,
    kl: float,
    budget: float,
    lo: float,
    hi: float | None,
    max_alpha: float,
    last_width: float,
) -> float | None:
    """The next probe, strictly inside ``(lo, hi)`` (``hi`` None: up to ``max_alpha``), or None
    where the bracket has no float strictly inside it."""
    step = a * math.sqrt(budget / kl) if math.isfinite(kl) and kl > 0 else math.nan
    if hi is None:  # still growing: KL(a) < budget, so the step goes up
        nxt = step if step > a else 2 * a
        nxt = min(nxt, max_alpha)
        return nxt if nxt > lo else None
    width = math.log(hi / lo) if lo > 0 else math.inf
    shrank = math.isinf(last_width) or width <= 0.5 * last_width
    midpoint = math.sqrt(lo * hi) if lo > 0 else hi / 2
    nxt = step if shrank and lo < step < hi else midpoint
    return nxt if lo < nxt < hi else None
