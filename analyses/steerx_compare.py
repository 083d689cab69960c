"""SteerX vs all-history, per backbone: mean-difference (StyleVector) with the selected
tokens or with the description in context, BiPO, and SAE features.

SteerX is reconstructed (its body text was unavailable; the selection follows NextQuill):
history -> token effects -> preference-driven tokens -> description -> vector. The job and
the files it writes are ``steerlens.experiments.steerx_compare.run_steerx_compare``'s
(``steerlens demo`` runs it too); the figures and user cards are drawn from them by
``steerlens.reporting.study``.

Usage: python analyses/steerx_compare.py [--model NAME] [--data demo|FOLDER] [--out DIR]
       [--backbones mean mean-context bipo sae] [--users-per-group 4] [--sae-steps 1500]
       [--describe spans|model]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import steerlens as sl
from steerlens.experiments.demo import mark_step
from steerlens.experiments.steerx_compare import run_steerx_compare
from steerlens.experiments.steerx_study import SteerXStudyConfig
from steerlens.reporting.study import write_study_report


def run(
    model: str = "smollm2-135m-instruct",
    data: str = "demo",
    out: str | Path = ".",
    config: SteerXStudyConfig | None = None,
    *,
    sae: Any = None,
    sae_steps: int = 1500,
    progress_bar: bool = True,
) -> dict:
    report = run_steerx_compare(
        sl.load_model(model),
        sl.data.load_prism(data),
        config,
        out=out,
        data_label=data,
        sae=sae,
        sae_steps=sae_steps,
        progress_bar=progress_bar,
    )
    mark_step(Path(out) / "results", "steerx", report["seconds"])
    write_study_report(out)  # its figures and user cards, drawn from the files it wrote
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default="demo")
    ap.add_argument("--out", default=".")
    # every backbone; "sae" only where sae-lens (steerlens[sae]) can train its SAE
    ap.add_argument("--backbones", nargs="+", default=sl.steerx.available_backbones())
    ap.add_argument("--users-per-group", type=int, default=4)
    ap.add_argument("--sae-steps", type=int, default=1500)
    ap.add_argument("--describe", choices=["spans", "model"], default="spans")
    args = ap.parse_args()
    cfg = SteerXStudyConfig(
        backbones=args.backbones, users_per_group=args.users_per_group, describe=args.describe
    )
    report = run(args.model, args.data, args.out, cfg, sae_steps=args.sae_steps)
    print(json.dumps(report["rows"], indent=1, default=str))


if __name__ == "__main__":
    main()
