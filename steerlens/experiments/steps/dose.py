"""Step 2, ``dose``: every method x α on held-out prompts (each prompt steered with its own
user's vector), scored for toxicity MAE, perplexity, degeneration and (simulated sets)
keyword-density utility; the operating α chosen on the selection prompts."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from steerlens.experiments.claims import dose_claims
from steerlens.experiments.resume import StepInputs
from steerlens.experiments.splits import agreed_side, record_selection
from steerlens.experiments.steps.base import Step, register_step
from steerlens.experiments.steps.job import (
    _alpha_split,
    _Job,
    _on,
    _reported,
)
from steerlens.experiments.summary_file import read_summary
from steerlens.experiments.sweep import (
    SweepPrompt,
    held_out_prompts,
    make_grid,
    run_sweep,
    standard_measures,
)
from steerlens.metrics.stats import cluster_estimate
from steerlens.metrics.summaries import (
    BASELINE,
    degenerate_flags,
    degenerate_share,
    dose_response_table,
    selectivity_table,
    utility_gains,
)


def _dose_step(job: _Job) -> dict[str, Any]:
    cfg, results = job.cfg, job.results
    job.prompts = held_out_prompts(  # users and texts on one side of the split only
        job.need("test_pairs"),
        cfg.n_prompts,
        cfg.run.seed,
        keep=lambda p: agreed_side(p.user_id, p.prompt, cfg.run.seed) is not None,
    )
    (results / "prompts.jsonl").write_text(
        "".join(json.dumps(asdict(p)) + "\n" for p in job.prompts), encoding="utf-8"
    )
    dose = run_sweep(
        job.model,
        make_grid(job.prompts, cfg.methods, cfg.alphas, ["all"]),
        job.prompts,
        job.need("vectors"),
        results / "sweep" / "dose",
        settings=job.settings,
        measure=standard_measures(job.gt, batch_size=cfg.run.batch_size),
    )
    assert dose is not None
    job.dose = dose
    split = _alpha_split(job)
    # the operating α: the population vector's lowest MAE on the selection prompts
    chooser = dose_response_table(_on(dose, split.select), seed=cfg.run.seed)
    chooser.to_csv(results / "dose_response_select.csv", index=False)
    pop_sel = chooser[(chooser["method"] == "population") & (chooser["alpha"] > 0)]
    job.operating_alpha = float(pop_sel.loc[pop_sel["mae"].idxmin(), "alpha"])
    record_selection(
        results,
        "operating_alpha",
        split,
        job.operating_alpha,
        criterion="lowest toxicity MAE of the population vector on the selection prompts",
        scores={
            f"{a:g}": round(float(m), 5)
            for a, m in zip(pop_sel["alpha"], pop_sel["mae"], strict=True)
        },
    )
    # everything reported below is on the report prompts only
    report = _on(dose, split.report)
    table = dose_response_table(report, seed=cfg.run.seed)
    table.to_csv(results / "dose_response.csv", index=False)
    selectivity = selectivity_table(report, method="population")
    selectivity.to_csv(results / "selectivity.csv")
    pop = table[table["method"] == "population"]
    best = pop[np.isclose(pop["alpha"], float(job.operating_alpha))].iloc[0]
    base = pop[pop["alpha"] == 0.0].iloc[0]
    keys: dict[str, Any] = {
        "n_prompts": len(job.prompts),
        "n_users": len({p.user_id for p in job.prompts}),
        "n_report_prompts": len(split.report),
        "n_report_users": len(split.extra["users"]["report"]),
        "operating_alpha": job.operating_alpha,
        "mae_baseline": _reported(base, "mae", "mae_low", "mae_high", "user"),
        "mae_best": _reported(best, "mae", "mae_low", "mae_high", "user"),
        "mae_change_pct_best": _reported(best, "delta_pct", "delta_low", "delta_high", "user"),
        # median perplexity of the generations (a level, no interval): n users as the rows
        "ppl_baseline": {"median": round(float(base["ppl"]), 4), "n": int(base["n"])},
        "ppl_best": {"median": round(float(best["ppl"]), 4), "n": int(best["n"])},
        "dose_response": table.round(5).to_dict(orient="records"),
        "mae_change_pct_by_category": {
            str(cat): {f"{a:g}": round(float(v), 3) for a, v in row.items()}
            for cat, row in selectivity.iterrows()
        },
        # point estimates of a grid (categories x α) of comparisons, on this many prompts each
        "mae_change_pct_by_category_n": {
            str(cat): int(part["prompt_id"].nunique())
            for cat, part in report[report["method"] == BASELINE].groupby("category")
        },
    }
    util = _utility_by_group(job, report) if job.gt is not None else None
    if util is not None:
        util.to_csv(results / "utility_by_group.csv", index=False)
        keys["utility_gain"] = {  # each with its arm's (or both arms') degenerate share
            m: {
                r["group"]: _with_share(_reported(r, "mean", "low", "high", "user"), r)
                for _, r in part.iterrows()
            }
            for m, part in util.groupby("method")
        }
        keys["utility_gain_all"] = {m: row.pop("all") for m, row in keys["utility_gain"].items()}
    return keys


def _with_share(entry: dict[str, Any], r: pd.Series) -> dict[str, Any]:
    """A utility estimate with its arm's degenerate-or-empty share beside it; for a paired
    difference ``m − population``, both arms' shares (``{m: share, "population": share}``)."""
    ref = r.get("degenerate_share_population")
    if ref is None or pd.isna(ref):
        return {**entry, "degenerate_share": float(r["degenerate_share"])}
    method = str(r["method"]).split(" − ")[0]
    shares = {method: float(r["degenerate_share"]), "population": float(ref)}
    return {**entry, "degenerate_share": shares}


def _utility_by_group(job: _Job, dose: pd.DataFrame) -> pd.DataFrame:
    """Keyword-density utility gain of the simulated users per user group (and ``"all"``) at
    the operating α, floored at 0 for degenerate or empty outputs
    (``steerlens.metrics.preference.utility_gain``), with a two-stage bootstrap over users,
    then their prompts; a row per method and group, and the difference from the population
    vector paired by prompt (``method − population``). Each row carries its arm's
    ``degenerate_share`` (and ``degenerate_share_population`` for a difference)."""
    gt = job.need("gt")
    base = dose[dose["method"] == BASELINE].set_index("prompt_id")["utility"]
    at = dose[
        np.isclose(dose["alpha"], float(job.operating_alpha or 0)) & (dose["method"] != BASELINE)
    ]
    at = at.assign(
        gain=utility_gains(at, base),
        flag=degenerate_flags(at).astype(float),
        group=[gt["users"][u]["group"] for u in at["user"]],
    )
    boot: dict[str, Any] = {"seed": job.cfg.run.seed}
    rows = []
    for method, part in at.groupby("method"):
        for g, sub in [("all", part), *part.groupby("group")]:
            est = cluster_estimate(sub["gain"], sub["user"], **boot)
            share = degenerate_share(sub)
            rows.append({"method": method, "group": g, **est.as_dict(), "degenerate_share": share})
    index = ["prompt_id", "user", "group"]
    wide = at.pivot_table(index=index, columns="method", values="gain")
    flags = at.pivot_table(index=index, columns="method", values="flag")
    for method in [m for m in wide.columns if m != "population"]:
        diff = (wide[method] - wide["population"]).dropna()
        shares = flags.loc[diff.index, [method, "population"]].reset_index()
        diff = diff.reset_index()
        for g, sub in [("all", diff), *diff.groupby("group")]:
            est = cluster_estimate(sub[0], sub["user"], **boot)
            fl = shares.loc[sub.index]
            rows.append(
                {
                    "method": f"{method} − population",
                    "group": g,
                    **est.as_dict(),
                    "degenerate_share": round(float(fl[method].mean()), 4),
                    "degenerate_share_population": round(float(fl["population"].mean()), 4),
                }
            )
    return pd.DataFrame(rows)


def _read_prompts(job: _Job) -> list[SweepPrompt]:
    lines = (job.results / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    return [SweepPrompt(**json.loads(line)) for line in lines if line]


def _read_dose(job: _Job) -> pd.DataFrame:
    return pd.read_parquet(job.results / "sweep" / "dose" / "cells.parquet")


def _read_operating_alpha(job: _Job) -> float | None:
    best = read_summary(job.results / "summary.json").get("operating_alpha")
    return None if best is None else float(best)


STEP = register_step(
    Step(
        "dose",
        _dose_step,
        StepInputs(
            (
                "n_prompts",
                "methods",
                "alphas",
                "max_new_tokens",
                "run.generation_batch_size",
                "held_out",
                "max_users",
            ),
            ("vectors",),
        ),
        files=(
            "prompts.jsonl",
            "dose_response.csv",
            "dose_response_select.csv",
            "selectivity.csv",
            "utility_by_group.csv",
        ),
        keys=(
            "dose_response",
            "mae_baseline",
            "mae_best",
            "mae_change_pct_best",
            "mae_change_pct_by_category",
            "mae_change_pct_by_category_n",
            "n_prompts",
            "n_report_prompts",
            "n_report_users",
            "n_users",
            "operating_alpha",
            "ppl_baseline",
            "ppl_best",
            "utility_gain",
            "utility_gain_all",
        ),
        provides={
            "prompts": _read_prompts,
            "dose": _read_dose,
            "operating_alpha": _read_operating_alpha,
        },
        claims=dose_claims,
        title="Dose-response",
    )
)
