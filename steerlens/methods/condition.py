"""``fit_condition``: learn where to steer from labelled prompts.

A ``Condition`` (``steerlens.core.conditions``) steers a prompt when its pooled activation
projects above a threshold. Here the direction comes from pooled prompt activations
(``cache_activations``, pooled exactly as the condition pools at run time) of prompts
labelled True (steer) / False (do not): their mean difference, or a logistic probe
(scikit-learn). The threshold is chosen on the same prompts (``choose_threshold``): give it
the study's *selection* prompts only, and report on others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from steerlens.core.conditions import Condition, ConditionPool
from steerlens.core.engines import PassEngineName
from steerlens.core.models import HookedModel, default_layers, model_name
from steerlens.core.tokens import Prompt
from steerlens.run.cache import cache_activations

__all__ = ["ConditionMethod", "choose_threshold", "fit_condition"]

logger = logging.getLogger(__name__)
ConditionMethod = Literal["mean-diff", "logistic"]


def choose_threshold(
    projections: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray
) -> float:
    """The threshold with the highest balanced accuracy of ``projection > threshold`` against
    ``labels`` (candidates: midpoints between neighbouring projections, and below all of
    them); ties go to the candidate nearest the middle of the tied range."""
    p = np.asarray(projections, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    _check_labels(y, len(p))
    values = np.unique(p)
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2])
    pos, neg = y.sum(), (~y).sum()
    scores = np.array(
        [((p > t) & y).sum() / pos / 2 + ((p <= t) & ~y).sum() / neg / 2 for t in candidates]
    )
    best = np.flatnonzero(scores == scores.max())
    return float(candidates[best[len(best) // 2]])


def _check_labels(y: np.ndarray, n: int) -> None:
    if len(y) != n:
        raise ValueError(f"{len(y)} labels for {n} prompts")
    if y.all() or not y.any():
        raise ValueError("labels must hold both True (steer) and False (do not) prompts")


def fit_condition(
    model: HookedModel,
    prompts: Sequence[Prompt],
    labels: Sequence[bool],
    layer: int | None = None,
    *,
    hook: str = "hook_resid_post",
    pool: ConditionPool = "mean",
    method: ConditionMethod = "mean-diff",
    soft: float | None = None,
    chat: bool | None = None,
    batch_size: int = 16,
    engine: PassEngineName = "auto",
    progress_bar: bool = False,
    threshold_on: tuple[Sequence[Prompt], Sequence[bool]] | None = None,
) -> Condition:
    """A ``Condition`` from prompts labelled True (steering helps there) or False.

    Args:
        prompts / labels: e.g. the study's selection prompts, labelled by whether steering
            lowered their toxicity error (or raised their utility) at the operating α, or
            by category. Both labels must occur.
        layer: the residual-stream point read (default: the middle of ``default_layers``).
        pool: ``"mean"`` over each prompt's content tokens, or its ``"last"`` token, as the
            condition pools at run time.
        method: ``"mean-diff"`` (the unit mean difference of True and False prompts) or
            ``"logistic"`` (scikit-learn's L2 logistic regression on standardised
            activations, mapped back to a unit direction in the residual stream).
        soft: the condition's temperature (None: hard decisions).
        threshold_on: other labelled prompts to choose the threshold on (e.g. the study's
            selection prompts, with the direction fitted on many more training prompts);
            default: the fitting prompts.

    The threshold maximises balanced accuracy (``choose_threshold``) on ``threshold_on`` or
    the fitting prompts; ``metadata`` records the method, the counts and that accuracy.
    """
    if method not in ("mean-diff", "logistic"):
        raise ValueError(f"method must be 'mean-diff' or 'logistic', got {method!r}")
    y = np.asarray([bool(x) for x in labels])
    _check_labels(y, len(prompts))
    if layer is None:
        layers = default_layers(model)
        layer = layers[len(layers) // 2]

    def pooled(texts: Sequence[Prompt]) -> np.ndarray:
        """``[n, d_model]`` float64: the texts pooled as the condition pools at run time."""
        acts = cache_activations(
            model,
            list(texts),  # type: ignore[arg-type]
            [layer],
            hook=hook,
            pool=pool,
            chat=chat,
            batch_size=batch_size,
            engine=engine,
            progress_bar=progress_bar,
        )
        assert isinstance(acts, torch.Tensor)
        return acts[:, 0].double().cpu().numpy()  # type: ignore[no-any-return]

    x = pooled(prompts)
    direction = _direction(x, y, method)
    if threshold_on is not None:  # the same pooling, on the threshold's own prompts
        t_prompts, t_labels = threshold_on
        y = np.asarray([bool(v) for v in t_labels])
        _check_labels(y, len(t_prompts))
        x = pooled(t_prompts)
    projections = x @ direction
    threshold = choose_threshold(projections, y)
    chosen = projections > threshold
    balanced = 0.5 * (chosen[y].mean() + (~chosen[~y]).mean())
    logger.info(
        "fit_condition (%s, layer %d): balanced accuracy %.3f on the threshold's %d prompts",
        method,
        layer,
        balanced,
        len(y),
    )
    return Condition(
        torch.from_numpy(direction).float(),
        int(layer),
        threshold,
        pool=pool,
        soft=soft,
        hook=hook,
        metadata={
            "method": method,
            "model_name": model_name(model),
            "n_prompts": len(prompts),
            "n_steer": int(sum(bool(v) for v in labels)),
            "n_threshold_prompts": len(y),
            "threshold_balanced_accuracy": round(float(balanced), 4),
        },
    )


def _direction(x: np.ndarray, y: np.ndarray, method: ConditionMethod) -> np.ndarray:
    """A unit direction separating the True from the False rows of ``x``."""
    if method == "mean-diff":
        d = x[y].mean(axis=0) - x[~y].mean(axis=0)
    else:
        from sklearn.linear_model import LogisticRegression

        mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-8
        probe = LogisticRegression(max_iter=2000, class_weight="balanced")
        probe.fit((x - mu) / sd, y)
        d = probe.coef_[0] / sd  # the same decision function on the raw activations
    norm = float(np.linalg.norm(d))
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("the labelled prompts' activations do not separate (zero direction)")
    return d / norm
