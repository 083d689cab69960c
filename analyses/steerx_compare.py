"""SteerX vs all-history, per backbone (mean-difference / StyleVector, BiPO, SAE features).

SteerX is reconstructed (its body text was unavailable; the selection follows NextQuill):
history -> token effects -> preference-driven tokens -> description -> vector. Writes
``OUT/results/steerx_compare.{csv,json}``, the per-user descriptions, the vectors with their
provenance, ``OUT/figures/steerx_vs_allhistory_*`` and one user card per group
(``OUT/figures/steerx_user_<id>.html``), and adds ``steerx_ppa``, ``allhistory_ppa``,
``steerx_utility_gain``, ``allhistory_utility_gain`` and ``description_hit_rate`` to
``OUT/results/summary.json``. The SAE backbone trains a small TopK SAE with sae-lens on the
model's activations (offline text) the first time, cached under ``~/.cache/steerlens/sae``.

Usage: python analyses/steerx_compare.py [--model NAME] [--data demo|FOLDER] [--out DIR]
       [--backbones mean bipo sae] [--users-per-group 4] [--sae-steps 1500]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import steerlens as sl
from steerlens._jsonsafe import update_json, write_json
from steerlens.evaluation.steerx_study import SteerXStudyConfig, steerx_study
from steerlens.methods.sae_train import ensure_sae
from steerlens.plots import save_figure, steerx_bars
from steerlens.report import append_links, write_user_card


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
    t0 = time.perf_counter()
    cfg = config or SteerXStudyConfig()
    m = sl.load_model(model)
    ds = sl.data.load_prism(data)
    results, figures = Path(out) / "results", Path(out) / "figures"
    results.mkdir(parents=True, exist_ok=True)
    sae_report = None
    if "sae" in cfg.backbones and sae is None:
        layers = sl.default_layers(m)
        sae, rep = ensure_sae(
            m,
            layers[len(layers) // 2],
            folder=cfg.sae_folder,
            steps=sae_steps,
            progress_bar=progress_bar,
        )
        sae_report = rep.__dict__
    study = steerx_study(m, ds, cfg, out=results / "steerx", sae=sae, progress_bar=progress_bar)
    table, users = study["table"], study["users"]
    table.to_csv(results / "steerx_compare.csv", index=False)
    users.to_csv(results / "steerx_descriptions.csv", index=False)
    files = []
    alpha = study["alpha"]
    for measure in ("ppa_projection", f"utility_gain@{alpha:g}", f"mae_change_pct@{alpha:g}"):
        if (table["measure"] == measure).any():
            stem = measure.split("@")[0]
            files += save_figure(
                steerx_bars(
                    table,
                    measure=measure,
                    title=f"SteerX vs all-history · {measure} · "
                    f"{model} · {'simulated set' if ds.is_simulated else data}",
                ),
                figures / f"steerx_vs_allhistory_{stem}",
            )
    cards = {}
    first = study["results"][cfg.backbones[0]]
    for group, part in users[users["backbone"] == cfg.backbones[0]].groupby("group"):
        u = str(part["user"].iloc[0])
        r = first[u]
        path = write_user_card(
            figures / f"steerx_user_{u}.html",
            user=u,
            description=r.description.text,
            subtitle=f"group {group} (simulated)" if ds.is_simulated else "",
            targets=[
                (p, e.tokens, e.effect.tolist(), sel)
                for (p, _), e, sel in zip(r.targets, r.effects, r.selected, strict=True)
            ],
        )
        cards[f"SteerX user card: {u} ({group})"] = path.name
        files.append(path)

    def pick(method: str, measure: str) -> dict[str, Any]:
        rows = table[(table["method"] == method) & (table["measure"] == measure)]
        return {
            r["backbone"]: {"mean": r["mean"], "interval": [r["low"], r["high"]]}
            for _, r in rows.iterrows()
        }

    links = {Path(f).name: Path(f).name for f in files if str(f).endswith(".html")}
    if (figures / "index.html").exists():
        append_links(figures / "index.html", "SteerX vs all-history (reconstructed)", links)
    report = {
        "model": model,
        "data": data,
        "simulated": ds.is_simulated,
        "reconstruction": "SteerX body text unavailable; NextQuill selection rule",
        "config": study["config"],
        "sae": sae_report,
        "rows": table.to_dict(orient="records"),
        "cards": cards,
        "seconds": round(time.perf_counter() - t0, 1),
        "files": [str(f) for f in files],
    }
    write_json(results / "steerx_compare.json", report)
    hit = table[table["measure"] == "description_hit_rate"]
    update_json(
        results / "summary.json",
        {
            "steerx_ppa": pick("steerx", "ppa_projection"),
            "allhistory_ppa": pick("all-history", "ppa_projection"),
            "steerx_minus_allhistory_ppa": pick("steerx − all-history", "ppa_projection_paired"),
            "steerx_utility_gain": pick("steerx", f"utility_gain@{alpha:g}"),
            "allhistory_utility_gain": pick("all-history", f"utility_gain@{alpha:g}"),
            "description_hit_rate": float(hit["mean"].iloc[0]) if not hit.empty else None,
            "steerx_seconds": report["seconds"],
        },
    )
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default="demo")
    ap.add_argument("--out", default=".")
    ap.add_argument("--backbones", nargs="+", default=["mean", "bipo", "sae"])
    ap.add_argument("--users-per-group", type=int, default=4)
    ap.add_argument("--sae-steps", type=int, default=1500)
    args = ap.parse_args()
    cfg = SteerXStudyConfig(backbones=args.backbones, users_per_group=args.users_per_group)
    report = run(args.model, args.data, args.out, cfg, sae_steps=args.sae_steps)
    print(json.dumps([r for r in report["rows"]], indent=1, default=str))


if __name__ == "__main__":
    main()
