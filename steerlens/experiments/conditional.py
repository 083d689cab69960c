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
3. **Equal side effect**: the neutral texts are halved; on the selection half, the largest α
   of a grid (the operating α times ``KL_FACTORS``) whose conditional mean KL stays within
   the unconditional mean KL at the operating α (population vector). The KL is reported on
   the other half.
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
from steerlens.core.vectors import SteeringVector
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
from steerlens.metrics.stats import Estimate, cluster_estimate
from steerlens.metrics.summaries import BASELINE, selectivity_table
from steerlens.run.divergence import reference_logprobs, steering_divergence

__all__ = [
    "FIT_PROMPTS",
    "KL_FACTORS",
    "conditional_by_category",
    "conditional_summary",
    "equal_kl_alpha",
    "fit_study_condition",
    "neutral_kl_rows",
    "run_conditional",
    "selection_labels",
]

logger = logging.getLogger(__name__)
FIT_PROMPTS = 256
"""At most this many of the data set's other prompts fit the condition's direction."""
KL_FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0)
"""The α grid of the equal-KL search, as multiples of the operating α."""
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


def equal_kl_alpha(
    model: HookedModel,
    vectors: SteeringVector | Sequence[SteeringVector],
    condition: Condition,
    texts: Sequence[str],
    alpha: float,
    *,
    factors: Sequence[float] = KL_FACTORS,
    batch_size: int = 16,
) -> tuple[float, pd.DataFrame]:
    """The largest ``alpha * factor`` whose conditional mean KL on ``texts`` (every text under
    every one of ``vectors``: a method's users) stays within the unconditional mean KL at
    ``alpha``; and the search's table (α, arm, mean KL, share steered, ``capped``: the grid's
    largest α was chosen, so KL may stay below the target)."""
    vecs = [vectors] if isinstance(vectors, SteeringVector) else list(vectors)
    rows_v = [v for v in vecs for _ in texts]
    rows_t = [t for _ in vecs for t in texts]
    ref = reference_logprobs(model, texts, batch_size=batch_size)
    kw: dict[str, Any] = {"batch_size": batch_size, "reference": ref * len(vecs)}

    def mean_kl(a: float, gate: Any) -> tuple[float, float]:
        out = steering_divergence(model, rows_t, rows_v, a, gate=gate, **kw)
        return float(np.mean([d.kl for d in out])), float(
            np.mean([d.steered is not False for d in out])
        )

    target, _ = mean_kl(alpha, "all")
    rows = [{"alpha": alpha, "arm": "unconditional", "kl": target, "steered": 1.0}]
    chosen = alpha
    for f in sorted(factors):
        kl, steered = mean_kl(alpha * f, condition)
        rows.append({"alpha": alpha * f, "arm": "conditional", "kl": kl, "steered": steered})
        if kl <= target * (1 + 1e-9):
            chosen = max(chosen, alpha * f)
    table = pd.DataFrame(rows)
    table["chosen"] = (table["arm"] == "conditional") & np.isclose(table["alpha"], chosen)
    table["capped"] = bool(np.isclose(chosen, alpha * max(factors)))
    return chosen, table


def kl_vectors(entry: Any, users: Sequence[str], limit: int = 8) -> list[SteeringVector]:
    """A method's vectors for the neutral-text KL: its one vector, or the first ``limit`` of
    ``users`` (sorted) that have one."""
    if isinstance(entry, SteeringVector):
        return [entry]
    return [entry[u] for u in sorted(users) if u in entry][:limit]


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
    ``steered_share`` (its difference: minus the share left unsteered)."""
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
                gain_c = c["utility"] - base.loc[c.index, "utility"]
                gain_u = u["utility"] - base.loc[u.index, "utility"]
                entry[f"utility_gain{suffix}"] = _arms(gain_c, gain_u, u["user"], "user", seed)
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


def neutral_kl_rows(
    model: HookedModel,
    vectors: Sequence[SteeringVector],
    condition: Condition,
    texts: Sequence[str],
    alpha: float,
    alpha_kl: float,
    *,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Per text (``t0``, ``t1``, ...) and vector (``v0``, ...): the KL of unconditional
    steering at ``alpha`` and of conditional steering at ``alpha`` and ``alpha_kl``, and
    whether the condition steered it."""
    rows_v = [v for v in vectors for _ in texts]
    rows_t = [t for _ in vectors for t in texts]
    ref = reference_logprobs(model, texts, batch_size=batch_size) * len(vectors)
    kw: dict[str, Any] = {"batch_size": batch_size, "reference": ref}
    runs = {
        "unconditional": steering_divergence(model, rows_t, rows_v, alpha, **kw),
        "conditional": steering_divergence(model, rows_t, rows_v, alpha, gate=condition, **kw),
        "conditional_equal_kl": steering_divergence(
            model, rows_t, rows_v, alpha_kl, gate=condition, **kw
        ),
    }
    n = len(texts)
    return pd.DataFrame(
        [
            {
                "text": f"t{i % n}",
                "vector": f"v{i // n}",
                "arm": arm,
                "kl": d.kl,
                "steered": d.steered is not False,
            }
            for arm, rows in runs.items()
            for i, d in enumerate(rows)
        ]
    )


def _flat(summary: Mapping[str, Any]) -> pd.DataFrame:
    """The summary as a table: method, measure, arm, mean, interval, n, unit."""
    rows = []
    for method, measures in summary.items():
        for measure, arms in measures.items():
            for arm in ARMS:
                r = arms[arm]
                iv = r["interval"] or [None, None]
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
    alpha_kl, kl_rows = _equal_kl(
        model, vectors, methods, report_users, cond, neutral, alpha, results, batch_size
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
    search = pd.read_csv(results / "conditional_kl_search.csv")
    chosen = search[search["chosen"]].set_index("method")
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
        "conditional_alphas": {
            "operating": alpha,
            "equal_kl": alpha_kl,
            "equal_kl_capped": {m: bool(chosen.loc[m, "capped"]) for m in methods},
            "equal_kl_selection_kl": {m: round(float(chosen.loc[m, "kl"]), 6) for m in methods},
            "equal_kl_target": {
                m: round(
                    float(
                        search[(search["method"] == m) & (search["arm"] == "unconditional")][
                            "kl"
                        ].iloc[0]
                    ),
                    6,
                )
                for m in methods
            },
        },
        "conditional_by_category": _by_category_keys(
            by_cat, alpha, category_differences(dose_report, cond_cells, alpha, seed=seed)
        ),
        "condition": {"layer": layer, "method": condition_method, **cond.describe()},
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


def _equal_kl(
    model: HookedModel,
    vectors: Mapping[str, Any],
    methods: Sequence[str],
    users: Sequence[str],
    cond: Condition,
    neutral: Sequence[str],
    alpha: float,
    results: Path,
    batch_size: int,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Per method, its equal-KL α (on the selection half of the neutral texts, its users'
    vectors) and the KL rows on the report half; writes both tables."""
    kl_select, kl_report = _halves(neutral)
    alpha_kl: dict[str, float] = {}
    searches, rows = [], []
    for m in methods:
        vecs = kl_vectors(vectors[m], users)
        alpha_kl[m], search = equal_kl_alpha(
            model, vecs, cond, kl_select, alpha, batch_size=batch_size
        )
        searches.append(search.assign(method=m))
        kl = neutral_kl_rows(
            model, vecs, cond, kl_report, alpha, alpha_kl[m], batch_size=batch_size
        )
        rows.append(kl.assign(method=m))
    pd.concat(searches, ignore_index=True).to_csv(
        results / "conditional_kl_search.csv", index=False
    )
    kl_rows = pd.concat(rows, ignore_index=True)
    kl_rows.to_csv(results / "conditional_neutral_kl.csv", index=False)
    _record_equal_kl(results, len(kl_select), len(kl_report), alpha, alpha_kl)
    return alpha_kl, kl_rows


def _record_equal_kl(
    results: Path, n_select: int, n_report: int, alpha: float, alpha_kl: Mapping[str, float]
) -> None:
    record_selection(
        results,
        "conditional_equal_kl_alpha",
        Split([f"s{i}" for i in range(n_select)], [f"t{i}" for i in range(n_report)], "text"),
        dict(alpha_kl),
        criterion="per method, the largest α of the grid whose conditional mean KL on the "
        f"selection neutral texts (its report users' vectors) stays within its unconditional "
        f"KL at α {alpha:g}",
        grid=[round(alpha * f, 6) for f in KL_FACTORS],
    )


def _halves(texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """The neutral texts' selection half (the equal-KL α) and report half (the KL)."""
    half = len(texts) // 2
    return list(texts[:half]), list(texts[half:])


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
