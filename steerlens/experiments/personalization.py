"""The personalisation study: every vector method against the baselines, on held-out pairs.

``personalization_study(model, dataset, config)`` splits a PRISM-format set per user, caches
one pair-activation table for the training pairs and one for the held-out pairs, builds the
population, dislike-weighted and Bradley-Terry vectors from the training table and scores
each on the held-out table — PPA by projection and, optionally, PPA under steering — next to
the toxicity-only baseline, chance and (simulated sets) the oracle. Every row carries a
bootstrap 95 % interval over users.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from steerlens.core.models import HookedModel
from steerlens.core.vectors import SteeringVector
from steerlens.data.prism import PrismDataset
from steerlens.data.schema import PreferencePair
from steerlens.experiments.config import RunSection, as_section
from steerlens.methods.personal import (
    BradleyTerry,
    pair_activations,
)
from steerlens.methods.registry import METHODS, MethodOptions, get_method, method_label
from steerlens.metrics.preference import (
    CHANCE,
    ground_truth_utility,
    oracle,
    ppa_projection,
    ppa_under_steering,
    toxicity_only,
    utility_gain,
)
from steerlens.metrics.stats import Estimate, estimate, paired_difference
from steerlens.metrics.text import degenerate
from steerlens.run.generation import generate

__all__ = [
    "PersonalizationConfig",
    "PersonalizationResult",
    "personalization_study",
    "study_split",
]

POP, DIS, BT = "population", "dislike-weighted", "bradley-terry"  # registry names


@dataclass
class PersonalizationConfig:
    """Options of the study (defaults: the shipped simulated set on the embedded model)."""

    layers: list[int] | None = None
    held_out: float = 0.25
    # Prompt-disjoint by default: on a set whose users share responses (the simulated one, and
    # PRISM's shared prompts), a per-conversation split puts held-out texts in other users'
    # training pairs.
    split_by: Literal["conversation", "prompt"] = "prompt"
    # methods whose vectors the result carries (``vectors``); the PPA table always scores the
    # population, dislike-weighted and Bradley-Terry vectors
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    options: MethodOptions = field(default_factory=MethodOptions)  # rank, C, shrink
    steer_alpha: float | None = None  # None: skip PPA under steering
    max_steer_pairs: int = 192  # spread over users: 4 each on the shipped set
    max_users: int | None = None  # the first N users (sorted ids) for quick runs
    # Ground-truth utility of steered generations (simulated sets): None skips it.
    utility_alpha: float | None = None
    utility_prompts_per_user: int = 2
    utility_tokens: int = 48
    n_boot: int = 1000
    run: RunSection = field(default_factory=RunSection)  # seed, device, batch size

    def __post_init__(self) -> None:
        self.options = as_section(self.options, MethodOptions)
        self.run = as_section(self.run, RunSection)
        if not 0 < self.held_out < 1:
            raise ValueError(f"held_out must be in (0, 1), got {self.held_out}")
        if self.split_by not in ("conversation", "prompt"):
            raise ValueError(f"split_by must be 'conversation' or 'prompt', got {self.split_by!r}")
        for name in self.methods:
            get_method(name)
        if self.max_steer_pairs < 1:
            raise ValueError(f"max_steer_pairs must be >= 1, got {self.max_steer_pairs}")


@dataclass
class PersonalizationResult:
    """The PPA table, the vectors, and the users in the Bradley-Terry basis."""

    table: pd.DataFrame  # method, measure, mean, low, high, n
    utility_by_group: pd.DataFrame | None  # method, group, mean, low, high, n
    population: SteeringVector
    dislike: dict[str, SteeringVector]
    bt: BradleyTerry
    bt_vectors: dict[str, SteeringVector]
    config: PersonalizationConfig
    n_train: int
    n_test: int
    test_pairs: list[Any] = field(default_factory=list)  # the held-out pairs it scored
    # per method of config.methods (registry names): its vector, or per-user vectors
    vectors: dict[str, Any] = field(default_factory=dict)

    def users_in_basis(self, groups: dict[str, str] | None = None) -> pd.DataFrame:
        """Each user's BT coordinates (population row dropped), with their group if known."""
        coords = self.bt.coordinates.drop(index=BradleyTerry.POPULATION).copy()
        if groups is not None:
            coords["group"] = [groups.get(u, "unknown") for u in coords.index]
        return coords

    def summary(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "n_train_pairs": self.n_train,
            "n_test_pairs": self.n_test,
            "rows": self.table.to_dict(orient="records"),
            "utility_by_group": None
            if self.utility_by_group is None
            else self.utility_by_group.to_dict(orient="records"),
        }


def _row(method: str, measure: str, est: Estimate | float) -> dict[str, Any]:
    if isinstance(est, Estimate):
        return {"method": method, "measure": measure, **est.as_dict()}
    return {"method": method, "measure": measure, "mean": est, "low": est, "high": est, "n": 0}


def _per_user_sample(pairs: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` pairs spread evenly over users (each user's first pairs, round-robin)."""
    by_user: dict[str, list[Any]] = {}
    for p in pairs:
        by_user.setdefault(p.user_id, []).append(p)
    out: list[Any] = []
    depth = 0
    while len(out) < min(limit, len(pairs)):
        for user in sorted(by_user):
            if depth < len(by_user[user]) and len(out) < limit:
                out.append(by_user[user][depth])
        depth += 1
    return out


def study_split(
    dataset: PrismDataset, cfg: PersonalizationConfig
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """The study's training and held-out turn-0 pairs (seeded: the same on every call); every
    held-out user has training pairs."""
    users_kw = {} if cfg.max_users is None else {"users": sorted(dataset.users)[: cfg.max_users]}
    train, test = dataset.split(
        cfg.held_out, cfg.run.seed, by=cfg.split_by, turn0_only=True, **users_kw
    )
    if not train or not test:
        raise ValueError(f"the split left {len(train)} training and {len(test)} held-out pairs")
    train_users = {p.user_id for p in train}
    return train, [p for p in test if p.user_id in train_users]


def personalization_study(
    model: HookedModel,
    dataset: PrismDataset,
    config: PersonalizationConfig | None = None,
    *,
    progress_bar: bool = True,
) -> PersonalizationResult:
    """Run the study (turn-0 pairs: later-turn pairs of one style are near coin flips)."""
    cfg = config or PersonalizationConfig()
    train, test = study_split(dataset, cfg)
    kw: dict[str, Any] = dict(batch_size=cfg.run.batch_size, progress_bar=progress_bar)
    pa_train = pair_activations(model, train, cfg.layers, **kw)
    pa_test = pair_activations(model, test, pa_train.layers, **kw)
    boot: dict[str, Any] = dict(n_boot=cfg.n_boot, seed=cfg.run.seed)

    opts = cfg.options
    names = list(dict.fromkeys([POP, DIS, BT, *(get_method(m).name for m in cfg.methods)]))
    fits = {name: get_method(name).fit(pa_train, opts) for name in names}
    v_pop = fits[POP].vector("")
    users = sorted({p.user_id for p in test})
    dislike = {u: fits[DIS].vector(u) for u in users}
    bt = fits[BT].state
    bt_vecs = {u: fits[BT].vector(u) for u in users}

    bt_est = ppa_projection(pa_test, bt_vecs, **boot)
    dis_est = ppa_projection(pa_test, dislike, **boot)
    pop_est = ppa_projection(pa_test, v_pop, **boot)
    rows = [
        _row(method_label(BT), "ppa_projection", bt_est),
        _row(method_label(DIS), "ppa_projection", dis_est),
        _row(method_label(POP), "ppa_projection", pop_est),
        _row("toxicity-only", "ppa_projection", toxicity_only(test, train, **boot)),
        _row("chance", "ppa_projection", CHANCE),
    ]
    rows += [  # the same users, paired: does personalisation beat the population vector?
        _row(f"{name} − population", "ppa_projection_paired", paired_difference(e, pop_est, **boot))
        for name, e in (("dislike-weighted", dis_est), ("Bradley-Terry", bt_est))
    ]
    # every other chosen method (a registered one beyond the three): its rows too
    known: dict[str, Any] = {POP: v_pop, DIS: dislike, BT: bt_vecs}
    for name in names:
        if name in known:
            continue
        spec = get_method(name)
        known[name] = (
            {u: fits[name].vector(u) for u in users} if spec.per_user else fits[name].vector("")
        )
        est = ppa_projection(pa_test, known[name], **boot)
        rows.append(_row(spec.label, "ppa_projection", est))
        rows.append(
            _row(
                f"{spec.label} − population",
                "ppa_projection_paired",
                paired_difference(est, pop_est, **boot),
            )
        )
    if dataset.ground_truth is not None and "users" in dataset.ground_truth:
        orc = oracle(test, dataset.ground_truth, **boot)
        rows.append(_row("oracle", "ppa_projection", orc))
        rows.append(  # how far below the ceiling personalisation stays, on the same users
            _row(
                "oracle − dislike-weighted",
                "ppa_projection_paired",
                paired_difference(orc, dis_est, **boot),
            )
        )
    if cfg.steer_alpha is not None:
        norms = v_pop.norms()
        steer_pairs = _per_user_sample(test, cfg.max_steer_pairs)
        for name in dict.fromkeys([BT, DIS, POP, *names]):  # every chosen method
            vecs = known[name]
            per_user = vecs if isinstance(vecs, dict) else {u: vecs for u in users}
            scaled = {u: v.rescaled(norms) for u, v in per_user.items()}
            est = ppa_under_steering(
                model, steer_pairs, scaled, cfg.steer_alpha, batch_size=cfg.run.batch_size, **boot
            )
            rows.append(_row(method_label(name), "ppa_under_steering", est))
    by_group = None
    gt = dataset.ground_truth
    if cfg.utility_alpha is not None and gt is not None and "users" in gt:
        methods = {
            method_label(BT): bt_vecs,
            method_label(DIS): dislike,
            method_label(POP): {u: v_pop for u in users},
        }
        util_rows, by_group = _utility_gain(model, test, methods, v_pop.norms(), gt, cfg, boot)
        rows += util_rows
    vectors = {get_method(m).name: known[get_method(m).name] for m in cfg.methods}
    return PersonalizationResult(
        pd.DataFrame(rows),
        by_group,
        v_pop,
        dislike,
        bt,
        bt_vecs,
        cfg,
        len(train),
        len(test),
        test,
        vectors,
    )


def _utility_gain(
    model: HookedModel,
    test: list[Any],
    methods: dict[str, dict[str, SteeringVector]],
    norms: dict[int, float],
    gt: dict[str, Any],
    cfg: PersonalizationConfig,
    boot: dict[str, Any],
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Per user, generate on held-out prompts unsteered and steered with the user's vector
    (rescaled to the population norm, α = ``utility_alpha``), score both with the user's
    keyword-density utility, and average the gain over users (and within each group); a
    degenerate or empty steered output's gain is floored at 0, and each row carries the
    share of such outputs (``degenerate_share``)."""
    seen: dict[str, list[str]] = {}
    for p in test:
        lst = seen.setdefault(p.user_id, [])
        if p.prompt not in lst and len(lst) < cfg.utility_prompts_per_user:
            lst.append(p.prompt)
    assert cfg.utility_alpha is not None
    row_users = [u for u in sorted(seen) for _ in seen[u]]
    prompts = [q for u in sorted(seen) for q in seen[u]]
    kw: dict[str, Any] = dict(
        max_new_tokens=cfg.utility_tokens,
        batch_size=cfg.run.generation_batch_size,
        progress_bar=False,
    )
    base = ground_truth_utility(generate(model, prompts, **kw), row_users, gt)
    rows, groups = [], []
    for method, vecs in methods.items():
        per_row = [vecs[u].rescaled(norms) for u in row_users]
        texts = generate(model, prompts, steering=per_row, alpha=cfg.utility_alpha, **kw)
        flag = degenerate(texts)  # empty texts included
        gain = utility_gain(ground_truth_utility(texts, row_users, gt), base, flag).tolist()
        share = round(float(np.mean(flag)), 4) if flag else float("nan")
        est = estimate(gain, row_users, **boot)
        rows.append({**_row(method, "utility_gain", est), "degenerate_share": share})
        group_of = [gt["users"][u]["group"] for u in row_users]
        for g in sorted(set(group_of)):
            sel = [i for i, x in enumerate(group_of) if x == g]
            est = estimate([gain[i] for i in sel], [row_users[i] for i in sel], **boot)
            deg = round(float(np.mean([flag[i] for i in sel])), 4)
            groups.append({"method": method, "group": g, **est.as_dict(), "degenerate_share": deg})
    return rows, pd.DataFrame(groups)
