"""Step 4, ``calibrated``: the dose sweep with each user's α calibrated to a KL budget on
calibration texts; the KL each calibrated vector reaches reported on held-out texts."""

from __future__ import annotations

from typing import Any

import pandas as pd

from steerlens.experiments.claims import calibrated_claims
from steerlens.experiments.resume import StepInputs
from steerlens.experiments.splits import Split, record_selection
from steerlens.experiments.steps.base import Step, register_step
from steerlens.experiments.steps.job import (
    Who,
    _budgets,
    _entry,
    _Job,
    _neutral,
)
from steerlens.experiments.sweep import (
    calibrate_table,
    make_grid,
    run_sweep,
    save_vectors,
    standard_measures,
)
from steerlens.metrics.stats import cluster_estimate, crossed_estimate, reported
from steerlens.metrics.summaries import (
    BASELINE,
    degenerate_flags,
    dose_response_table,
    utility_gains,
)
from steerlens.metrics.token_truth import text_id
from steerlens.run.divergence import (
    reference_logprobs,
    steering_divergence,
)


def _record_kl_split(job: _Job, texts: list[str], heldout: list[str], budgets: list[float]) -> None:
    """Record the KL budgets and the calibration / held-out split of the neutral texts (ids:
    ``text_id`` of each text, so a shared text would show on both sides)."""
    record_selection(
        job.results,
        "kl_alpha",
        Split([text_id(t) for t in texts], [text_id(t) for t in heldout], "text"),
        budgets,
        criterion="each user's α whose mean per-token KL on the calibration texts meets the "
        "budget (budgets: the population vector's KL at kl_alphas on those texts)",
    )


def _alpha_spread(alphas: Any, skip: set[Who]) -> pd.DataFrame:
    """Per (method, budget): the smallest and largest calibrated α over the users."""
    return (
        pd.DataFrame(
            [
                {"method": m, "kl_budget": b, "user": u, "alpha": a}
                for (m, u, b), a in alphas.items()
                if (m, u, b) not in skip
            ],
            columns=["method", "kl_budget", "user", "alpha"],
        )
        .groupby(["method", "kl_budget"])["alpha"]
        .agg(alpha_min="min", alpha_max="max")
        .reset_index()
    )


def _unreached_summary(unreached: list[Who], found: dict[Who, dict[str, Any]]) -> dict[str, Any]:
    """The budgets whose α search did not reach the budget, and why."""

    def why(k: Who) -> str:  # KL still below the budget at max_alpha, or the search stopped
        return "out of reach" if found[k].get("kl", 0.0) < k[2] else "not converged"

    return {
        "count": len(unreached),
        "users": sorted({f"{m}:{u}" for m, u, _ in unreached}),
        "entries": [
            {
                "method": m,
                "user": u,
                "budget": b,
                "kl_reached": found[(m, u, b)].get("kl"),
                "reason": why((m, u, b)),
            }
            for m, u, b in unreached
        ],
    }


def _calibrated_step(job: _Job) -> dict[str, Any]:
    cfg = job.cfg
    if not (job.results / "side_effects.csv").exists():
        raise RuntimeError("the calibrated step needs the side_effects step's results")
    starts = _budgets(job)
    budgets = sorted(starts)
    neutral = _neutral(job)
    # calibration texts select each user's α; disjoint held-out texts report the KL reached
    texts, heldout = neutral[: cfg.kl_texts], neutral[cfg.kl_texts : 2 * cfg.kl_texts]
    _record_kl_split(job, texts, heldout, budgets)
    users = {p.user_id for p in job.need("prompts")}  # only the users the sweep steers
    vectors = {
        m: {u: v for u, v in e.items() if u in users} if isinstance(e, dict) else e
        for m, e in job.need("vectors").items()
    }
    alphas = calibrate_table(
        job.model, vectors, budgets, texts, batch_size=cfg.run.batch_size, starts=starts
    )
    save_vectors(job.vectors, job.results / "vectors")  # each carries its calibration
    found = alphas.found
    unreached = sorted(k for k, got in found.items() if not got.get("reached", True))
    skip = set(unreached)

    def kept(c: Any) -> bool:
        if c.method == BASELINE:
            return True
        who = (c.method, c.user if isinstance(vectors[c.method], dict) else "*", c.kl_budget)
        return who not in skip

    grid = make_grid(
        job.need("prompts"),
        cfg.methods,
        [0.0, *budgets],
        ["all"],
        calibrated=lambda m, u, b: alphas[(m, u, b)],
    )
    cells = run_sweep(
        job.model,
        [c for c in grid if kept(c)],  # an unreached budget is never swept at max_alpha
        job.prompts,
        job.vectors,
        job.results / "sweep" / "calibrated",
        settings=job.settings,
        measure=standard_measures(job.gt, batch_size=cfg.run.batch_size),
        reuse=[job.need("dose")],  # its baseline, and any user's α the dose grid holds
    )
    assert cells is not None
    table = dose_response_table(cells, dose="kl_budget", seed=cfg.run.seed)
    spread = _alpha_spread(alphas, skip)
    if not table.empty:  # (empty when every budget was out of reach)
        table = table.merge(spread, on=["method", "kl_budget"], how="left")
    table.to_csv(job.results / "calibrated.csv", index=False)
    heldout_rows = _heldout_kl(
        job, vectors, heldout, {k: a for k, a in alphas.items() if k not in skip}, cfg.kl_texts
    )
    heldout_rows.to_csv(job.results / "kl_heldout_rows.csv", index=False)
    keys: dict[str, Any] = {
        "kl_budgets": budgets,
        "kl_calibration_texts": len(texts),
        "kl_heldout_texts": len(heldout),
        "calibrated": table.round(5).to_dict(orient="records"),
        "kl_heldout": _kl_heldout_summary(heldout_rows, cfg.run.seed),
        "calibration_unreached": _unreached_summary(unreached, found),
    }
    if "utility_gain" in table:
        keys["utility_per_kl"] = _utility_per_kl(job, table, cells, heldout_rows)
    return keys


def _heldout_kl(
    job: _Job, vectors: Any, texts: list[str], alphas: dict[Who, float], first_id: int
) -> pd.DataFrame:
    """Per (method, user, budget) and held-out text: the KL each calibrated vector reaches
    there (one batched pass per budget, every vector a row; the unsteered pass once)."""
    columns = ["method", "user", "kl_budget", "text_id", "kl"]
    if not texts or not alphas:
        return pd.DataFrame(columns=columns)
    bs = job.cfg.run.batch_size
    reference = reference_logprobs(job.model, texts, batch_size=bs)
    rows = []
    for budget in sorted({b for _, _, b in alphas}):
        who = [(m, u) for (m, u, b) in alphas if b == budget]
        got = steering_divergence(
            job.model,
            [t for _ in who for t in texts],
            [_entry(vectors, m, u) for m, u in who for _ in texts],
            [alphas[(m, u, budget)] for m, u in who for _ in texts],
            batch_size=bs,
            reference=[r for _ in who for r in reference],
        )
        k = 0
        for m, u in who:
            for i in range(len(texts)):
                rows.append(  # text ids index the neutral set, as in splits.json
                    {
                        "method": m,
                        "user": u,
                        "kl_budget": budget,
                        "text_id": first_id + i,
                        "kl": got[k].kl,
                    }
                )
                k += 1
    return pd.DataFrame(rows, columns=columns)


def _kl_heldout_summary(rows: pd.DataFrame, seed: int) -> dict[str, Any]:
    """method -> budget -> the held-out KL and its ratio to the budget. Every user's vector
    meets the same held-out texts, so per-user methods resample users and texts crossed
    (``crossed_estimate``; n counts users); a one-vector method, texts alone. ``resampled``
    names the units resampled."""
    out: dict[str, Any] = {}
    for (m, b), part in rows.groupby(["method", "kl_budget"]):
        one = bool((part["user"] == "*").all())  # one vector for everyone: texts vary
        texts = part["text_id"].astype(str)
        est = (
            cluster_estimate(part["kl"], texts, seed=seed)
            if one
            else crossed_estimate(part["kl"], part["user"], texts, seed=seed)
        )
        out.setdefault(str(m), {})[f"{b:g}"] = {
            **est.reported("text" if one else "user"),
            "resampled": "text" if one else "user x text",
            "ratio_to_budget": round(est.mean / float(b), 4),
        }
    return out


def _utility_per_kl(
    job: _Job, calibrated: pd.DataFrame, cells: pd.DataFrame, heldout: pd.DataFrame
) -> dict[str, Any]:
    """Utility gain per nat of neutral-text KL, per method, on every held-out prompt: at equal
    KL (the calibrated sweep, divided by the KL its users' α reach on held-out neutral text)
    and at equal norm (the fixed-α sweep, divided by that α's KL on the neutral texts); and at
    each budget the difference from the population vector, paired by prompt, bootstrapped
    over users then prompts. Users whose budget was unreached are not in the calibrated
    sweep. Gains are floored at 0 for degenerate or empty outputs; each entry carries its
    arm's ``degenerate_share`` (a difference: ``{method: share, "population": share}``)."""
    seed = job.cfg.run.seed
    reached = heldout.groupby(["method", "kl_budget"])["kl"].mean()
    out: dict[str, Any] = {"calibrated": {}, "fixed_alpha": {}, "minus_population": {}}

    def per_nat(r: pd.Series, kl: float) -> dict[str, Any]:
        got = reported(
            float(r["utility_gain"]) / kl,
            float(r["utility_low"]) / kl,
            float(r["utility_high"]) / kl,
            int(r["n"]),
            "user",
            4,
        )
        share = round(float(r["degenerate_share"]), 4)
        return {**got, "kl": round(kl, 5), "degenerate_share": share}

    for _, r in calibrated[calibrated["kl_budget"] > 0].iterrows():
        b = float(r["kl_budget"])
        kl = float(reached.get((r["method"], b), b))
        out["calibrated"].setdefault(r["method"], {})[f"{b:g}"] = per_nat(r, kl)
    base = cells[cells["method"] == BASELINE].set_index("prompt_id")["utility"]
    steered = cells[cells["method"] != BASELINE]
    for b, part in steered.groupby("kl_budget"):
        gain = part.assign(gain=utility_gains(part, base), flag=degenerate_flags(part) * 1.0)
        wide = gain.pivot_table(index=["prompt_id", "user"], columns="method", values="gain")
        flags = gain.pivot_table(index=["prompt_id", "user"], columns="method", values="flag")
        if "population" not in wide:  # the population vector missed this budget
            continue
        for method in [m for m in wide.columns if m != "population"]:
            diff = (wide[method] - wide["population"]).dropna()
            shares = flags.loc[diff.index, [method, "population"]].mean().round(4)
            diff = diff.reset_index()
            est = cluster_estimate(diff[0], diff["user"], seed=seed)
            out["minus_population"].setdefault(method, {})[f"{float(b):g}"] = {
                **est.reported("user"),
                "degenerate_share": {k: float(v) for k, v in shares.items()},
            }
    # every held-out prompt, as the calibrated sweep (no α is tuned in either comparison)
    dose = dose_response_table(job.need("dose"), seed=seed)
    rows = pd.read_csv(job.results / "side_effects_rows.csv")
    side = rows.groupby(["method", "alpha"])["kl"].mean().reset_index()
    both = dose.merge(side, on=["method", "alpha"])
    for _, r in both[both["alpha"] > 0].iterrows():
        out["fixed_alpha"].setdefault(r["method"], {})[f"{r['alpha']:g}"] = per_nat(
            r, float(r["kl"])
        )
    return out


STEP = register_step(
    Step(
        "calibrated",
        _calibrated_step,
        StepInputs(
            (
                "methods",
                "kl_alphas",
                "kl_texts",
                "mmlu_items",
                "neutral_texts",
                "max_new_tokens",
                "run.generation_batch_size",
            ),
            ("vectors", "dose", "side_effects"),
        ),
        files=("calibrated.csv", "kl_heldout_rows.csv"),
        keys=(
            "calibrated",
            "calibration_unreached",
            "kl_budgets",
            "kl_calibration_texts",
            "kl_heldout",
            "kl_heldout_texts",
            "utility_per_kl",
        ),
        claims=calibrated_claims,
        title="KL-budget-calibrated α",
    )
)
