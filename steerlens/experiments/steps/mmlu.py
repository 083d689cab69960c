"""Step 7, ``mmlu``: zero-shot MMLU unsteered and steered at the operating α, the largest
swept α and each KL budget's α, beside the chance rate."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from steerlens.data import load_mmlu
from steerlens.data.mmlu import LETTERS
from steerlens.experiments.claims import mmlu_claims
from steerlens.experiments.resume import StepInputs
from steerlens.experiments.steps.base import Step, register_step
from steerlens.experiments.steps.job import (
    _budgets,
    _Job,
    _reported,
)
from steerlens.metrics.mmlu import mmlu_by_alpha
from steerlens.metrics.stats import cluster_estimate

logger = logging.getLogger(__name__)

MMLU_CHANCE = 1 / len(LETTERS)  # a 4-choice item answered at random


def _mmlu_conditions(job: _Job) -> list[tuple[str, str, float, float | None]]:
    """(condition, role, α, KL budget) of the MMLU rows: unsteered, the population vector at
    the operating α, at the largest swept α and at each equal-KL budget's α (``_budgets``;
    only where the side-effects step has run)."""
    best, top = float(job.need("operating_alpha")), float(max(job.cfg.alphas))
    out: list[tuple[str, str, float, float | None]] = [
        ("unsteered", "unsteered", 0.0, None),
        (f"population α={best:g}", "operating α", best, None),
        (f"population α={top:g} (largest swept)", "largest swept α", top, None),
    ]
    if (job.results / "side_effects_rows.csv").exists():
        out += [
            (f"population α={a:g} (KL budget {b:g})", f"KL budget {b:g}", a, b)
            for b, a in sorted(_budgets(job).items())
        ]
    return out


def _mmlu_step(job: _Job) -> dict[str, Any]:
    cfg = job.cfg
    population = job.need("vectors")["population"]
    items = load_mmlu(n=cfg.mmlu_items, seed=cfg.run.seed)
    conditions = _mmlu_conditions(job)
    # one batched loop: each α's pass starts from the unsteered pass at the steered blocks
    scored = mmlu_by_alpha(
        job.model,
        items,
        population,
        [0.0, *(a for _, _, a, _ in conditions)],
        batch_size=cfg.run.batch_size,
    )
    base = np.asarray(scored[0.0].correct, dtype=float)
    rows, by_alpha = [], []
    for name, role, alpha, budget in conditions:
        res = scored[alpha]
        lo, hi = res.interval(seed=cfg.run.seed)
        row = {"condition": name, "role": role, "alpha": alpha, "kl_budget": budget}
        row |= {"mean": res.accuracy, "low": lo, "high": hi, "n": len(items)}
        diff = None
        if alpha:
            diff = _mmlu_difference([base, np.asarray(res.correct, float)], cfg.run.seed)
            iv = diff["interval"] or [None, None]
            row |= {"diff": diff["mean"], "diff_low": iv[0], "diff_high": iv[1]}
        rows.append(row | {"chance": MMLU_CHANCE})
        by_alpha.append(
            {"condition": name, "role": role, "alpha": alpha, "kl_budget": budget}
            | {"accuracy": _reported(row, "mean", "low", "high", "item")}
            | {"minus_unsteered": diff, "chance": MMLU_CHANCE}
        )
    table = pd.DataFrame(rows)
    table.to_csv(job.results / "mmlu.csv", index=False)
    return {
        "mmlu_unsteered": _reported(table.iloc[0], "mean", "low", "high", "item"),
        "mmlu_steered": _reported(table.iloc[1], "mean", "low", "high", "item"),
        "mmlu_steered_minus_unsteered": by_alpha[1]["minus_unsteered"],
        "mmlu_items": len(items),
        "mmlu_chance": MMLU_CHANCE,
        "mmlu_by_alpha": by_alpha,
        **_mmlu_claim_keys(by_alpha),
    }


def _mmlu_claim_keys(by_alpha: list[dict[str, Any]]) -> dict[str, Any]:
    """``mmlu_largest_swept_minus_unsteered`` and ``mmlu_kl_budget_minus_unsteered`` ({label:
    paired difference}) for the headline's side-effect family: each α once (one already
    claimed at the operating α, or at another row, is not claimed again)."""
    seen = {by_alpha[1]["alpha"]}
    out: dict[str, dict[str, Any]] = {}
    for r in by_alpha[2:]:
        if r["alpha"] in seen:
            continue
        seen.add(r["alpha"])
        if r["kl_budget"] is None:
            out.setdefault("mmlu_largest_swept_minus_unsteered", {})[f"α={r['alpha']:g}"] = r[
                "minus_unsteered"
            ]
        else:
            out.setdefault("mmlu_kl_budget_minus_unsteered", {})[
                f"{r['kl_budget']:g} nats, α={r['alpha']:g}"
            ] = r["minus_unsteered"]
    return out


def _mmlu_difference(correct: list[np.ndarray], seed: int) -> dict[str, Any]:
    """Steered minus unsteered accuracy, paired by item (bootstrap over items)."""
    diff = correct[1] - correct[0]
    est = cluster_estimate(diff, [str(i) for i in range(diff.size)], seed=seed)
    return est.reported("item")


STEP = register_step(
    Step(
        "mmlu",
        _mmlu_step,
        StepInputs(
            ("alphas", "kl_alphas", "kl_texts", "mmlu_items"), ("vectors", "dose", "side_effects")
        ),
        files=("mmlu.csv",),
        keys=(
            "mmlu_by_alpha",
            "mmlu_chance",
            "mmlu_items",
            "mmlu_kl_budget_minus_unsteered",
            "mmlu_largest_swept_minus_unsteered",
            "mmlu_steered",
            "mmlu_steered_minus_unsteered",
            "mmlu_unsteered",
        ),
        claims=mmlu_claims,
        title="Zero-shot MMLU under steering",
    )
)
