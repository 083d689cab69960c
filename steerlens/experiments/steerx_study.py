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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from steerlens.core.models import HookedModel, default_layers
from steerlens.core.vectors import SteeringVector
from steerlens.data.prism import PrismDataset
from steerlens.experiments.config import RunSection, as_section
from steerlens.experiments.sweep import (
    GenerationSettings,
    SweepPrompt,
    make_grid,
    run_sweep,
    standard_measures,
)
from steerlens.methods.personal import pair_activations, population
from steerlens.methods.registry import BACKBONES, available_backbones, get_backbone
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
    SteerXConfig,
    SteerXResult,
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
    # the steered generations' α: 0 (the baseline) and report_alpha are what the tables read
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.5])
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
    run: RunSection = field(default_factory=RunSection)  # seed, device, batch size

    def __post_init__(self) -> None:
        self.run = as_section(self.run, RunSection)
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
    norms: Mapping[int, float] | None = None,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Run the comparison; returns ``{"table", "users", "results"}`` (DataFrames and the
    per-user ``SteerXResult`` s) and writes sweeps and vectors under ``out``. ``norms``: the
    per-layer norms vectors are rescaled to under steering (default: the population vector of
    the training pairs, cached here for that alone)."""
    cfg = config or SteerXStudyConfig()
    if "sae" in cfg.backbones and sae is None:
        raise ValueError("the sae backbone needs an SAE for the middle steering layer (sae=...)")
    out = Path(out)
    gt = dataset.ground_truth if dataset.ground_truth and "users" in dataset.ground_truth else None
    users, train, test, convs = _conversations(dataset, cfg)
    layers = default_layers(model)
    if norms is None:
        pa_train = pair_activations(
            model, train, layers, batch_size=cfg.run.batch_size, progress_bar=progress_bar
        )
        norms = population(pa_train).norms()
    norms = {int(k): float(v) for k, v in norms.items()}
    shared = _Shared.run(model, users, convs, cfg, progress_bar)
    users = shared.users
    test = [p for p in test if p.user_id in users]
    pa_test = pair_activations(
        model, test, layers, batch_size=cfg.run.batch_size, progress_bar=progress_bar
    )
    results = {
        backbone: _backbone_results(model, backbone, convs, shared, layers, cfg, sae, out)
        for backbone in cfg.backbones
    }
    sweep_prompts = _sweep_prompts(test, users, cfg.prompts_per_user)
    boot: dict[str, Any] = {"seed": cfg.run.seed}
    rows: list[dict[str, Any]] = []
    base_margins = unsteered_margins(model, test, cfg.run.batch_size) if cfg.steer_ppa else None
    for backbone, by_user in results.items():
        compared = {
            "steerx": {u: r.vector for u, r in by_user.items()},
            "all-history": {u: r.all_history for u, r in by_user.items()},
        }
        rows += _compare_rows(
            model, backbone, pa_test, test, compared, norms, cfg, base_margins, boot
        )
        vectors = {
            f"{name}-{backbone}": {u: v.rescaled(norms) for u, v in by.items()}
            for name, by in compared.items()
        }
        rows += _sweep_rows(model, backbone, vectors, sweep_prompts, cfg, gt, out, progress_bar)
    if cfg.pair_backbone:
        pair_vecs = _pair_vectors(model, train, users, shared, layers, cfg, out)
        compared = {
            "steerx": {u: v["selected"] for u, v in pair_vecs.items()},
            "all-history": {u: v["all"] for u, v in pair_vecs.items()},
        }
        rows += _compare_rows(
            model, "pairs", pa_test, test, compared, norms, cfg, base_margins, boot
        )
    users_df, hit_rows = _description_rows(model, results, cfg, gt, boot)
    return {
        "table": pd.DataFrame(rows + hit_rows),
        "users": users_df,
        "results": results,
        "config": asdict(cfg),
        "alpha": cfg.report_alpha,
    }


def _conversations(
    dataset: PrismDataset, cfg: SteerXStudyConfig
) -> tuple[list[str], list[Any], list[Any], dict[str, list[tuple[str, str]]]]:
    """The study's users (each with two training conversations and a held-out pair), the
    train / test pairs (split by prompt) and each user's training conversations."""
    users = _users(dataset, cfg.users_per_group)
    train, test = dataset.split(
        cfg.held_out, cfg.run.seed, by="prompt", turn0_only=True, users=users
    )
    convs: dict[str, list[tuple[str, str]]] = {}
    for p in train:
        lst = convs.setdefault(p.user_id, [])
        if (p.prompt, p.chosen) not in lst:
            lst.append((p.prompt, p.chosen))
    users = [u for u in users if len(convs.get(u, [])) >= 2 and any(p.user_id == u for p in test)]
    if not users:
        raise ValueError("no user has two training conversations and a held-out pair")
    return users, train, test, convs


@dataclass
class _Shared:
    """One effects pass and one set of generic responses for every backbone: per target
    (``owner``: its user) the query, token effects and the model's generic response."""

    users: list[str]
    queries: list[tuple[str, str, Any, Any]]
    owner: list[str]
    effects: list[Any]
    generic: list[str]

    @classmethod
    def run(
        cls,
        model: HookedModel,
        users: list[str],
        convs: dict[str, list[tuple[str, str]]],
        cfg: SteerXStudyConfig,
        progress_bar: bool,
    ) -> _Shared:
        queries, owner = [], []
        for u in users:
            for k, (prompt, response) in enumerate(convs[u][: cfg.max_targets]):
                rest = [c for j, c in enumerate(convs[u]) if j != k][: cfg.n_history]
                queries.append((prompt, response, conversation_messages(rest), None))
                owner.append(u)
        effects = batch_history_effects(
            model, queries, batch_size=cfg.run.batch_size, progress_bar=progress_bar
        )
        generic = generic_responses(
            model,
            [q[0] for q in queries],
            max_new_tokens=64,
            batch_size=cfg.run.generation_batch_size,
            progress_bar=progress_bar,
        )
        # a user whose every generic response is empty has nothing to contrast with: left
        # out (logged) rather than ending the whole study
        has_generic = {o for g, o in zip(generic, owner, strict=True) if g.strip()}
        empty = {u for u in users if u not in has_generic}
        if empty:
            logger.warning("left out (every generic response empty): %s", sorted(empty))
            users = [u for u in users if u not in empty]
            if not users:
                raise ValueError("every user's generic responses are empty")
        return cls(users, queries, owner, effects, generic)

    def of(self, user: str) -> list[int]:
        """The indices of ``user``'s targets."""
        return [i for i, o in enumerate(self.owner) if o == user]


def _backbone_results(
    model: HookedModel,
    backbone: str,
    convs: dict[str, list[tuple[str, str]]],
    shared: _Shared,
    layers: list[int],
    cfg: SteerXStudyConfig,
    sae: Any,
    out: Path,
) -> dict[str, SteerXResult]:
    """Each user's SteerX and all-history vectors on one backbone (saved under ``out``), on
    the study's layers or the middle one, as the registry says for the backbone."""
    xcfg = SteerXConfig(
        backbone=backbone,  # type: ignore[arg-type]
        n_history=cfg.n_history,
        max_targets=cfg.max_targets,
        threshold=cfg.threshold,
        describe=cfg.describe,
        bipo={**cfg.bipo, "seed": cfg.run.seed},
        layers=None if get_backbone(backbone).layers == "all" else [layers[len(layers) // 2]],
        batch_size=cfg.run.batch_size,
        sae_max_density=cfg.sae_max_density,
    )
    results = {}
    for u in shared.users:
        mine = shared.of(u)
        res = steerx_user(
            model,
            convs[u],
            user=u,
            config=xcfg,
            sae=sae,
            progress_bar=False,
            effects=[shared.effects[i] for i in mine],
            generic=[shared.generic[i] for i in mine],
        )
        res.save(out / "vectors" / backbone / u)
        results[u] = res
    return results


def _sweep_prompts(test: list[Any], users: list[str], per_user: int) -> list[SweepPrompt]:
    """Up to ``per_user`` distinct held-out prompts per user, for the steered generations."""
    seen: dict[str, list[SweepPrompt]] = {}
    for p in test:
        chosen_prompts = seen.setdefault(p.user_id, [])
        if len(chosen_prompts) < per_user and all(q.prompt != p.prompt for q in chosen_prompts):
            chosen_prompts.append(
                SweepPrompt(p.interaction_id, p.prompt, p.user_id, p.category, p.chosen)
            )
    return [q for u in users for q in seen.get(u, [])]


def _sweep_rows(
    model: HookedModel,
    backbone: str,
    vectors: dict[str, dict[str, SteeringVector]],
    sweep_prompts: list[SweepPrompt],
    cfg: SteerXStudyConfig,
    gt: Any,
    out: Path,
    progress_bar: bool,
) -> list[dict[str, Any]]:
    """The steered generations of one backbone's vectors (a resumable sweep under ``out``):
    the toxicity MAE change and (simulated sets) the utility gain at ``report_alpha``."""
    cells = run_sweep(
        model,
        make_grid(sweep_prompts, list(vectors), cfg.alphas),
        sweep_prompts,
        vectors,
        out / "sweep" / backbone,
        settings=GenerationSettings(cfg.max_new_tokens, cfg.run.generation_batch_size, 64),
        measure=standard_measures(gt, batch_size=cfg.run.batch_size),
        progress_bar=progress_bar,
    )
    assert cells is not None
    table = dose_response_table(cells, seed=cfg.run.seed)
    alpha = cfg.report_alpha
    rows: list[dict[str, Any]] = []
    for method in vectors:
        r = table[(table["method"] == method) & (table["alpha"] == alpha)].iloc[0]
        name = "steerx" if method.startswith("steerx") else "all-history"
        measured = [("mae_change_pct", "delta_pct", "delta_low", "delta_high")]
        if "utility_gain" in r:
            measured.append(("utility_gain", "utility_gain", "utility_low", "utility_high"))
        for measure, mean, low, high in measured:
            rows.append(
                {
                    "backbone": backbone,
                    "method": name,
                    "measure": f"{measure}@{alpha:g}",
                    "mean": r[mean],
                    "low": r[low],
                    "high": r[high],
                    "n": r["n"],
                    "degenerate_share": r["degenerate_share"],  # beside every utility number
                }
            )
    return rows


def _pair_vectors(
    model: HookedModel,
    train: list[Any],
    users: list[str],
    shared: _Shared,
    layers: list[int],
    cfg: SteerXStudyConfig,
    out: Path,
) -> dict[str, dict[Literal["selected", "all"], SteeringVector]]:
    """Each user's dislike-weighted vector pooled over the selected chosen tokens and over
    all tokens, from the same pairs (saved under ``out``)."""
    eff_by = {(q[0], q[1]): e for q, e in zip(shared.queries, shared.effects, strict=True)}
    pair_vecs = {
        u: pair_vectors(
            model,
            [p for p in train if p.user_id == u],
            eff_by,
            layers,
            threshold=cfg.threshold,
            batch_size=cfg.run.batch_size,
        )
        for u in users
    }
    for u, v in pair_vecs.items():
        for name, vec in v.items():
            vec.save(out / "vectors" / "pairs" / u / f"{name}.safetensors")
    return pair_vecs


def _description_rows(
    model: HookedModel,
    results: dict[str, dict[str, SteerXResult]],
    cfg: SteerXStudyConfig,
    gt: Any,
    boot: dict[str, Any],
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Per backbone and user: the description in both modes (the other mode's from the first
    backbone's effects), whether each names the user's group, the selected share; and (with
    ground truth) each mode's hit rate over users."""
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
    rows = []
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
    return users_df, rows


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
                    batch_size=cfg.run.batch_size,
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
