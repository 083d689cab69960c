"""SteerX token effects scored against the simulated set's planted truth.

For every simulated user, the causal effect of their history on each token of their chosen
responses, against no history (NextQuill) and a placebo history; each estimator's selected
tokens scored against the planted attribute spans (the estimator and threshold chosen on a
selection side, scored on a report side that shares neither users nor response texts with it;
``results/splits.json``), and exact against attribution patching on a few targets. The job is ``steerlens.experiments.token_effects.token_effect_study`` (``steerlens
demo`` runs it too); this script runs it alone, then draws the report from the files.

Writes ``OUT/results/steerx_effects.json``, ``steerx_tokens.csv``, ``steerx_pr_curve.csv``,
the ``token_*`` and ``attribution_spearman`` keys of ``OUT/results/summary.json``, and the
figures under ``OUT/figures/`` (PR curves, a response's tokens by effect, history-item and
history-token heatmaps, the layer x position patching heatmap).

SteerX's body text was not available: this is a reconstruction on the NextQuill estimator.

Usage: python analyses/steerx_effects.py [--model NAME] [--data demo|FOLDER] [--out DIR]
       [--n-history 4] [--targets-per-user 3] [--max-users N] [--patch-targets 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import steerlens as sl
from steerlens.experiments.demo import mark_step
from steerlens.experiments.token_effects import TokenEffectsConfig, token_effect_study
from steerlens.reporting.study import write_study_report


def run(
    model: str = "smollm2-135m-instruct",
    data: str = "demo",
    out: str | Path = ".",
    *,
    progress_bar: bool = True,
    **options: Any,
) -> dict:
    """Run the study (``options``: ``TokenEffectsConfig`` fields) and write its report."""
    t0 = time.perf_counter()
    keys = token_effect_study(
        sl.load_model(model),
        sl.data.load_prism(data),
        TokenEffectsConfig(**options),
        out=out,
        progress_bar=progress_bar,
    )
    mark_step(Path(out) / "results", "token_effects", time.perf_counter() - t0)
    write_study_report(out)
    report = json.loads((Path(out) / "results" / "steerx_effects.json").read_text())
    return {**report, "summary_keys": keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default="demo")
    ap.add_argument("--out", default=".")
    ap.add_argument("--n-history", type=int, default=4)
    ap.add_argument("--targets-per-user", type=int, default=3)
    ap.add_argument("--max-users", type=int, default=None)
    ap.add_argument("--patch-targets", type=int, default=2)
    args = ap.parse_args()
    report = run(
        args.model,
        args.data,
        args.out,
        n_history=args.n_history,
        targets_per_user=args.targets_per_user,
        max_users=args.max_users,
        patch_targets=args.patch_targets,
    )
    print(
        json.dumps(
            {k: report[k] for k in ("planted", "completed", "attribution_spearman", "seconds")},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
