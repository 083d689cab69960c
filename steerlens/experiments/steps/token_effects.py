"""Step 8, ``token_effects``: SteerX's token effects against the simulated set's planted
truth, beside its baselines (``steerlens.experiments.token_effects``)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from steerlens.experiments.claims import token_claims
from steerlens.experiments.resume import StepInputs
from steerlens.experiments.steps.base import Step, register_step
from steerlens.experiments.steps.job import _Job
from steerlens.experiments.token_effects import token_effect_study

logger = logging.getLogger(__name__)


def _token_effects_step(job: _Job) -> dict[str, Any]:
    if job.ds.ground_truth is None or "responses" not in job.ds.ground_truth:
        logger.info("token_effects: no planted truth (not a simulated set): skipped")
        return {}
    te = replace(job.cfg.token_effects, run=job.cfg.run)  # the run's batch size and seed
    return token_effect_study(job.model, job.ds, te, out=job.results.parent)


STEP = register_step(
    Step(
        "token_effects",
        _token_effects_step,
        StepInputs(("token_effects",), ()),
        files=("steerx_effects.json", "steerx_tokens.csv", "steerx_pr_curve.csv"),
        keys=(
            "attribution_spearman",
            "token_baselines",
            "token_effects_report_targets",
            "token_effects_report_users",
            "token_effects_smoke_run",
            "token_effects_targets",
            "token_estimator",
            "token_precision",
            "token_precision_baseline",
            "token_precision_baseline_planted",
            "token_precision_minus_baseline",
            "token_precision_minus_baseline_planted",
            "token_precision_planted",
            "token_recall",
            "token_recall_baseline",
            "token_recall_baseline_planted",
            "token_recall_minus_baseline",
            "token_recall_minus_baseline_planted",
            "token_recall_planted",
            "token_truth",
        ),
        claims=token_claims,
        title="SteerX token selection",
    )
)
