"""Overview of the simulated PRISM-format demo set: users' latent weights, score
distributions per prompt category, toxicity per response style; plus the tables the data
issue asks to report (per-style attribute means, per-user oracle accuracy, categoriser
agreement).

Usage: python analyses/dataset_overview.py [--data demo] [--out figures]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

import steerlens as sl
from steerlens.reporting.plots import dataset_overview, save_figure


def overview(
    data: str = "demo", out: str | Path = "figures", tables: str | Path = "results"
) -> dict:
    ds = sl.data.load_prism(data)
    if ds.ground_truth is None:
        raise SystemExit(f"{data} has no ground_truth.json: this overview is for simulated sets")
    gt = ds.ground_truth
    pairs = pd.DataFrame([asdict(p) for p in ds.preference_pairs()])
    files = save_figure(dataset_overview(gt, pairs), Path(out) / "dataset_overview")
    users = pd.DataFrame(
        [
            {"user_id": k, **{c: v[c] for c in ("group", "oracle_accuracy", "n_pairs", "tau")}}
            for k, v in gt["users"].items()
        ]
    )
    Path(tables).mkdir(parents=True, exist_ok=True)
    users_csv = Path(tables) / "dataset_users.csv"
    users.sort_values("user_id").to_csv(users_csv, index=False)
    report = {
        "dataset": repr(ds),
        "style_means": gt["style_means"],
        "oracle_accuracy": gt["oracle_accuracy"],
        "oracle_accuracy_by_group": users.groupby("group")["oracle_accuracy"]
        .mean()
        .round(3)
        .to_dict(),
        "categoriser_agreement": gt["categoriser_agreement"],
        "pairs_by_category": pairs.groupby("category").size().to_dict(),
        "files": [str(f) for f in files] + [str(users_csv)],
    }
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="demo")
    ap.add_argument("--out", default="figures", help="folder for the figure")
    ap.add_argument("--tables", default="results", help="folder for the per-user table")
    args = ap.parse_args()
    print(json.dumps(overview(args.data, args.out, args.tables), indent=1))


if __name__ == "__main__":
    main()
