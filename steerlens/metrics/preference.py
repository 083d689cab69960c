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
  simulator's own attribute measures, z-scored with the set's statistics and each z-score
  clipped to ``±Z_BOUND``. It is a keyword-density utility (caution and formality count
  words), so on its own a text stuffed with one keyword can score high;
* ``utility_gain``: steered minus unsteered utility of a prompt, floored at 0 for a
  degenerate or empty steered output (collapse never counts as a gain).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

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
    "Z_BOUND",
    "ground_truth_utility",
    "oracle",
    "ppa_projection",
    "ppa_under_steering",
    "score_predictions",
    "toxicity_only",
    "unsteered_margins",
    "utility_gain",
]

CHANCE = 0.5

Z_BOUND = 3.0
"""Each attribute's z-score in ``ground_truth_utility`` is clipped to ``[-Z_BOUND, Z_BOUND]``:
the measures are bounded except ``length``, and a text beyond 3 s.d. of the simulated
responses (about 2-3 % of them on caution or formality, none on the others) earns no more.
A hard clip, not a smooth squash, so texts within the bound keep the simulator's utility."""


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
    *,
    bound: float | None = Z_BOUND,
) -> list[float]:
    """Each text's latent utility to its user: Σ_a w_user[a] · clip(z_a(text), ±bound).

    ``ground_truth`` is the simulated set's ``ground_truth.json`` (``PrismDataset.ground_truth``):
    the users' weights and the attribute means and standard deviations the z-scores use.
    ``bound=None``: unclipped, the simulator's own utility (``oracle``). A keyword-density
    measure: compare steered texts with ``utility_gain``, which floors collapsed outputs.
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
        z = {k: (a[k] - mean[k]) / (std[k] or 1.0) for k in ATTRIBUTES if k in w}
        if bound is not None:
            z = {k: min(bound, max(-bound, v)) for k, v in z.items()}
        out.append(float(sum(w[k] * v for k, v in z.items())))
    return out


def utility_gain(
    steered_utility: ArrayLike, unsteered_utility: ArrayLike, degenerate: ArrayLike
) -> np.ndarray:
    """Per row, steered minus unsteered utility of the same prompt, but never above 0 where
    the steered output is ``degenerate`` (pass degenerate-or-empty flags): a collapsed or
    empty output can lose utility, never gain it, however its keywords score. NaN stays NaN."""
    gain = np.asarray(steered_utility, dtype=float) - np.asarray(unsteered_utility, dtype=float)
    flag = np.asarray(degenerate, dtype=bool)
    if flag.shape != gain.shape:
        raise ValueError(f"{flag.shape} degenerate flags for {gain.shape} gains")
    return np.where(flag, np.minimum(gain, 0.0), gain)


def oracle(
    test: Sequence[PreferencePair],
    ground_truth: Mapping[str, Any],
    scorer: ToxicityScorer | None = None,
    **boot: Any,
) -> Estimate:
    """PPA of each user's own latent utility on the held-out pairs (simulated data only)."""
    users = [p.user_id for p in test]
    # the simulator's own utility, unclipped: the pairs were drawn with it
    u_c = ground_truth_utility([p.chosen for p in test], users, ground_truth, scorer, bound=None)
    u_r = ground_truth_utility([p.rejected for p in test], users, ground_truth, scorer, bound=None)
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
