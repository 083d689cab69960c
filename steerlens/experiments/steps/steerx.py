"""Step 9, ``steerx``: SteerX vs all-history per backbone and on the pair-based backbone
(``steerlens.experiments.steerx_compare``; reconstructed)."""

from __future__ import annotations

from typing import Any

from steerlens.experiments.claims import steerx_claims
from steerlens.experiments.resume import StepInputs
from steerlens.experiments.steerx_compare import run_steerx_compare
from steerlens.experiments.steerx_study import SteerXStudyConfig
from steerlens.experiments.steps.base import Step, register_step
from steerlens.experiments.steps.job import _Job


def _steerx_step(job: _Job) -> dict[str, Any]:
    cfg = job.cfg
    xcfg = SteerXStudyConfig(
        backbones=cfg.steerx_backbones,
        users_per_group=cfg.steerx_users_per_group,
        max_targets=cfg.steerx_max_targets,
        held_out=cfg.held_out,
        max_new_tokens=min(cfg.max_new_tokens, 32),
        steer_ppa=cfg.steer_ppa,
        run=cfg.run,
    )
    # rescaled to the study's population vector's norms, as the study's own vectors are
    norms = job.need("vectors")["population"].norms()
    run_steerx_compare(
        job.model, job.ds, xcfg, out=job.results.parent, data_label=cfg.data, norms=norms
    )
    return {}  # its keys are in summary.json already


STEP = register_step(
    Step(
        "steerx",
        _steerx_step,
        StepInputs(
            (
                "steerx_backbones",
                "steerx_users_per_group",
                "steerx_max_targets",
                "held_out",
                "max_new_tokens",
                "run.generation_batch_size",
                "steer_ppa",
            ),
            ("vectors",),
        ),
        files=(
            "steerx_compare.csv",
            "steerx_compare.json",
            "steerx_descriptions.csv",
            "steerx_cards.json",
        ),
        keys=(
            "allhistory_ppa",
            "allhistory_ppa_under_steering",
            "allhistory_utility_gain",
            "description_hit_rate",
            "description_hit_rate_by_mode",
            "steerx_minus_allhistory_ppa",
            "steerx_minus_allhistory_ppa_under_steering",
            "steerx_pair_all_tokens_ppa",
            "steerx_pair_minus_all_ppa",
            "steerx_pair_minus_all_ppa_under_steering",
            "steerx_pair_ppa",
            "steerx_pair_ppa_under_steering",
            "steerx_ppa",
            "steerx_ppa_under_steering",
            "steerx_seconds",
            "steerx_selection_rule",
            "steerx_utility_gain",
        ),
        claims=steerx_claims,
        title="SteerX vs all-history",
    )
)
