"""Selectivity: % change of toxicity MAE per prompt category and α, per vector method (the
study's selectivity table), from the dose-response sweep (reused when already on disk).

Writes ``OUT/results/selectivity_<method>.csv`` and ``OUT/figures/selectivity_<method>.*``.

Usage: python analyses/selectivity.py [--model NAME] [--data demo|hf|FOLDER] [--out DIR]
       [--methods ...] [--alphas ...] [--n-prompts N] [--max-new-tokens N]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steerlens.experiments.sweep import dose_sweep_config, run_config, script_arguments
from steerlens.metrics.summaries import selectivity_table
from steerlens.reporting.plots import save_figure, selectivity_heatmap


def run(
    model: str = "smollm2-135m-instruct",
    data: str = "demo",
    out: str | Path = ".",
    progress_bar: bool = True,
    **options: Any,
) -> dict:
    cfg = dose_sweep_config(model, data, out, **options)
    cells = run_config(cfg, progress_bar=progress_bar)
    assert cells is not None
    tables, files = {}, []
    for method in cfg.methods:
        table = selectivity_table(cells, method=method)
        table.to_csv(Path(out) / "results" / f"selectivity_{method}.csv")
        files += save_figure(
            selectivity_heatmap(table, title=f"Selectivity · {method} · {model} · {data}"),
            Path(out) / "figures" / f"selectivity_{method}",
        )
        tables[method] = {str(c): {f"{a:g}": v for a, v in r.items()} for c, r in table.iterrows()}
    return {"tables": tables, "files": [str(f) for f in files]}


def main() -> None:
    args = script_arguments(__doc__.split("\n")[0]).parse_args()
    report = run(
        args.model,
        args.data,
        args.out,
        methods=args.methods,
        alphas=args.alphas,
        n_prompts=args.n_prompts,
        max_new_tokens=args.max_new_tokens,
    )
    print(json.dumps(report["tables"], indent=1, default=str))


if __name__ == "__main__":
    main()
