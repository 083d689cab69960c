"""One pair-activation table, many reducers: population, dislike-weighted, Bradley-Terry.

``pair_activations`` runs the model once over a set of preference pairs and keeps, per pair,
the pooled activations of the chosen and the rejected response with the pair's user, score
gap and category. Every reducer here works on that table without touching the model again:

* ``population``: the CAA mean difference, mean h(chosen) - mean h(rejected);
* ``dislike_weighted``: one user's pairs, each weighted by its score gap (how strongly the
  user disliked the rejected response);
* ``bradley_terry``: an SVD-orthogonalised basis of pair-difference directions, and per user
  the coordinates of a Bradley-Terry model (L2-regularised logistic regression, no intercept)
  fitted on the user's projected differences; user vector = basisᵀ · coordinates;
* shrinkage (``shrink=``): a user with few pairs is pulled toward the population, with weight
  ``n / (n + shrink)`` on the user's own estimate for a user with ``n`` pairs.

Pairs are steerlens ``PreferencePair`` records (activations pooled over the response tokens,
the prompt formatted as ``generate`` formats it) or plain ``(positive, negative)`` texts as
steering-vectors and repeng take them (read at the last token, raw text, as
steering-vectors' ``train_steering_vector`` does by default).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.core.models import HookedModel, default_layers, model_name
from steerlens.core.tokens import Prompt, response_masks
from steerlens.core.vectors import SteeringVector
from steerlens.data.schema import PreferencePair
from steerlens.methods.options import MethodOptions
from steerlens.run.cache import cache_activations
from steerlens.run.store import ActivationStore

__all__ = [
    "BradleyTerry",
    "PairActivations",
    "bradley_terry",
    "dislike_weighted",
    "pair_activations",
    "population",
    "shrinkage_weight",
]

TextPair = tuple[str, str]
_META = "pairs.json"


@dataclass
class PairActivations:
    """Pooled activations of each pair's chosen and rejected response, with its metadata.

    ``table`` has one row per pair: ``user_id``, ``score_gap``, ``category``,
    ``interaction_id``, ``turn`` (None / NaN for plain text pairs).
    """

    chosen: Float[Tensor, "pair layer d_model"]
    rejected: Float[Tensor, "pair layer d_model"]
    layers: list[int]
    hook: str
    model_name: str | None
    table: pd.DataFrame
    pool: str

    def __post_init__(self) -> None:
        if self.chosen.shape != self.rejected.shape or self.chosen.ndim != 3:
            raise ValueError(
                f"chosen {tuple(self.chosen.shape)} and rejected {tuple(self.rejected.shape)} "
                "must both be [pair, layer, d_model]"
            )
        if self.chosen.shape[1] != len(self.layers) or len(self.table) != self.chosen.shape[0]:
            raise ValueError("layers and table must match the activations")

    def __len__(self) -> int:
        return int(self.chosen.shape[0])

    @property
    def differences(self) -> Float[Tensor, "pair layer d_model"]:
        return self.chosen - self.rejected

    @property
    def users(self) -> list[str]:
        return sorted(str(u) for u in self.table["user_id"].dropna().unique())

    def subset(self, mask: Sequence[bool] | np.ndarray) -> PairActivations:
        """The pairs where ``mask`` is true (e.g. ``pa.table.user_id == "user003"``)."""
        keep = torch.as_tensor(np.array(mask, dtype=bool))
        if keep.numel() != len(self):
            raise ValueError(f"mask has {keep.numel()} entries for {len(self)} pairs")
        return PairActivations(
            self.chosen[keep],
            self.rejected[keep],
            self.layers,
            self.hook,
            self.model_name,
            self.table[keep.numpy()].reset_index(drop=True),
            self.pool,
        )

    def for_user(self, user: str) -> PairActivations:
        mask = (self.table["user_id"] == user).to_numpy()
        if not mask.any():
            raise KeyError(f"no pairs of user {user!r} ({len(self.users)} users in this table)")
        return self.subset(mask)

    # --- files ----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Two ``ActivationStore`` folders (``chosen/``, ``rejected/``) plus ``pairs.json``."""
        folder = Path(folder)
        if (folder / _META).exists():
            raise FileExistsError(f"{folder} already holds a pair-activation table")
        meta = dict(
            model_name=self.model_name,
            hook=self.hook,
            layers=self.layers,
            pool=self.pool,
            d_model=int(self.chosen.shape[-1]),
        )
        for side, acts in (("chosen", self.chosen), ("rejected", self.rejected)):
            store = ActivationStore.create(folder / side, **meta)
            store.append(list(acts))
        records = json.loads(self.table.to_json(orient="records"))
        (folder / _META).write_text(json.dumps({**meta, "pairs": records}, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> PairActivations:
        folder = Path(folder)
        if not (folder / _META).exists():
            raise FileNotFoundError(f"no pair-activation table at {folder} ({_META} missing)")
        meta = json.loads((folder / _META).read_text())
        chosen = ActivationStore.open(folder / "chosen").load()
        rejected = ActivationStore.open(folder / "rejected").load()
        assert isinstance(chosen, Tensor) and isinstance(rejected, Tensor)
        return cls(
            chosen,
            rejected,
            list(meta["layers"]),
            meta["hook"],
            meta["model_name"],
            pd.DataFrame(meta["pairs"]),
            meta["pool"],
        )


def pair_activations(
    model: HookedModel,
    pairs: Sequence[PreferencePair] | Sequence[TextPair],
    layers: Sequence[int] | None = None,
    *,
    hook: str = "hook_resid_post",
    pool: Literal["mean", "last"] | None = None,
    chat: bool | None = None,
    batch_size: int = 16,
    progress_bar: bool = True,
) -> PairActivations:
    """Cache the pooled chosen and rejected activations of every pair, once.

    Args:
        pairs: ``PreferencePair`` records, or ``(positive, negative)`` text pairs.
        pool: ``"mean"`` over the response tokens (default for records) or ``"last"`` token
            (default for text pairs, as steering-vectors reads them).
        chat: records: the prompt through the chat template (default: when the model has
            one); text pairs are raw text unless ``chat=True``.
    """
    if isinstance(pairs, str) or not len(pairs):
        raise ValueError("pair_activations needs a non-empty list of pairs")
    layer_list = list(default_layers(model) if layers is None else layers)
    n = len(pairs)
    if all(isinstance(p, PreferencePair) for p in pairs):
        recs = [p for p in pairs if isinstance(p, PreferencePair)]
        prompts: list[Prompt] = [p.messages() if p.history else p.prompt for p in recs]
        ids_c, m_c = response_masks(model, prompts, [p.chosen for p in recs], chat=chat)
        ids_r, m_r = response_masks(model, prompts, [p.rejected for p in recs], chat=chat)
        use_pool = pool or "mean"
        acts = cache_activations(
            model,
            ids_c + ids_r,
            layer_list,
            hook=hook,
            pool=use_pool,
            masks=m_c + m_r,
            batch_size=batch_size,
            progress_bar=progress_bar,
        )
        table = pd.DataFrame(
            {
                "user_id": [p.user_id for p in recs],
                "score_gap": [float(p.score_gap) for p in recs],
                "category": [p.category for p in recs],
                "interaction_id": [p.interaction_id for p in recs],
                "turn": [p.turn for p in recs],
            }
        )
    elif all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
        texts = [str(p[0]) for p in pairs] + [str(p[1]) for p in pairs]  # type: ignore[index]
        use_pool = pool or "last"
        acts = cache_activations(
            model,
            texts,
            layer_list,
            hook=hook,
            pool=use_pool,
            chat=bool(chat),
            batch_size=batch_size,
            progress_bar=progress_bar,
        )
        table = pd.DataFrame(
            {
                "user_id": [None] * n,
                "score_gap": [1.0] * n,
                "category": [None] * n,
                "interaction_id": [None] * n,
                "turn": [None] * n,
            }
        )
    else:
        raise TypeError(
            "pairs must be all PreferencePair records or all (positive, negative) texts"
        )
    assert isinstance(acts, Tensor)
    return PairActivations(acts[:n], acts[n:], layer_list, hook, model_name(model), table, use_pool)


def _vector(
    pa: PairActivations, directions: Tensor, method: str, **provenance: Any
) -> SteeringVector:
    return SteeringVector.from_tensor(
        directions.float(),
        pa.layers,
        model_name=pa.model_name,
        hook=pa.hook,
        method=method,
        metadata={"pool": pa.pool, **provenance},
    )


def population(pa: PairActivations) -> SteeringVector:
    """CAA: mean h(chosen) - mean h(rejected) over every pair of the table."""
    if len(pa) == 0:
        raise ValueError("population needs at least one pair")
    diff = pa.chosen.mean(0) - pa.rejected.mean(0)
    users = pa.users
    return _vector(pa, diff, "population", n_pairs=len(pa), n_users=len(users), users=users[:50])


def shrinkage_weight(n_pairs: int | float, shrink: float) -> float:
    """Weight ``n / (n + shrink)`` on a user's own estimate (``shrink=0``: the user's alone).

    It grows with the user's pair count: with ``shrink=5`` a PRISM-like user with 5 pairs gets
    0.5, one with 45 pairs 0.9.
    """
    if shrink < 0:
        raise ValueError(f"shrink must be >= 0, got {shrink}")
    if n_pairs <= 0:
        return 0.0
    return float(n_pairs) / (float(n_pairs) + shrink) if shrink else 1.0


def dislike_weighted(
    pa: PairActivations, user: str, *, shrink: float = MethodOptions.shrink
) -> SteeringVector:
    """The user's pairs, each difference weighted by its score gap, normalised by the weights.

    v = Σ gapᵢ (h(chosenᵢ) - h(rejectedᵢ)) / Σ gapᵢ over the user's pairs; with ``shrink > 0``
    the result is blended with the population vector of the whole table,
    λ·v + (1 - λ)·v_pop with λ = ``shrinkage_weight(n_user_pairs, shrink)``.
    """
    own = pa.for_user(user)
    gaps = torch.tensor(own.table["score_gap"].to_numpy(dtype=np.float64)).float()
    if (gaps < 0).any():
        raise ValueError(f"user {user!r} has pairs with a negative score gap")
    if float(gaps.sum()) == 0:
        raise ValueError(f"user {user!r} has only zero score gaps: nothing to weight")
    w = (gaps / gaps.sum()).view(-1, 1, 1)
    v = (w * own.differences).sum(0)
    lam = shrinkage_weight(len(own), shrink)
    if lam < 1.0:
        v = lam * v + (1 - lam) * (pa.chosen.mean(0) - pa.rejected.mean(0))
    return _vector(
        pa, v, "dislike_weighted", users=[user], n_pairs=len(own), shrink=shrink, weight=lam
    )


@dataclass
class BradleyTerry:
    """A Bradley-Terry ideal-point model of users in a basis of pair-difference directions.

    ``basis``: ``[rank, layer, d_model]``, orthonormal over the flattened (layer, d_model)
    space. ``coordinates``: one row per user (and ``"__population__"``, fitted on every pair),
    columns ``c0..c{rank-1}`` plus ``n_pairs``.
    """

    basis: Float[Tensor, "rank layer d_model"]
    coordinates: pd.DataFrame
    layers: list[int]
    hook: str
    model_name: str | None
    C: float
    singular_values: Float[Tensor, " rank"]

    POPULATION = "__population__"

    @property
    def rank(self) -> int:
        return int(self.basis.shape[0])

    def coords(self, user: str, shrink: float = MethodOptions.shrink) -> Tensor:
        """The user's coordinates, shrunk toward the population's with ``shrink > 0``."""
        if user not in self.coordinates.index:
            raise KeyError(f"no Bradley-Terry coordinates for user {user!r}")
        cols = [f"c{i}" for i in range(self.rank)]
        c = torch.tensor(self.coordinates.loc[user, cols].to_numpy(dtype=np.float64)).float()
        lam = shrinkage_weight(float(self.coordinates.loc[user, "n_pairs"]), shrink)
        if lam < 1.0:
            pop = self.coordinates.loc[self.POPULATION, cols].to_numpy(dtype=np.float64)
            c = lam * c + (1 - lam) * torch.tensor(pop).float()
        return c

    def user_vector(self, user: str, *, shrink: float = MethodOptions.shrink) -> SteeringVector:
        """basisᵀ · coordinates, as a ``SteeringVector`` on the table's layers."""
        c = self.coords(user, shrink)
        directions = torch.einsum("k,kld->ld", c, self.basis)
        return SteeringVector.from_tensor(
            directions,
            self.layers,
            model_name=self.model_name,
            hook=self.hook,
            method="bradley_terry",
            metadata={
                "users": [user],
                "rank": self.rank,
                "C": self.C,
                "shrink": shrink,
                "n_pairs": int(self.coordinates.loc[user, "n_pairs"]),
            },
        )

    def project(self, pa: PairActivations) -> Float[Tensor, "pair rank"]:
        """Each pair's difference in the basis (the features the BT model scores)."""
        return torch.einsum("pld,kld->pk", pa.differences.float(), self.basis)


def _fit_bt(x: np.ndarray, C: float) -> np.ndarray:
    """BT coordinates: P(chosen ≻ rejected) = σ(c·x), fitted on (x, 1) and (-x, 0), each
    mirrored copy weighted 1/2 so that ``C`` is scikit-learn's C on the pairs themselves."""
    from sklearn.linear_model import LogisticRegression

    features = np.concatenate([x, -x])
    labels = np.concatenate([np.ones(len(x)), np.zeros(len(x))])
    clf = LogisticRegression(C=C, fit_intercept=False, max_iter=1000)
    clf.fit(features, labels, sample_weight=np.full(len(features), 0.5))
    return np.asarray(clf.coef_[0], dtype=np.float64)


def bradley_terry(
    pa: PairActivations, rank: int = MethodOptions.rank, *, C: float = MethodOptions.C
) -> BradleyTerry:
    """Fit the basis (top right-singular vectors of the pair differences) and every user.

    The differences are flattened over (layer, d_model); their top ``rank`` right-singular
    vectors form the orthonormal basis. Each user's coordinates are fitted on the user's own
    projected differences (``C``: inverse L2 strength, scikit-learn's convention); the
    population row is fitted on all pairs. A user's vector is then ``basisᵀ · coordinates``:
    smaller than a mean difference, so it needs a larger α (the research used 7.5-17.5 vs
    0.3-0.6 for population vectors).
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    n, n_layers, d = pa.differences.shape
    if n < 2:
        raise ValueError("bradley_terry needs at least two pairs")
    flat = pa.differences.reshape(n, -1).double()
    _, s, vh = torch.linalg.svd(flat, full_matrices=False)
    k = min(rank, int(vh.shape[0]))
    basis = vh[:k].float().reshape(k, n_layers, d)
    x = (flat @ vh[:k].T).numpy()
    rows = {BradleyTerry.POPULATION: (_fit_bt(x, C), n)}
    users = pa.table["user_id"].to_numpy()
    for user in pa.users:
        mask = users == user
        rows[user] = (_fit_bt(x[mask], C), int(mask.sum()))
    coords = pd.DataFrame(
        [[*c, m] for c, m in rows.values()],
        index=list(rows),
        columns=[*(f"c{i}" for i in range(k)), "n_pairs"],
    )
    coords["n_pairs"] = coords["n_pairs"].astype(int)
    return BradleyTerry(basis, coords, pa.layers, pa.hook, pa.model_name, C, s[:k].float())
