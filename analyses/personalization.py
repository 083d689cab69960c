"""Personalisation study: PPA of every vector method against the baselines, with intervals.

Writes ``OUT/results/personalization.json`` and ``.csv`` (the PPA table), the users'
Bradley-Terry coordinates, and ``OUT/figures/ppa.{html,png}`` and ``users_bt.{html,png}``.
The same command runs Llama-3.1-8B on real PRISM on a GPU::

    python analyses/personalization.py --model meta-llama/Llama-3.1-8B-Instruct --data hf

Usage: python analyses/personalization.py [--model NAME] [--data demo|hf|FOLDER] [--out DIR]
       [--steer-alpha A] [--utility-alpha A] [--split-by conversation|prompt] [--max-users N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import steerlens as sl
from steerlens.experiments.config import RunSection
from steerlens.experiments.personalization import PersonalizationConfig, personalization_study
from steerlens.methods.options import MethodOptions
from steerlens.reporting.plots import ppa_bars, save_figure, users_in_basis


def run(
    model: str = "smollm2-135m-instruct",
    data: str = "demo",
    out: str | Path = ".",
    config: PersonalizationConfig | None = None,
    progress_bar: bool = True,
) -> dict:
    cfg = config or PersonalizationConfig()
    m = sl.load_model(model)
    ds = sl.data.load_prism(data)
    res = personalization_study(m, ds, cfg, progress_bar=progress_bar)
    results, figures = Path(out) / "results", Path(out) / "figures"
    results.mkdir(parents=True, exist_ok=True)
    res.table.to_csv(results / "personalization.csv", index=False)
    if res.utility_by_group is not None:
        res.utility_by_group.to_csv(results / "utility_by_group.csv", index=False)
    groups = (
        {u: v["group"] for u, v in ds.ground_truth["users"].items()} if ds.ground_truth else None
    )
    coords = res.users_in_basis(groups)
    coords.to_csv(results / "users_bt.csv")
    files = save_figure(ppa_bars(res.table), figures / "ppa")
    if "ppa_under_steering" in set(res.table["measure"]):
        files += save_figure(
            ppa_bars(res.table, measure="ppa_under_steering"), figures / "ppa_steering"
        )
    if res.bt.rank >= 2:
        files += save_figure(users_in_basis(coords), figures / "users_bt")
    report = {
        "model": model,
        "data": data,
        "simulated": ds.is_simulated,
        **res.summary(),
        "files": [str(f) for f in files],
    }
    (results / "personalization.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default="demo")
    ap.add_argument("--out", default=".")
    ap.add_argument("--steer-alpha", type=float, default=None, help="PPA under steering at α")
    ap.add_argument(
        "--utility-alpha", type=float, default=None, help="utility of steered generations at α"
    )
    ap.add_argument("--split-by", choices=["conversation", "prompt"], default="prompt")
    ap.add_argument("--rank", type=int, default=MethodOptions.rank)
    ap.add_argument("--shrink", type=float, default=MethodOptions.shrink)
    ap.add_argument("--max-users", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = PersonalizationConfig(
        steer_alpha=args.steer_alpha,
        utility_alpha=args.utility_alpha,
        split_by=args.split_by,
        options=MethodOptions(rank=args.rank, shrink=args.shrink),
        max_users=args.max_users,
        run=RunSection(seed=args.seed),
    )
    report = run(args.model, args.data, args.out, cfg)
    print(json.dumps(report["rows"], indent=1))


if __name__ == "__main__":
    main()
