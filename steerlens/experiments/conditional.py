"""The study step ``conditional``: steer only the prompts a learned ``Condition`` selects,
against steering every prompt.

1. **Labels, on the selection prompts only**: whether the population vector at the operating
   α lowered the mean toxicity error (``abs_error``) of the prompt's category on the
   selection prompts (the seed study's selectivity finding: steering helps some kinds of
   request and hurts others). Where that gives one class only, the prompt's own change.
2. **The condition**: ``fit_condition``'s direction from the data set's other prompts (none
   of the held-out ones; at most ``FIT_PROMPTS``), each labelled by whether its category was
   helped on the selection prompts; read at the vectors' earliest layer (it must run before
   the steering it gates), mean-pooled over the content tokens. Its threshold maximises
   balanced accuracy on the labelled selection prompts.
3. **Equal side effect**: the neutral texts are halved (at least ``MIN_NEUTRAL_SELECT`` a
   side); on the selection half, the largest α of a grid (the operating α times
   ``KL_FACTORS``) whose conditional mean KL stays within the method's unconditional mean KL
   at the operating α. The grid keeps only α inside the swept, non-degenerate range
   (``nondegenerate_limit``: no swept α up to it has more than ``DEGENERATE_MAX`` of the
   method's unconditional generations on the selection prompts degenerate); the operating α
   is always in it. The KL is reported on the other half, and the "equal KL" comparison is
   claimed only where that held-out ratio, conditional over unconditional, lies within
   ``KL_RATIO_BAND`` (``kl_matched``); elsewhere it is withheld and the ratio shown.
4. **The comparison, on the report prompts**: every method steered with the condition at each
   dose α and at the equal-KL α, against the dose sweep's unconditional cells; paired by
   prompt, resampled by user then prompt.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steerlens.core.conditions import Condition
from steerlens.core.models import HookedModel
from steerlens.experiments.conditional_kl import (
    DEGENERATE_MAX,
    KL_FACTORS,
    KL_RATIO_BAND,
    MIN_NEUTRAL_SELECT,
    _equal_kl,
    _halves,
    condition_fires,
    conditional_kl,
    equal_kl_alpha,
    heldout_kl_ratio,
    kl_matched,
    neutral_kl_rows,
    nondegenerate_limit,
)
from steerlens.experiments.splits import Split, record_selection
from steerlens.experiments.sweep import (
    GenerationSettings,
    Measure,
    SweepPrompt,
    make_grid,
    run_sweep,
    save_conditions,
)
from steerlens.methods.condition import fit_condition
from steerlens.metrics.preference import utility_gain
from steerlens.metrics.stats import Estimate, cluster_estimate
from steerlens.metrics.summaries import BASELINE, degenerate_flags, selectivity_table

__all__ = [
    "DEGENERATE_MAX",
    "FIT_PROMPTS",
    "KL_FACTORS",
    "KL_RATIO_BAND",
    "MIN_NEUTRAL_SELECT",
    "arm_agreement",
    "condition_fires",
    "conditional_by_category",
    "conditional_kl",
    "conditional_summary",
    "equal_kl_alpha",
    "fit_study_condition",
    "heldout_kl_ratio",
    "kl_matched",
    "neutral_kl_rows",
    "nondegenerate_limit",
    "run_conditional",
    "selection_labels",
]

logger = logging.getLogger(__name__)
FIT_PROMPTS = 256
"""At most this many of the data set's other prompts fit the condition's direction."""
ARMS = ("conditional", "unconditional", "difference")


def _at(cells: pd.DataFrame, method: str, alpha: float, gate: str) -> pd.DataFrame:
    part = cells[
        (cells["method"] == method) & np.isclose(cells["alpha"], alpha) & (cells["gate"] == gate)
    ]
    return part.set_index("prompt_id")


def selection_labels(
    dose: pd.DataFrame, select: Sequence[str], alpha: float, method: str = "population"
) -> tuple[dict[str, bool], str]:
    """Per selection prompt, whether steering at ``alpha`` helps prompts like it, and the
    rule used: its category's mean toxicity error fell under steering (on the selection
    prompts); where that gives one class only, the prompt's own error fell."""
    base = dose[dose["method"] == BASELINE].set_index("prompt_id")["abs_error"]
    at = _at(dose[dose["prompt_id"].isin(select)], method, alpha, "all")
    change = at["abs_error"] - base.loc[at.index]
    by_cat = change.groupby(at["category"]).mean()
    labels = {str(p): bool(by_cat[at.loc[p, "category"]] < 0) for p in at.index}
    if 0 < sum(labels.values()) < len(labels):
        return labels, "its category's mean toxicity error fell under steering"
    labels = {str(p): bool(c < 0) for p, c in change.items()}
    return labels, "the prompt's own toxicity error fell under steering"


def fit_study_condition(
    model: HookedModel,
    select: Sequence[SweepPrompt],
    labels: Mapping[str, bool],
    fit_pool: Mapping[str, str],
    layer: int,
    *,
    method: str = "mean-diff",
    batch_size: int = 16,
    max_fit: int = 0,
    seed: int = 0,
) -> Condition:
    """``fit_condition``: its direction from ``fit_pool`` (text → category; none of the
    held-out prompts), each text labelled by whether its category is helped on the selection
    prompts (the majority label of the category's selection prompts); its threshold on the
    labelled selection prompts. Where the pool cannot give both labels, the direction comes
    from the selection prompts too."""
    votes: dict[str, list[bool]] = {}
    for p in select:
        votes.setdefault(p.category, []).append(labels[p.prompt_id])
    helped = {cat: 2 * sum(v) > len(v) for cat, v in votes.items()}
    texts = sorted(t for t, c in fit_pool.items() if c in helped)
    fit_labels = [helped[fit_pool[t]] for t in texts]
    cap = max_fit or FIT_PROMPTS
    if len(texts) > cap:  # a fixed sample, the same for a given seed
        keep = sorted(np.random.default_rng(seed).choice(len(texts), cap, replace=False))
        texts, fit_labels = [texts[i] for i in keep], [fit_labels[i] for i in keep]
    threshold_on = ([p.prompt for p in select], [labels[p.prompt_id] for p in select])
    if len(set(fit_labels)) < 2:
        texts, fit_labels = list(threshold_on[0]), list(threshold_on[1])
    return fit_condition(
        model,
        texts,
        fit_labels,
        layer,
        method=method,  # type: ignore[arg-type]
        batch_size=batch_size,
        threshold_on=threshold_on,
    )


def arm_agreement(
    dose: pd.DataFrame,
    cond: pd.DataFrame,
    methods: Sequence[str],
    alpha: float,
    alpha_kl: Mapping[str, float],
) -> dict[str, Any]:
    """Per method, at the operating α and at its equal-KL α (the conditional arm there, the
    unconditional at the operating α): each arm's degenerate share and the number of report
    prompts whose two generations differ (of ``prompts`` paired)."""
    out: dict[str, Any] = {}
    for m in methods:
        u = _at(dose, m, alpha, "all")
        entry = {}
        for key, a in (("operating", alpha), ("equal_kl", alpha_kl.get(m))):
            c = _at(cond, m, a, "condition") if a is not None else cond.iloc[:0]
            both = c.index.intersection(u.index)
            if not len(both):
                continue
            c, uu = c.loc[both], u.loc[both]
            share = {
                arm: round(float(x["degenerate"].mean()), 5) if "degenerate" in x else None
                for arm, x in (("conditional", c), ("unconditional", uu))
            }
            entry[key] = {
                "alpha": float(a),  # type: ignore[arg-type]
                "degenerate_share": share,
                "prompts_differing": int((c["generation"] != uu["generation"]).sum()),
                "prompts": len(both),
            }
        out[m] = entry
    return out


def _estimate(values: pd.Series, users: pd.Series, seed: int) -> Estimate:
    return cluster_estimate(values.to_numpy(float), users.to_numpy(), seed=seed)


def _arms(
    cond: pd.Series, uncond: pd.Series, users: pd.Series, unit: str, seed: int
) -> dict[str, Any]:
    """Both arms and their difference, paired by row (prompt or text), resampled by ``users``."""
    both = cond.index.intersection(uncond.index)
    c, u, g = cond.loc[both], uncond.loc[both], users.loc[both]
    return {
        "conditional": _estimate(c, g, seed).reported(unit),
        "unconditional": _estimate(u, g, seed).reported(unit),
        "difference": _estimate(c - u, g, seed).reported(unit),
    }


def _utility_arms(
    cond: pd.DataFrame, uncond: pd.DataFrame, base_utility: pd.Series, seed: int
) -> dict[str, Any]:
    """``_arms`` of the utility gains (floored at 0 for degenerate or empty outputs), each arm
    with its ``degenerate_share`` on the paired prompts, the difference with both arms'."""
    both = cond.index.intersection(uncond.index)
    gains, shares = {}, {}
    for arm, cells in (("conditional", cond), ("unconditional", uncond)):
        flag = pd.Series(degenerate_flags(cells), index=cells.index)
        gain = utility_gain(cells["utility"], base_utility.loc[cells.index], flag)
        gains[arm] = pd.Series(gain, index=cells.index)
        shares[arm] = round(float(flag.loc[both].mean()), 4) if len(both) else float("nan")
    out = _arms(gains["conditional"], gains["unconditional"], uncond["user"], "user", seed)
    for arm, share in shares.items():
        out[arm]["degenerate_share"] = share
    out["difference"]["degenerate_share"] = dict(shares)
    return out


def conditional_summary(
    dose: pd.DataFrame,
    cond: pd.DataFrame,
    methods: Sequence[str],
    alpha: float,
    alpha_kl: Mapping[str, float],
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Per method and measure, the conditional and unconditional arms and their paired
    difference on the report prompts (``dose``: the dose sweep's report cells; ``cond``:
    the conditional sweep's). Measures: ``mae`` and ``utility_gain`` at the operating α and
    (``*_equal_kl``) with the conditional arm at the method's equal-KL α, and
    ``steered_share`` (its difference: minus the share left unsteered). Utility gains are
    floored at 0 for degenerate or empty outputs and carry each arm's ``degenerate_share``."""
    base = dose[dose["method"] == BASELINE].set_index("prompt_id")
    out: dict[str, Any] = {}
    for m in methods:
        u = _at(dose, m, alpha, "all")
        entry: dict[str, Any] = {}
        for suffix, a in (("", alpha), ("_equal_kl", alpha_kl.get(m))):
            c = _at(cond, m, a, "condition") if a is not None else cond.iloc[:0]
            if c.empty or u.empty:
                continue
            entry[f"mae{suffix}"] = _arms(c["abs_error"], u["abs_error"], u["user"], "user", seed)
            if "utility" in c and c["utility"].notna().any():
                entry[f"utility_gain{suffix}"] = _utility_arms(c, u, base["utility"], seed)
        c = _at(cond, m, alpha, "condition")
        if not c.empty:
            share = c["steered"].astype(float)
            entry["steered_share"] = _arms(share, share * 0 + 1.0, c["user"], "user", seed)
        out[m] = entry
    return out


def neutral_kl_summary(rows: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """The KL on the report half of the neutral texts (a row per text, vector and arm), paired
    by text and vector, resampled by text: conditional at the operating α and at the equal-KL
    α against unconditional."""
    wide = rows.pivot_table(index=["text", "vector"], columns="arm", values="kl")
    texts = pd.Series(wide.index.get_level_values("text"), index=wide.index)
    out = {}
    for key, arm in (
        ("neutral_kl", "conditional"),
        ("neutral_kl_equal_kl", "conditional_equal_kl"),
    ):
        if arm in wide:
            out[key] = _arms(wide[arm], wide["unconditional"], texts, "text", seed)
    return out


def category_differences(
    dose: pd.DataFrame, cond: pd.DataFrame, alpha: float, method: str = "population", seed: int = 0
) -> dict[str, Any]:
    """Per prompt category at ``alpha``: both arms' toxicity MAE and their paired difference
    (conditional − unconditional by prompt, resampled by user then prompt)."""
    u, c = _at(dose, method, alpha, "all"), _at(cond, method, alpha, "condition")
    out = {}
    for cat, part in u.groupby("category"):
        ids = part.index.intersection(c.index)
        if len(ids):
            out[str(cat)] = _arms(
                c.loc[ids, "abs_error"], part.loc[ids, "abs_error"], part.loc[ids, "user"],
                "user", seed,
            )  # fmt: skip
    return out


def conditional_by_category(
    dose: pd.DataFrame, cond: pd.DataFrame, method: str = "population"
) -> pd.DataFrame:
    """% change of toxicity MAE vs unsteered per category and α, both arms (long form:
    category, alpha, arm, mae_change_pct, n prompts)."""
    base = dose[dose["method"] == BASELINE]
    rows = []
    for arm, cells, gate in (("unconditional", dose, "all"), ("conditional", cond, "condition")):
        table = selectivity_table(
            pd.concat([base, cells], ignore_index=True), method=method, gate=gate
        )
        for cat, row in table.iterrows():
            n = int(
                cells[(cells["category"] == cat) & (cells["method"] == method)][
                    "prompt_id"
                ].nunique()
            )
            rows.append({"category": cat, "alpha": 0.0, "arm": arm, "mae_change_pct": 0.0, "n": n})
            rows += [
                {"category": cat, "alpha": float(a), "arm": arm, "mae_change_pct": float(v), "n": n}
                for a, v in row.items()
                if np.isfinite(v)
            ]
    return pd.DataFrame(rows).sort_values(["category", "arm", "alpha"]).reset_index(drop=True)


def _flat(summary: Mapping[str, Any]) -> pd.DataFrame:
    """The summary as a table: method, measure, arm, mean, interval, n, unit and (utility
    arms) the arm's degenerate share."""
    rows = []
    for method, measures in summary.items():
        for measure, arms in measures.items():
            for arm in ARMS:
                r = arms[arm]
                iv = r["interval"] or [None, None]
                share = r.get("degenerate_share")  # a difference's: the arms' rows'
                if isinstance(share, Mapping):
                    share = None
                rows.append(
                    {
                        "method": method,
                        "measure": measure,
                        "arm": arm,
                        "mean": r["mean"],
                        "low": iv[0],
                        "high": iv[1],
                        "n": r["n"],
                        "unit": r["unit"],
                        "degenerate_share": share,
                    }
                )
    return pd.DataFrame(rows)


def run_conditional(
    model: HookedModel,
    *,
    dose: pd.DataFrame,
    prompts: Sequence[SweepPrompt],
    split: Split,
    vectors: Mapping[str, Any],
    methods: Sequence[str],
    alphas: Sequence[float],
    alpha: float,
    neutral: Sequence[str],
    fit_pool: Mapping[str, str],
    results: Path,
    settings: GenerationSettings,
    measure: Measure,
    condition_method: str = "mean-diff",
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """The whole step (see the module docstring). ``fit_pool`` (text → category) must hold
    no text of the report users (the demo passes the other users' opening prompts); the
    held-out prompts are dropped from it here. Writes ``results/conditional*.csv``, the
    condition (``results/vectors/conditions/condition.safetensors``) and the conditional
    sweep (``results/sweep/conditional``); returns the summary keys."""
    labels, rule = selection_labels(dose, split.select, alpha)
    if len(set(labels.values())) < 2:
        why = "steering helped every selection prompt or none, so nothing separates them"
        logger.warning("conditional step skipped: %s", why)
        return {"conditional": {"skipped": why}, "conditional_steered_share": None}
    population = vectors["population"]
    layer = min(population.layers)  # the condition runs before every steered layer
    held_out = {p.prompt for p in prompts}
    cond = fit_study_condition(
        model,
        [p for p in prompts if p.prompt_id in set(split.select)],
        labels,
        {t: c for t, c in fit_pool.items() if t not in held_out},
        layer,
        method=condition_method,
        batch_size=batch_size,
        seed=seed,
    )
    _record_condition(results, split, cond, labels, rule, condition_method, layer)
    report = set(split.report)
    report_users = sorted({p.user_id for p in prompts if p.prompt_id in report})
    limits = {m: nondegenerate_limit(dose, split.select, m, alphas) for m in methods}
    alpha_kl, kl_rows = _equal_kl(
        model, vectors, methods, report_users, cond, neutral, alpha, results, batch_size, limits
    )
    cond_cells = _conditional_cells(
        model,
        [p for p in prompts if p.prompt_id in report],
        prompts,
        vectors,
        {m: sorted({float(a) for a in alphas if a > 0} | {alpha_kl[m]}) for m in methods},
        cond,
        results,
        settings,
        measure,
    )
    dose_report = dose[dose["prompt_id"].isin(report)]
    summary = conditional_summary(dose_report, cond_cells, methods, alpha, alpha_kl, seed=seed)
    for m in methods:
        summary[m].update(neutral_kl_summary(kl_rows[kl_rows["method"] == m], seed))
    _flat(summary).to_csv(results / "conditional.csv", index=False)
    by_cat = conditional_by_category(dose_report, cond_cells)
    by_cat.to_csv(results / "conditional_by_category.csv", index=False)
    pop_kl = kl_rows[(kl_rows["method"] == "population") & (kl_rows["arm"] == "conditional")]
    return {
        "conditional": summary,
        "conditional_steered_share": {
            "report_prompts": summary["population"]["steered_share"]["conditional"],
            "neutral_texts": _estimate(
                pop_kl["steered"].astype(float), pop_kl["text"], seed
            ).reported("text"),
            "selection_prompts_labelled_true": round(float(np.mean(list(labels.values()))), 5),
            # a prompt's projection varies by its batch's padding in the last bits: prompts
            # steered in some of their cells and not in others
            "prompts_decided_both_ways": int(
                (cond_cells.groupby("prompt_id")["steered"].nunique() > 1).sum()
            ),
        },
        "conditional_alphas": _alphas_keys(
            pd.read_csv(results / "conditional_kl_search.csv"),
            kl_rows,
            alpha,
            alpha_kl,
            limits,
            len(_halves(neutral)[0]),
        ),
        "conditional_arms": arm_agreement(dose_report, cond_cells, methods, alpha, alpha_kl),
        "conditional_by_category": _by_category_keys(
            by_cat, alpha, category_differences(dose_report, cond_cells, alpha, seed=seed)
        ),
        "condition": {"layer": layer, "method": condition_method, **cond.describe()},
    }


def _alphas_keys(
    search: pd.DataFrame,
    kl_rows: pd.DataFrame,
    alpha: float,
    alpha_kl: Mapping[str, float],
    limits: Mapping[str, tuple[float, dict[str, float]]],
    n_select: int,
) -> dict[str, Any]:
    """The summary's ``conditional_alphas``: the operating α; per method its equal-KL α, the
    search's KL there and its target (selection texts), whether the grid's top was chosen
    (``capped``), the top of the non-degenerate range and the degenerate shares it was read
    from (selection prompts); the held-out KL ratio and whether it keeps "at equal KL"."""
    chosen = search[search["chosen"]].set_index("method")
    target = search[search["arm"] == "unconditional"].groupby("method")["kl"].first()
    ratios = {m: heldout_kl_ratio(kl_rows[kl_rows["method"] == m]) for m in alpha_kl}
    return {
        "operating": alpha,
        "equal_kl": dict(alpha_kl),
        "equal_kl_capped": {m: bool(chosen.loc[m, "capped"]) for m in alpha_kl},
        "equal_kl_selection_kl": {m: round(float(chosen.loc[m, "kl"]), 6) for m in alpha_kl},
        "equal_kl_target": {m: round(float(target[m]), 6) for m in alpha_kl},
        "equal_kl_heldout_ratio": {
            m: None if r is None else round(r, 4) for m, r in ratios.items()
        },
        "equal_kl_matched": {m: kl_matched(r) for m, r in ratios.items()},
        "equal_kl_ratio_band": list(KL_RATIO_BAND),
        "equal_kl_limit": {m: limits[m][0] for m in alpha_kl},
        "degenerate_share_selection": {m: limits[m][1] for m in alpha_kl},
        "degenerate_max": DEGENERATE_MAX,
        "equal_kl_selection_texts": n_select,
        "equal_kl_report_texts": int(kl_rows["text"].nunique()),
    }


def _conditional_cells(
    model: HookedModel,
    report: Sequence[SweepPrompt],
    prompts: Sequence[SweepPrompt],
    vectors: Mapping[str, Any],
    alphas: Mapping[str, Sequence[float]],
    cond: Condition,
    results: Path,
    settings: GenerationSettings,
    measure: Measure,
) -> pd.DataFrame:
    """The conditional sweep on the report prompts: each method at its α values."""
    cells = [
        cell
        for m, grid in alphas.items()
        for cell in make_grid(report, [m], grid, ["condition"], baseline=False)
    ]
    frame = run_sweep(
        model,
        cells,
        prompts,
        vectors,
        results / "sweep" / "conditional",
        settings=settings,
        measure=measure,
        conditions={"condition": cond},
    )
    assert frame is not None
    return frame


def _record_condition(
    results: Path,
    split: Split,
    cond: Condition,
    labels: Mapping[str, bool],
    rule: str,
    condition_method: str,
    layer: int,
) -> None:
    """Save the condition beside the vectors and record its threshold's selection."""
    shutil.rmtree(results / "vectors" / "conditions", ignore_errors=True)
    save_conditions({"condition": cond}, results / "vectors")
    record_selection(
        results,
        "condition_threshold",
        split,
        round(cond.threshold, 6),
        criterion="highest balanced accuracy of 'projection > threshold' on the selection "
        f"prompts, labelled True where {rule}; the direction from the opening prompts of the "
        "set's other conversations (the caller's fit pool: in the demo, users outside the "
        "report split; never a held-out prompt), labelled by their category",
        method=condition_method,
        layer=layer,
        n_labelled_true=int(sum(labels.values())),
        n_fit_prompts=cond.metadata["n_prompts"],
        balanced_accuracy=cond.metadata["threshold_balanced_accuracy"],
    )


def _by_category_keys(
    by_cat: pd.DataFrame, alpha: float, differences: Mapping[str, Any]
) -> dict[str, Any]:
    """Per category at ``alpha``: both arms' ΔMAE % vs unsteered (points), the prompts' n, and
    the paired MAE difference (conditional − unconditional) with its interval."""
    at = by_cat[np.isclose(by_cat["alpha"], alpha)]
    return {
        str(cat): {
            arm: round(float(part.loc[part["arm"] == arm, "mae_change_pct"].iloc[0]), 3)
            for arm in ("conditional", "unconditional")
            if (part["arm"] == arm).any()
        }
        | {"n": int(part["n"].max()), "mae": differences.get(str(cat))}
        for cat, part in at.groupby("category")
    }
