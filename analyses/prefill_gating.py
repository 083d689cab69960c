"""Prefill gating: at one α, toxicity MAE change and utility gain when the vector steers the
prompt and only the first K generated tokens (K in 0, 1, 2, 4, 8, 16), next to ``prefill``,
``generated`` and ``all`` — the study's "gating to the first K tokens is a no-op" claim,
tested on whatever model is given.

A resumable sweep under ``OUT/results/sweep/gating``; writes ``OUT/results/gating.csv`` and
``OUT/figures/gating.{html,png}``.

Usage: python analyses/prefill_gating.py [--model NAME] [--data demo|hf|FOLDER] [--out DIR]
       [--method population] [--alpha A] [--ks 0 1 2 4 8 16] [--n-prompts N]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steerlens.experiments.sweep import SweepConfig, run_config, script_arguments
from steerlens.metrics.summaries import gating_table
from steerlens.reporting.plots import gating_curve, save_figure


def run(
    model: str = "smollm2-135m-instruct",
    data: str = "demo",
    out: str | Path = ".",
    *,
    method: str = "population",
    alpha: float = 0.5,
    ks: tuple[int, ...] = (0, 1, 2, 4, 8, 16),
    progress_bar: bool = True,
    **options: Any,
) -> dict:
    gates = [f"first:{k}" for k in ks] + ["prefill", "generated", "all"]
    cfg = SweepConfig(
        model=model,
        data=data,
        out=str(Path(out) / "results" / "sweep" / "gating"),
        methods=[method],
        alphas=[0.0, alpha],
        gates=gates,
        **options,
    )
    cells = run_config(cfg, progress_bar=progress_bar)
    assert cells is not None
    table = gating_table(cells, method=method, alpha=alpha, seed=cfg.run.seed)
    table.to_csv(Path(out) / "results" / "gating.csv", index=False)
    files = save_figure(
        gating_curve(table, title=f"Gating at α={alpha:g} · {method} · {model} · {data}"),
        Path(out) / "figures" / "gating",
    )
    return {"rows": table.to_dict(orient="records"), "files": [str(f) for f in files]}


def main() -> None:
    ap = script_arguments(__doc__.split("\n")[0], dose=False)
    ap.add_argument("--method", default="population")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--ks", nargs="+", type=int, default=[0, 1, 2, 4, 8, 16])
    args = ap.parse_args()
    report = run(
        args.model,
        args.data,
        args.out,
        method=args.method,
        alpha=args.alpha,
        ks=tuple(args.ks),
        n_prompts=args.n_prompts,
        max_new_tokens=args.max_new_tokens,
    )
    print(json.dumps(report["rows"], indent=1, default=str))


if __name__ == "__main__":
    main()
