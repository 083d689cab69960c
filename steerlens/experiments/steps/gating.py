"""Step 5, ``gating``: prefill / first-K / generated gates at the operating α on the report
prompts."""

from __future__ import annotations

from typing import Any

import pandas as pd

from steerlens.experiments.resume import StepInputs
from steerlens.experiments.steps.base import Step, register_step
from steerlens.experiments.steps.job import (
    _alpha_split,
    _Job,
    _on,
)
from steerlens.experiments.sweep import (
    make_grid,
    run_sweep,
    standard_measures,
)
from steerlens.metrics.summaries import gating_table


def _gating_step(job: _Job) -> dict[str, Any]:
    cfg = job.cfg
    operating_alpha, dose = job.need("operating_alpha"), job.need("dose")
    gates = [f"first:{k}" for k in cfg.gating_ks] + ["prefill", "generated"]
    report = set(_alpha_split(job).report)  # at the operating α: the report prompts only
    prompts = [p for p in job.need("prompts") if p.prompt_id in report]
    gating = run_sweep(
        job.model,
        make_grid(prompts, ["population"], [operating_alpha], gates, baseline=False),
        job.prompts,
        job.need("vectors"),
        job.results / "sweep" / "gating",
        settings=job.settings,
        measure=standard_measures(job.gt, batch_size=cfg.run.batch_size),
        reuse=[dose],  # first:K past the generated length is the dose sweep's "all"
    )
    assert gating is not None
    cells = _on(pd.concat([dose, gating], ignore_index=True), sorted(report))
    table = gating_table(cells, method="population", alpha=operating_alpha, seed=cfg.run.seed)
    table.to_csv(job.results / "gating.csv", index=False)
    return {"gating": table.round(5).to_dict(orient="records")}


STEP = register_step(
    Step(
        "gating",
        _gating_step,
        StepInputs(
            ("gating_ks", "max_new_tokens", "run.generation_batch_size"), ("vectors", "dose")
        ),
        files=("gating.csv",),
        keys=("gating",),
        title="Gating",
    )
)
