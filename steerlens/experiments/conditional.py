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

from steerlens.core.conditions import Condition, split_gate
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
from steerlens.metrics.preference import utility_gain
from steerlens.metrics.stats import Estimate, cluster_estimate
from steerlens.metrics.summaries import BASELINE, degenerate_flags, selectivity_table
from steerlens.metrics.token_truth import text_id
from steerlens.run.divergence import reference_logprobs, steering_divergence

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
KL_FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0)
"""The α grid of the equal-KL search, as multiples of the operating α."""
MIN_NEUTRAL_SELECT = 8
"""The equal-KL α is chosen on at least this many neutral texts (and reported on as many)."""
DEGENERATE_MAX = 0.5
"""An α whose unconditional generations are more than this share degenerate (or any α above
such a swept α) is out of the equal-KL search."""
KL_RATIO_BAND = (0.9, 1.1)
"""The held-out KL ratio (conditional over unconditional) that keeps the words "at equal KL"."""
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


def condition_fires(
    model: HookedModel,
    condition: Condition,
    vector: SteeringVector,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
) -> list[bool]:
    """Per text, whether ``condition`` steers it. The condition is read at or before the
    earliest steered point, so its decision is the text's alone (the same under every vector
    and α); a soft condition steers every text in part."""
    _, cond = split_gate(condition)  # a Condition, or one joined with a position gate
    if cond is None or cond.soft is not None:
        return [True] * len(texts)
    out = steering_divergence(model, texts, vector, 1.0, gate=condition, batch_size=batch_size)
    return [d.steered is not False for d in out]


def conditional_kl(
    model: HookedModel,
    vectors: Sequence[SteeringVector],
    condition: Condition,
    texts: Sequence[str],
    alpha: float,
    fires: Sequence[bool],
    reference: Sequence[Any],
    *,
    batch_size: int = 16,
) -> list[tuple[float, bool]]:
    """Per (vector, text) row, vector-major: the KL of conditional steering at ``alpha`` and
    whether it steered. Only the texts the condition ``fires`` on run; a text it leaves
    unsteered is the unsteered model there (KL 0), so it is not run again per vector."""
    n = len(texts)
    rows = [i for i in range(len(vectors) * n) if fires[i % n]]
    got = (
        steering_divergence(
            model,
            [texts[i % n] for i in rows],
            [vectors[i // n] for i in rows],
            alpha,
            gate=condition,
            reference=[reference[i % n] for i in rows],
            batch_size=batch_size,
        )
        if rows
        else []
    )
    out = [(0.0, False)] * (len(vectors) * n)
    for i, d in zip(rows, got, strict=True):
        out[i] = (d.kl, d.steered is not False)
    return out


def equal_kl_alpha(
    model: HookedModel,
    vectors: SteeringVector | Sequence[SteeringVector],
    condition: Condition,
    texts: Sequence[str],
    alpha: float,
    *,
    factors: Sequence[float] = KL_FACTORS,
    limit: float = float("inf"),
    batch_size: int = 16,
    reference: Sequence[Any] | None = None,
    fires: Sequence[bool] | None = None,
) -> tuple[float, pd.DataFrame]:
    """The largest ``alpha * factor`` (at most ``limit``, and ``alpha`` itself always) whose
    conditional mean KL on ``texts`` (every text under every one of ``vectors``: a method's
    users) stays within the unconditional mean KL at ``alpha``; and the search's table (α,
    arm, mean KL, share steered, ``admissible``: within ``limit``, else not run and KL empty;
    ``capped``: the largest admissible α was chosen, so KL may stay below the target).
    ``reference`` / ``fires``: the texts' unsteered log-probabilities and the condition's
    decisions (``condition_fires``), when the caller has them."""
    vecs = [vectors] if isinstance(vectors, SteeringVector) else list(vectors)
    ref = list(reference or reference_logprobs(model, texts, batch_size=batch_size))
    if fires is None:
        fires = condition_fires(model, condition, vecs[0], texts, batch_size=batch_size)
    unconditional = steering_divergence(
        model,
        [t for _ in vecs for t in texts],
        [v for v in vecs for _ in texts],
        alpha,
        batch_size=batch_size,
        reference=ref * len(vecs),
    )
    target = float(np.mean([d.kl for d in unconditional]))
    rows: list[dict[str, Any]] = [
        {"alpha": alpha, "arm": "unconditional", "kl": target, "steered": 1.0, "admissible": True}
    ]
    grid = sorted({alpha, *(alpha * f for f in factors)})
    top = max([a for a in grid if a <= limit * (1 + 1e-9)] + [alpha])
    chosen = alpha
    for a in grid:
        if a > top * (1 + 1e-9):  # above the swept, non-degenerate range: not run
            rows.append({"alpha": a, "arm": "conditional", "kl": np.nan, "admissible": False})
            continue
        got = conditional_kl(model, vecs, condition, texts, a, fires, ref, batch_size=batch_size)
        kl = float(np.mean([k for k, _ in got]))
        rows.append(
            {
                "alpha": a,
                "arm": "conditional",
                "kl": kl,
                "steered": float(np.mean([s for _, s in got])),
                "admissible": True,
            }
        )
        if kl <= target * (1 + 1e-9):
            chosen = max(chosen, a)
    table = pd.DataFrame(rows)
    table["chosen"] = (table["arm"] == "conditional") & np.isclose(table["alpha"], chosen)
    table["capped"] = bool(np.isclose(chosen, top))
    return chosen, table


def kl_vectors(entry: Any, users: Sequence[str], limit: int = 8) -> list[SteeringVector]:
    """A method's vectors for the neutral-text KL: its one vector, or the first ``limit`` of
    ``users`` (sorted) that have one."""
    if isinstance(entry, SteeringVector):
        return [entry]
    return [entry[u] for u in sorted(users) if u in entry][:limit]


def nondegenerate_limit(
    dose: pd.DataFrame, select: Sequence[str], method: str, alphas: Sequence[float]
) -> tuple[float, dict[str, float]]:
    """The top of ``method``'s swept, non-degenerate α range: the largest swept α such that
    no swept α up to it has more than ``DEGENERATE_MAX`` of the method's unconditional
    generations degenerate (the dose sweep's ``degenerate`` column, on the ``select`` prompts
    only); and each swept α's degenerate share. 0.0 where the smallest nonzero α already is
    degenerate; the largest swept α where nothing is (or no cell says)."""
    part = dose[
        (dose["method"] == method)
        & (dose["gate"] == "all")
        & dose["prompt_id"].isin(list(select))
        & (dose["alpha"] > 0)
    ]
    shares: dict[str, float] = {}
    if "degenerate" in part:
        by = part.groupby("alpha")["degenerate"].mean()
        shares = {f"{a:g}": round(float(v), 5) for a, v in by.items()}
    limit = 0.0
    for a in sorted(float(x) for x in alphas if x > 0):
        if shares.get(f"{a:g}", 0.0) > DEGENERATE_MAX:
            break
        limit = a
    return limit, shares


def heldout_kl_ratio(rows: pd.DataFrame) -> float | None:
    """Mean KL of the conditional arm at the equal-KL α over that of the unconditional arm,
    on the report half of the neutral texts (``neutral_kl_rows``'s rows); None where the
    unconditional KL is 0 or either arm is missing."""
    by = rows.groupby("arm")["kl"].mean()
    if "conditional_equal_kl" not in by or "unconditional" not in by:
        return None
    if not np.isfinite(by["unconditional"]) or by["unconditional"] <= 0:
        return None
    return float(by["conditional_equal_kl"] / by["unconditional"])


def kl_matched(ratio: float | None, band: tuple[float, float] = KL_RATIO_BAND) -> bool:
    """Whether a held-out KL ratio keeps the words "at equal KL": it lies within ``band``."""
    return ratio is not None and bool(np.isfinite(ratio)) and band[0] <= ratio <= band[1]


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


def neutral_kl_rows(
    model: HookedModel,
    vectors: Sequence[SteeringVector],
    condition: Condition,
    texts: Sequence[str],
    alpha: float,
    alpha_kl: float,
    *,
    batch_size: int = 16,
    reference: Sequence[Any] | None = None,
    fires: Sequence[bool] | None = None,
) -> pd.DataFrame:
    """Per text (``t0``, ``t1``, ...) and vector (``v0``, ...): the KL of unconditional
    steering at ``alpha`` and of conditional steering at ``alpha`` and ``alpha_kl``, and
    whether the condition steered it (``reference`` / ``fires`` as in ``equal_kl_alpha``)."""
    ref = list(reference or reference_logprobs(model, texts, batch_size=batch_size))
    if fires is None:
        fires = condition_fires(model, condition, vectors[0], texts, batch_size=batch_size)
    unconditional = steering_divergence(
        model,
        [t for _ in vectors for t in texts],
        [v for v in vectors for _ in texts],
        alpha,
        batch_size=batch_size,
        reference=ref * len(vectors),
    )
    runs = {
        "unconditional": [(d.kl, True) for d in unconditional],
        **{
            arm: conditional_kl(
                model, vectors, condition, texts, a, fires, ref, batch_size=batch_size
            )
            for arm, a in (("conditional", alpha), ("conditional_equal_kl", alpha_kl))
        },
    }
    n = len(texts)
    return pd.DataFrame(
        [
            {"text": f"t{i % n}", "vector": f"v{i // n}", "arm": arm, "kl": kl, "steered": on}
            for arm, rows in runs.items()
            for i, (kl, on) in enumerate(rows)
        ]
    )


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
    limits: Mapping[str, tuple[float, Any]] | None = None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Per method, its equal-KL α (on the selection half of the neutral texts, its users'
    vectors; at most its ``limits`` α) and the KL rows on the report half; writes both
    tables."""
    kl_select, kl_report = _halves(neutral)
    if len(kl_select) < MIN_NEUTRAL_SELECT:
        raise ValueError(
            f"the equal-KL α needs >= {MIN_NEUTRAL_SELECT} selection neutral texts (half of "
            f"the neutral texts), got {len(kl_select)} of {len(neutral)}"
        )
    alpha_kl: dict[str, float] = {}
    searches, rows = [], []
    bs = batch_size
    # each half's unsteered pass and the condition's decisions, once for every method
    probe = kl_vectors(vectors[methods[0]], users)[0]  # any vector: decisions are the text's
    ref = {
        h: reference_logprobs(model, t, batch_size=bs)
        for h, t in (("s", kl_select), ("r", kl_report))
    }
    fires = {
        h: condition_fires(model, cond, probe, t, batch_size=bs)
        for h, t in (("s", kl_select), ("r", kl_report))
    }
    for m in methods:
        vecs = kl_vectors(vectors[m], users)
        lim = (limits or {}).get(m, (float("inf"), None))[0]
        alpha_kl[m], search = equal_kl_alpha(
            model,
            vecs,
            cond,
            kl_select,
            alpha,
            limit=lim,
            batch_size=bs,
            reference=ref["s"],
            fires=fires["s"],
        )
        searches.append(search.assign(method=m))
        kl = neutral_kl_rows(
            model,
            vecs,
            cond,
            kl_report,
            alpha,
            alpha_kl[m],
            batch_size=bs,
            reference=ref["r"],
            fires=fires["r"],
        )
        rows.append(kl.assign(method=m))
    pd.concat(searches, ignore_index=True).to_csv(
        results / "conditional_kl_search.csv", index=False
    )
    kl_rows = pd.concat(rows, ignore_index=True)
    kl_rows.to_csv(results / "conditional_neutral_kl.csv", index=False)
    _record_equal_kl(results, kl_select, kl_report, alpha, alpha_kl)
    return alpha_kl, kl_rows


def _record_equal_kl(
    results: Path,
    select: Sequence[str],
    report: Sequence[str],
    alpha: float,
    alpha_kl: Mapping[str, float],
) -> None:
    record_selection(
        results,
        "conditional_equal_kl_alpha",
        Split([text_id(t) for t in select], [text_id(t) for t in report], "text"),
        dict(alpha_kl),
        criterion="per method, the largest α of the grid whose conditional mean KL on the "
        f"selection neutral texts (its report users' vectors) stays within its unconditional "
        f"KL at α {alpha:g}; the grid only up to the method's largest swept α with no swept α "
        f"up to it over {DEGENERATE_MAX:g} degenerate (its unconditional generations on the "
        "selection prompts), and the operating α always",
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
