"""Step 6, ``conditional``: a learned ``Condition`` gates every method; conditional vs
unconditional steering at the operating α and at equal neutral-text KL
(``steerlens.experiments.conditional``)."""

from __future__ import annotations

from typing import Any

from steerlens.experiments.claims import conditional_claims
from steerlens.experiments.conditional import run_conditional
from steerlens.experiments.resume import StepInputs
from steerlens.experiments.steps.base import Step, register_step
from steerlens.experiments.steps.job import (
    _alpha_split,
    _Job,
    _neutral,
)
from steerlens.experiments.sweep import standard_measures


def _conditional_step(job: _Job) -> dict[str, Any]:
    cfg, split = job.cfg, _alpha_split(job)
    report_users = set(split.extra["users"]["report"])  # none of their text fits the condition
    return run_conditional(
        job.model,
        dose=job.need("dose"),
        prompts=job.need("prompts"),
        split=split,
        vectors=job.need("vectors"),
        methods=cfg.methods,
        alphas=cfg.alphas,
        alpha=job.need("operating_alpha"),
        neutral=_neutral(job),
        fit_pool={
            c.opening_prompt: c.category
            for c in job.ds.conversations.values()
            if c.user_id not in report_users
        },
        results=job.results,
        settings=job.settings,
        measure=standard_measures(job.gt, batch_size=cfg.run.batch_size),
        condition_method=cfg.condition_method,
        batch_size=cfg.run.batch_size,
        seed=cfg.run.seed,
    )


STEP = register_step(
    Step(
        "conditional",
        _conditional_step,
        StepInputs(
            (
                "methods",
                "alphas",
                "condition_method",
                "mmlu_items",
                "neutral_texts",
                "max_new_tokens",
                "run.generation_batch_size",
            ),
            ("vectors", "dose"),
        ),
        files=(
            "conditional.csv",
            "conditional_by_category.csv",
            "conditional_kl_search.csv",
            "conditional_neutral_kl.csv",
        ),
        keys=(
            "condition",
            "conditional",
            "conditional_alphas",
            "conditional_arms",
            "conditional_by_category",
            "conditional_steered_share",
        ),
        claims=conditional_claims,
        title="Conditional steering",
    )
)
