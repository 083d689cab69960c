"""Dose-response: toxicity MAE change (with intervals), perplexity and degeneration vs α, one
line per vector method, each held-out prompt steered with its own user's vector.

A resumable sweep (``steerlens.experiments.sweep``) under ``OUT/results/sweep/dose``; writes
``OUT/results/dose_response.csv`` and ``OUT/figures/dose_response.{html,png}``. Llama-3.1-8B on
real PRISM on one GPU: ``--model meta-llama/Llama-3.1-8B-Instruct --data hf`` (several GPUs: run
the same sweep config with ``accelerate launch -m steerlens.sweep``, then this script reuses it).

Usage: python analyses/dose_response.py [--model NAME] [--data demo|hf|FOLDER] [--out DIR]
       [--methods population dislike-weighted bradley-terry] [--alphas 0 0.25 0.5 1]
       [--n-prompts N] [--max-new-tokens N]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steerlens.experiments.sweep import dose_sweep_config, run_config, script_arguments
from steerlens.metrics.summaries import dose_response_table
from steerlens.reporting.plots import dose_response, save_figure


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
    table = dose_response_table(cells, seed=cfg.run.seed)
    results = Path(out) / "results"
    table.to_csv(results / "dose_response.csv", index=False)
    files = save_figure(
        dose_response(table, title=f"Dose-response · {model} · {data}"),
        Path(out) / "figures" / "dose_response",
    )
    return {"rows": table.to_dict(orient="records"), "files": [str(f) for f in files]}


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
    print(json.dumps(report["rows"], indent=1, default=str))


if __name__ == "__main__":
    main()
