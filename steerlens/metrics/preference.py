"""Did personalisation work? Preference accuracy (PPA) and ground-truth utility.

Every estimate is a mean over users with a bootstrap 95 % interval over users (a user's
accuracy is the share of that user's held-out pairs predicted right; ties count one half).

* ``ppa_projection``: predict the chosen response of a held-out pair by the sign of
  (h(chosen) - h(rejected)) · v_user, summed over the vector's layers;
* ``toxicity_only``: the study's baseline, choosing by toxicity alone (the direction —
  less or more toxic — is the one the training pairs prefer overall);
* ``oracle`` (simulated data): each user's own latent utility, the ceiling of any method;
* ``ppa_under_steering``: the share of held-out pairs whose per-token log-likelihood margin
  (chosen over rejected) rises when the user's vector is active at α;
* ``ground_truth_utility`` (simulated data): the user's latent utility of any texts, from the
  simulator's own attribute measures, z-scored with the set's statistics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from steerlens.core.hooks import GateSpec, steering
from steerlens.core.models import HookedModel
from steerlens.core.vectors import SteeringVector
from steerlens.data.schema import PreferencePair
from steerlens.methods.personal import PairActivations
from steerlens.metrics.attributes import ATTRIBUTES, measure
from steerlens.metrics.stats import Estimate, estimate
from steerlens.metrics.toxicity import ToxicityScorer, get_scorer
from steerlens.run.scoring import continuation_logprobs

__all__ = [
    "CHANCE",
    "ground_truth_utility",
    "oracle",
    "ppa_projection",
    "ppa_under_steering",
    "score_predictions",
    "toxicity_only",
    "unsteered_margins",
]

CHANCE = 0.5


def score_predictions(margins: Sequence[float], users: Sequence[str], **boot: Any) -> Estimate:
    """PPA from per-pair margins (> 0: the chosen response predicted; 0: a tie, half right;
    NaN, e.g. an empty response: left out)."""
    m = np.asarray(margins, dtype=float)
    right = np.where(np.isnan(m), np.nan, np.where(m > 0, 1.0, np.where(m < 0, 0.0, 0.5)))
    return estimate(right.tolist(), list(users), **boot)


def ppa_projection(
    pa: PairActivations,
    vectors: SteeringVector | Mapping[str, SteeringVector],
    **boot: Any,
) -> Estimate:
    """PPA of held-out pairs by projection on one vector or on each user's own vector."""
    users = [str(u) for u in pa.table["user_id"]]
    diffs = pa.differences.float()
    margins = []
    for i, user in enumerate(users):
        vec = vectors if isinstance(vectors, SteeringVector) else vectors.get(user)
        if vec is None:
            raise KeyError(f"no vector for user {user!r}")
        missing = [lyr for lyr in vec.layers if lyr not in pa.layers]
        if missing:
            raise ValueError(f"the vector's layers {missing} are not in the table ({pa.layers})")
        margins.append(
            sum(
                float(diffs[i, pa.layers.index(lyr)] @ d.float().cpu())
                for lyr, d in vec.directions.items()
            )
        )
    return score_predictions(margins, users, **boot)


def toxicity_only(
    test: Sequence[PreferencePair],
    train: Sequence[PreferencePair],
    scorer: ToxicityScorer | None = None,
    **boot: Any,
) -> Estimate:
    """Choose by toxicity alone, in the direction the training pairs prefer overall."""
    score = scorer or get_scorer()
    tr = score([p.chosen for p in train] + [p.rejected for p in train])
    n = len(train)
    sign = float(np.sign(np.mean(np.subtract(tr[:n], tr[n:])))) if n else -1.0
    te = score([p.chosen for p in test] + [p.rejected for p in test])
    k = len(test)
    margins = [sign * (c - r) for c, r in zip(te[:k], te[k:], strict=True)]
    return score_predictions(margins, [p.user_id for p in test], **boot)


def ground_truth_utility(
    texts: Sequence[str],
    users: Sequence[str],
    ground_truth: Mapping[str, Any],
    scorer: ToxicityScorer | None = None,
) -> list[float]:
    """Each text's latent utility to its user: Σ_a w_user[a] · z_a(text).

    ``ground_truth`` is the simulated set's ``ground_truth.json`` (``PrismDataset.ground_truth``):
    the users' weights and the attribute means and standard deviations the z-scores use.
    """
    if len(texts) != len(users):
        raise ValueError(f"{len(texts)} texts for {len(users)} users")
    if not ground_truth or "users" not in ground_truth:
        raise ValueError("ground-truth utility needs a simulated set's ground_truth.json")
    mean, std = ground_truth["attribute_mean"], ground_truth["attribute_std"]
    attrs = measure(list(texts), scorer)
    out = []
    for a, user in zip(attrs, users, strict=True):
        w = ground_truth["users"][user]["weights"]
        out.append(
            float(sum(w[k] * (a[k] - mean[k]) / (std[k] or 1.0) for k in ATTRIBUTES if k in w))
        )
    return out


def oracle(
    test: Sequence[PreferencePair],
    ground_truth: Mapping[str, Any],
    scorer: ToxicityScorer | None = None,
    **boot: Any,
) -> Estimate:
    """PPA of each user's own latent utility on the held-out pairs (simulated data only)."""
    users = [p.user_id for p in test]
    u_c = ground_truth_utility([p.chosen for p in test], users, ground_truth, scorer)
    u_r = ground_truth_utility([p.rejected for p in test], users, ground_truth, scorer)
    return score_predictions(np.subtract(u_c, u_r).tolist(), users, **boot)


def unsteered_margins(
    model: HookedModel, test: Sequence[PreferencePair], batch_size: int = 16
) -> np.ndarray:
    """Per pair, mean log-prob of the chosen response minus that of the rejected one."""
    prompts = [p.messages() if p.history else p.prompt for p in test]
    chosen = continuation_logprobs(model, prompts, [p.chosen for p in test], batch_size=batch_size)
    rejected = continuation_logprobs(
        model, prompts, [p.rejected for p in test], batch_size=batch_size
    )
    return np.array(
        [float(c.mean()) - float(r.mean()) for c, r in zip(chosen, rejected, strict=True)]
    )


def ppa_under_steering(
    model: HookedModel,
    test: Sequence[PreferencePair],
    vectors: SteeringVector | Mapping[str, SteeringVector],
    alpha: float,
    *,
    gate: GateSpec = "all",
    batch_size: int = 16,
    base_margins: np.ndarray | None = None,
    **boot: Any,
) -> Estimate:
    """Share of held-out pairs whose per-token log-likelihood margin (chosen over rejected)
    rises when the user's vector is active at ``alpha`` (one batched pass: a vector per row).

    ``base_margins``: the unsteered margins of these pairs from an earlier call's
    ``unsteered_margins`` (several vectors scored on one test set share them)."""
    if not test:
        raise ValueError("no held-out pairs")
    base = unsteered_margins(model, test, batch_size) if base_margins is None else base_margins
    if len(base) != len(test):
        raise ValueError(f"{len(base)} base margins for {len(test)} pairs")
    per_row = [vectors if isinstance(vectors, SteeringVector) else vectors[p.user_id] for p in test]
    with torch.inference_mode(), steering(model, per_row, alpha=alpha, gate=gate):
        steered = unsteered_margins(model, test, batch_size)
    return score_predictions((steered - base).tolist(), [p.user_id for p in test], **boot)
