"""SteerX vs all-history, per backbone (mean-difference / StyleVector, BiPO, SAE features),
on held-out pairs of a PRISM-format set (reconstruction: see ``steerlens.steerx``). It runs
sweeps, so it sits above ``steerlens.experiments.sweep`` in the layers (``steerlens.experiments.steerx_compare`` is
the job that writes its files).

Per user (a few per group on a simulated set): their training conversations (prompt,
chosen response) feed ``steerx_user`` once per backbone, from one pass of token effects and
one set of generic responses. Each vector is scored on the user's held-out pairs — PPA by
projection and, rescaled to the population vector's per-layer norms, PPA under steering at
``report_alpha`` (the chosen-over-rejected log-likelihood margin rises), each with SteerX
minus all-history paired per user — and steers greedy generations on the user's held-out
prompts (a resumable sweep per backbone): toxicity MAE change and (simulated sets)
ground-truth utility gain against the unsteered generations. Descriptions are written in
both modes ("spans" and "model"; ``describe`` picks the one the vectors use) and each is
scored by whether it names the user's group's preference (simulated sets).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from steerlens.core.models import HookedModel, default_layers
from steerlens.core.vectors import SteeringVector
from steerlens.data.prism import PrismDataset
from steerlens.experiments.sweep import (
    GenerationSettings,
    SweepPrompt,
    make_grid,
    run_sweep,
    standard_measures,
)
from steerlens.methods.personal import pair_activations, population
from steerlens.methods.stylevector import generic_responses
from steerlens.metrics.preference import (
    ppa_projection,
    ppa_under_steering,
    unsteered_margins,
)
from steerlens.metrics.stats import estimate, paired_difference
from steerlens.metrics.summaries import dose_response_table
from steerlens.steerx.describe import describe
from steerlens.steerx.effects import batch_history_effects
from steerlens.steerx.pairs import pair_vectors
from steerlens.steerx.pipeline import (
    BACKBONES,
    SteerXConfig,
    SteerXResult,
    available_backbones,
    conversation_messages,
    steerx_user,
)

logger = logging.getLogger(__name__)

__all__ = ["GROUP_CUES", "SteerXStudyConfig", "description_hit", "steerx_study"]

# Words that name each simulated group's preference (simulate.GROUPS): a description "hits"
# when its group's cues outnumber every other group's.
GROUP_CUES: dict[str, tuple[str, ...]] = {
    "more_caution": (
        "careful",
        "caution",
        "safe",
        "safety",
        "professional",
        "expert",
        "caveat",
        "sorry",
        "can't help",
        "cannot help",
        "refus",
        "important",
        "consult",
    ),
    "less_caution": (
        "damn",
        "hell",
        "honestly",
        "dude",
        "lol",
        "ugh",
        "crap",
        "shit",
        "bullshit",
        "freaking",
        "screw",
        "blunt",
        "casual",
        "slang",
        "stupid",
    ),
    "majority": (
        "sure",
        "of course",
        "here is",
        "simply put",
        "short answer",
        "polite",
        "helpful",
        "direct",
    ),
}


def description_hit(text: str, group: str) -> bool:
    """Whether a description names ``group``'s preference more than any other group's."""
    low = text.lower()
    counts = {
        g: sum(len(re.findall(re.escape(c), low)) for c in cues) for g, cues in GROUP_CUES.items()
    }
    best = max(counts.values())
    return best > 0 and counts.get(group, 0) == best and list(counts.values()).count(best) == 1


@dataclass
class SteerXStudyConfig:
    # every backbone; "sae" only where sae-lens (steerlens[sae]) can train its SAE
    backbones: list[str] = field(default_factory=available_backbones)
    users_per_group: int = 4
    held_out: float = 0.25
    n_history: int = 4
    max_targets: int = 8
    threshold: float = 0.05
    describe: Literal["spans", "model"] = "spans"
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    report_alpha: float = 0.5  # the α of PPA under steering, MAE change and utility gain
    steer_ppa: bool = True
    prompts_per_user: int = 2
    max_new_tokens: int = 32
    bipo: dict[str, Any] = field(default_factory=lambda: {"epochs": 5, "lr": 0.01})
    sae_folder: str | None = None  # a trained SAE for the middle steering layer
    # the FGAA rule drops features firing on > 1 % of tokens on 65k-latent SAEs; a small
    # TopK SAE (k 32 of 2048) fires each latent on 1.6 % of tokens on average
    sae_max_density: float = 0.05
    # SteerX selection on the pair-based backbone: each user's dislike-weighted vector pooled
    # over the selected chosen tokens vs over all tokens, from the same pairs (steerx.pairs)
    pair_backbone: bool = True
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [b for b in self.backbones if b not in BACKBONES]
        if bad:
            raise ValueError(f"unknown backbones {bad}")
        if 0.0 not in self.alphas or self.report_alpha not in self.alphas:
            raise ValueError("alphas must include 0 and report_alpha")


def _users(dataset: PrismDataset, per_group: int) -> list[str]:
    gt = dataset.ground_truth
    if gt is None or "users" not in gt:
        return sorted(dataset.users)[: 3 * per_group]
    by: dict[str, list[str]] = {}
    for u in sorted(dataset.users):
        by.setdefault(gt["users"].get(u, {}).get("group", "unknown"), []).append(u)
    return sorted(u for g in sorted(by) for u in by[g][:per_group])


def steerx_study(
    model: HookedModel,
    dataset: PrismDataset,
    config: SteerXStudyConfig | None = None,
    *,
    out: str | Path = "results/steerx",
    sae: Any = None,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Run the comparison; returns ``{"table", "users", "results"}`` (DataFrames and the
    per-user ``SteerXResult`` s) and writes sweeps and vectors under ``out``."""
    cfg = config or SteerXStudyConfig()
    if "sae" in cfg.backbones and sae is None:
        raise ValueError("the sae backbone needs an SAE for the middle steering layer (sae=...)")
    out = Path(out)
    gt = dataset.ground_truth if dataset.ground_truth and "users" in dataset.ground_truth else None
    users = _users(dataset, cfg.users_per_group)
    train, test = dataset.split(cfg.held_out, cfg.seed, by="prompt", turn0_only=True, users=users)
    convs: dict[str, list[tuple[str, str]]] = {}
    for p in train:
        lst = convs.setdefault(p.user_id, [])
        if (p.prompt, p.chosen) not in lst:
            lst.append((p.prompt, p.chosen))
    users = [u for u in users if len(convs.get(u, [])) >= 2 and any(p.user_id == u for p in test)]
    if not users:
        raise ValueError("no user has two training conversations and a held-out pair")
    layers = default_layers(model)
    pa_train = pair_activations(
        model, train, layers, batch_size=cfg.batch_size, progress_bar=progress_bar
    )
    norms = population(pa_train).norms()
    # one effects pass and one set of generic responses for every backbone
    targets = {u: convs[u][: cfg.max_targets] for u in users}
    queries, owner = [], []
    for u in users:
        for k, (prompt, response) in enumerate(targets[u]):
            rest = [c for j, c in enumerate(convs[u]) if j != k][: cfg.n_history]
            queries.append((prompt, response, conversation_messages(rest), None))
            owner.append(u)
    effects = batch_history_effects(
        model, queries, batch_size=cfg.batch_size, progress_bar=progress_bar
    )
    prompts = [q[0] for q in queries]
    generic = generic_responses(
        model, prompts, max_new_tokens=64, batch_size=cfg.batch_size, progress_bar=progress_bar
    )
    # a user whose every generic response is empty has nothing to contrast with: left out
    # (logged) rather than ending the whole study
    has_generic = {o for g, o in zip(generic, owner, strict=True) if g.strip()}
    empty = {u for u in users if u not in has_generic}
    if empty:
        logger.warning("left out (every generic response empty): %s", sorted(empty))
        users = [u for u in users if u not in empty]
        if not users:
            raise ValueError("every user's generic responses are empty")
    test = [p for p in test if p.user_id in users]
    pa_test = pair_activations(
        model, test, layers, batch_size=cfg.batch_size, progress_bar=progress_bar
    )
    results: dict[str, dict[str, SteerXResult]] = {}
    for backbone in cfg.backbones:
        xcfg = SteerXConfig(
            backbone=backbone,  # type: ignore[arg-type]
            n_history=cfg.n_history,
            max_targets=cfg.max_targets,  # type: ignore[arg-type]
            threshold=cfg.threshold,
            describe=cfg.describe,
            bipo={**cfg.bipo, "seed": cfg.seed},
            layers=None if backbone.startswith("mean") else [layers[len(layers) // 2]],
            batch_size=cfg.batch_size,
            sae_max_density=cfg.sae_max_density,
        )
        results[backbone] = {}
        for u in users:
            mine = [i for i, o in enumerate(owner) if o == u]
            res = steerx_user(
                model,
                convs[u],
                user=u,
                config=xcfg,
                sae=sae,
                progress_bar=False,
                effects=[effects[i] for i in mine],
                generic=[generic[i] for i in mine],
            )
            res.save(out / "vectors" / backbone / u)
            results[backbone][u] = res
    # held-out prompts per user for the steered generations
    seen: dict[str, list[SweepPrompt]] = {}
    for p in test:
        chosen_prompts = seen.setdefault(p.user_id, [])
        if len(chosen_prompts) < cfg.prompts_per_user and all(
            q.prompt != p.prompt for q in chosen_prompts
        ):
            chosen_prompts.append(
                SweepPrompt(p.interaction_id, p.prompt, p.user_id, p.category, p.chosen)
            )
    sweep_prompts = [q for u in users for q in seen.get(u, [])]
    boot: dict[str, Any] = {"seed": cfg.seed}
    rows: list[dict[str, Any]] = []
    alpha = cfg.report_alpha
    base_margins = unsteered_margins(model, test, cfg.batch_size) if cfg.steer_ppa else None
    for backbone, by_user in results.items():
        vectors = {
            f"steerx-{backbone}": {u: r.vector.rescaled(norms) for u, r in by_user.items()},
            f"all-history-{backbone}": {
                u: r.all_history.rescaled(norms) for u, r in by_user.items()
            },
        }
        rows += _compare_rows(
            model,
            backbone,
            pa_test,
            test,
            {
                "steerx": {u: r.vector for u, r in by_user.items()},
                "all-history": {u: r.all_history for u, r in by_user.items()},
            },
            norms,
            cfg,
            base_margins,
            boot,
        )
        cells = run_sweep(
            model,
            make_grid(sweep_prompts, list(vectors), cfg.alphas),
            sweep_prompts,
            vectors,
            out / "sweep" / backbone,
            settings=GenerationSettings(cfg.max_new_tokens, cfg.batch_size, 64),
            measure=standard_measures(gt, batch_size=cfg.batch_size),
            progress_bar=progress_bar,
        )
        assert cells is not None
        table = dose_response_table(cells, seed=cfg.seed)
        for method in vectors:
            r = table[(table["method"] == method) & (table["alpha"] == alpha)].iloc[0]
            name = "steerx" if method.startswith("steerx") else "all-history"
            rows.append(
                {
                    "backbone": backbone,
                    "method": name,
                    "measure": f"mae_change_pct@{alpha:g}",
                    "mean": r["delta_pct"],
                    "low": r["delta_low"],
                    "high": r["delta_high"],
                    "n": r["n"],
                }
            )
            if "utility_gain" in r:
                rows.append(
                    {
                        "backbone": backbone,
                        "method": name,
                        "measure": f"utility_gain@{alpha:g}",
                        "mean": r["utility_gain"],
                        "low": r["utility_low"],
                        "high": r["utility_high"],
                        "n": r["n"],
                    }
                )
    if cfg.pair_backbone:
        eff_by = {(q[0], q[1]): e for q, e in zip(queries, effects, strict=True)}
        pair_vecs = {
            u: pair_vectors(
                model,
                [p for p in train if p.user_id == u],
                eff_by,
                layers,
                threshold=cfg.threshold,
                batch_size=cfg.batch_size,
            )
            for u in users
        }
        rows += _compare_rows(
            model,
            "pairs",
            pa_test,
            test,
            {
                "steerx": {u: v["selected"] for u, v in pair_vecs.items()},
                "all-history": {u: v["all"] for u, v in pair_vecs.items()},
            },
            norms,
            cfg,
            base_margins,
            boot,
        )
        for u, v in pair_vecs.items():
            for name, vec in v.items():
                vec.save(out / "vectors" / "pairs" / u / f"{name}.safetensors")
    # the description in the other mode too, so that both modes' hit rates are reported
    other: Literal["spans", "model"] = "model" if cfg.describe == "spans" else "spans"
    first = results[cfg.backbones[0]]
    others = {
        u: describe(model, r.effects, mode=other, threshold=cfg.threshold).text
        for u, r in first.items()
    }
    user_rows: list[dict[str, Any]] = []
    for backbone, rs in results.items():
        for u, r in rs.items():
            group = gt["users"][u]["group"] if gt else "unknown"
            texts = {cfg.describe: r.description.text, other: others[u]}
            user_rows.append(
                {
                    "backbone": backbone,
                    "user": u,
                    "group": group,
                    "description": r.description.text,
                    "hit": description_hit(r.description.text, group) if gt else None,
                    **{f"description_{m}": t for m, t in texts.items()},
                    **{
                        f"hit_{m}": description_hit(t, group) if gt else None
                        for m, t in texts.items()
                    },
                    "selected_share": r.provenance()["selected_share"],
                }
            )
    users_df = pd.DataFrame(user_rows)
    if gt is not None:
        one = users_df[users_df["backbone"] == cfg.backbones[0]]
        for mode in (cfg.describe, other):
            hit = estimate(one[f"hit_{mode}"].astype(float).tolist(), one["user"].tolist(), **boot)
            rows.append(
                {
                    "backbone": "all",
                    "method": f"steerx ({mode})",  # the vectors used cfg.describe's
                    "measure": "description_hit_rate",
                    **hit.as_dict(),
                }
            )
    return {
        "table": pd.DataFrame(rows),
        "users": users_df,
        "results": results,
        "config": asdict(cfg),
        "alpha": alpha,
    }


def _compare_rows(
    model: HookedModel,
    backbone: str,
    pa_test: Any,
    test: list[Any],
    vectors: dict[str, dict[str, SteeringVector]],
    norms: dict[int, float],
    cfg: SteerXStudyConfig,
    base_margins: Any,
    boot: dict[str, Any],
) -> list[dict[str, Any]]:
    """PPA by projection and (``steer_ppa``) under steering at ``report_alpha`` of the
    ``"steerx"`` and ``"all-history"`` vectors (user -> vector), each with the paired
    difference per user; under steering the vectors are rescaled to ``norms``."""
    rows: list[dict[str, Any]] = []
    measures = [("ppa_projection", lambda vecs: ppa_projection(pa_test, vecs, **boot))]
    if cfg.steer_ppa:
        measures.append(
            (
                f"ppa_under_steering@{cfg.report_alpha:g}",
                lambda vecs: ppa_under_steering(
                    model,
                    test,
                    {u: v.rescaled(norms) for u, v in vecs.items()},
                    cfg.report_alpha,
                    batch_size=cfg.batch_size,
                    base_margins=base_margins,
                    **boot,
                ),
            )
        )
    for measure, score in measures:
        ests = {name: score(vectors[name]) for name in ("steerx", "all-history")}
        rows += [
            {"backbone": backbone, "method": name, "measure": measure, **est.as_dict()}
            for name, est in ests.items()
        ]
        rows.append(
            {
                "backbone": backbone,
                "method": "steerx − all-history",
                "measure": "ppa_projection_paired"
                if measure == "ppa_projection"
                else f"{measure}_paired",
                **paired_difference(ests["steerx"], ests["all-history"], **boot).as_dict(),
            }
        )
    return rows
