"""Step 8, ``token_effects``: SteerX's token effects against the simulated set's planted
truth, beside its baselines (``steerlens.experiments.token_effects``)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

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
    )
)
