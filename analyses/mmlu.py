"""Zero-shot MMLU with and without steering (lm-evaluation-harness prompts), with intervals.

Steers with the population vector of the PRISM-format set's training pairs (or a vector file)
at each α, on a seeded stratified MMLU subsample. Writes ``OUT/results/mmlu.json`` and
``OUT/figures/mmlu.{html,png}``. On a GPU::

    python analyses/mmlu.py --model meta-llama/Llama-3.1-8B-Instruct --data hf --n-items 1140

Usage: python analyses/mmlu.py [--model NAME] [--data SOURCE] [--vector FILE] [--alpha A ...]
       [--gate all|prefill] [--n-items N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pandas as pd

import steerlens as sl
from steerlens.cli import parse_gate
from steerlens.metrics import mmlu_accuracy
from steerlens.reporting.plots import mmlu_bars, save_figure


def run(
    model: str = "smollm2-135m-instruct",
    data: str = "demo",
    out: str | Path = ".",
    *,
    vector: str | None = None,
    alphas: tuple[float, ...] = (0.5,),
    gate: str = "all",
    n_items: int = 228,
    seed: int = 0,
    train_pairs: int = 400,
) -> dict:
    m = sl.load_model(model)
    if vector is not None:
        vec = sl.SteeringVector.load(vector)
    else:
        train, _ = sl.data.load_prism(data).split(seed=seed, turn0_only=True)
        picked = random.Random(seed).sample(train, min(train_pairs, len(train)))
        vec = sl.methods.mean_difference(m, picked)  # a sample over all users
    items = sl.data.load_mmlu(n=n_items, seed=seed)
    rows = []
    base = mmlu_accuracy(m, items, progress_bar=True)
    rows.append(
        {
            "condition": "unsteered",
            "alpha": 0.0,
            "mean": base.accuracy,
            **dict(zip(("low", "high"), base.interval(seed=seed), strict=True)),
        }
    )
    for a in alphas:
        with sl.steering(m, vec, alpha=a, gate=parse_gate(gate)):
            res = mmlu_accuracy(m, items, progress_bar=True)
        rows.append(
            {
                "condition": f"steered α={a:g} ({gate})",
                "alpha": a,
                "mean": res.accuracy,
                **dict(zip(("low", "high"), res.interval(seed=seed), strict=True)),
            }
        )
    table = pd.DataFrame(rows)
    results, figures = Path(out) / "results", Path(out) / "figures"
    results.mkdir(parents=True, exist_ok=True)
    files = save_figure(mmlu_bars(table), figures / "mmlu")
    report = {
        "model": model,
        "data": data,
        "n_items": len(items),
        "gate": gate,
        "vector": vector or "population (training pairs)",
        "rows": rows,
        "files": [str(f) for f in files],
    }
    (results / "mmlu.json").write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default="demo")
    ap.add_argument("--vector", default=None)
    ap.add_argument("--alpha", type=float, action="append", default=None)
    ap.add_argument("--gate", default="all")
    ap.add_argument("--n-items", type=int, default=228, help="stratified over the 57 subjects")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    report = run(
        args.model,
        args.data,
        args.out,
        vector=args.vector,
        alphas=tuple(args.alpha or [0.5]),
        gate=args.gate,
        n_items=args.n_items,
        seed=args.seed,
    )
    print(json.dumps(report["rows"], indent=1))


if __name__ == "__main__":
    main()
