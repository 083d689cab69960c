"""SteerX vs all-history as one job: the study, its tables, figures, user cards and summary
keys (``analyses/steerx_compare.py`` and ``steerlens demo`` both run it).

SteerX is reconstructed (its body text was unavailable; the selection follows NextQuill). The
SAE backbone trains a small TopK SAE with sae-lens on the model's activations (offline text)
the first time, cached under ``~/.cache/steerlens/sae``.

Writes ``OUT/results/steerx_compare.{csv,json}``, ``OUT/results/steerx_descriptions.csv``,
the vectors with their provenance (``OUT/results/steerx/vectors/<backbone>/<user>/``),
``OUT/figures/steerx_vs_allhistory_*`` and one user card per group
(``OUT/figures/steerx_user_<id>.html``), links them from ``OUT/figures/index.html`` when it
exists, and adds ``steerx_ppa``, ``allhistory_ppa``, ``steerx_minus_allhistory_ppa``,
``steerx_ppa_under_steering``, ``allhistory_ppa_under_steering``,
``steerx_minus_allhistory_ppa_under_steering``, ``steerx_utility_gain``,
``allhistory_utility_gain``, ``description_hit_rate`` and ``description_hit_rate_by_mode`` to
``OUT/results/summary.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from steerlens.core._jsonsafe import update_json, write_json
from steerlens.core.models import HookedModel, default_layers, model_name
from steerlens.data.prism import PrismDataset
from steerlens.experiments.steerx_study import SteerXStudyConfig, steerx_study
from steerlens.reporting.page import append_links, write_user_card
from steerlens.reporting.plots import save_figure, steerx_bars

__all__ = ["RECONSTRUCTION", "run_steerx_compare"]

RECONSTRUCTION = "SteerX body text unavailable; NextQuill selection rule"


def _pick(table: pd.DataFrame, method: str, measure: str) -> dict[str, Any]:
    rows = table[(table["method"] == method) & (table["measure"] == measure)]
    return {
        r["backbone"]: {"mean": r["mean"], "interval": [r["low"], r["high"]]}
        for _, r in rows.iterrows()
    }


def _cards(study: dict[str, Any], figures: Path, first: str, simulated: bool) -> dict[str, Path]:
    """One user card per group (the first backbone's description and selected tokens)."""
    users = study["users"]
    results = study["results"][first]
    cards = {}
    for group, part in users[users["backbone"] == first].groupby("group"):
        u = str(part["user"].iloc[0])
        r = results[u]
        cards[f"SteerX user card: {u} ({group})"] = write_user_card(
            figures / f"steerx_user_{u}.html",
            user=u,
            description=r.description.text,
            subtitle=f"group {group} (simulated)" if simulated else "",
            targets=[
                (p, e.tokens, e.effect.tolist(), sel)
                for (p, _), e, sel in zip(r.targets, r.effects, r.selected, strict=True)
            ],
        )
    return cards


def run_steerx_compare(
    model: HookedModel,
    dataset: PrismDataset,
    config: SteerXStudyConfig | None = None,
    *,
    out: str | Path = ".",
    data_label: str | None = None,
    sae: Any = None,
    sae_steps: int = 1500,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Run the comparison on a loaded model and dataset; write its files under ``out``.

    Returns the report written to ``results/steerx_compare.json``.
    """
    t0 = time.perf_counter()
    cfg = config or SteerXStudyConfig()
    results, figures = Path(out) / "results", Path(out) / "figures"
    results.mkdir(parents=True, exist_ok=True)
    sae_report = None
    if "sae" in cfg.backbones and sae is None:
        from steerlens.methods.sae_train import ensure_sae

        layers = default_layers(model)
        sae, rep = ensure_sae(
            model,
            layers[len(layers) // 2],
            folder=cfg.sae_folder,
            steps=sae_steps,
            progress_bar=progress_bar,
        )
        sae_report = rep.__dict__
    study = steerx_study(
        model, dataset, cfg, out=results / "steerx", sae=sae, progress_bar=progress_bar
    )
    table, users = study["table"], study["users"]
    table.to_csv(results / "steerx_compare.csv", index=False)
    users.to_csv(results / "steerx_descriptions.csv", index=False)
    name = model_name(model)
    where = "simulated set" if dataset.is_simulated else (data_label or dataset.source)
    alpha = study["alpha"]
    files: list[Path] = []
    for measure in (
        "ppa_projection",
        f"ppa_under_steering@{alpha:g}",
        f"utility_gain@{alpha:g}",
        f"mae_change_pct@{alpha:g}",
    ):
        if (table["measure"] == measure).any():
            files += save_figure(
                steerx_bars(
                    table,
                    measure=measure,
                    title=f"SteerX vs all-history · {measure} · {name} · {where}",
                ),
                figures / f"steerx_vs_allhistory_{measure.split('@')[0]}",
            )
    cards = _cards(study, figures, cfg.backbones[0], dataset.is_simulated)
    files += cards.values()
    if (figures / "index.html").exists():
        links = {f.name: f.name for f in files if f.suffix == ".html"}
        append_links(figures / "index.html", "SteerX vs all-history (reconstructed)", links)
    report = {
        "model": name,
        "data": data_label or dataset.source,
        "simulated": dataset.is_simulated,
        "reconstruction": RECONSTRUCTION,
        "config": study["config"],
        "sae": sae_report,
        "rows": table.to_dict(orient="records"),
        "cards": {k: p.name for k, p in cards.items()},
        "seconds": round(time.perf_counter() - t0, 1),
        "files": [str(f) for f in files],
    }
    write_json(results / "steerx_compare.json", report)
    hits = table[table["measure"] == "description_hit_rate"]
    by_mode = {str(r["method"]).split("(")[-1].rstrip(")"): r["mean"] for _, r in hits.iterrows()}
    steered = f"ppa_under_steering@{alpha:g}"
    update_json(
        results / "summary.json",
        {
            "steerx_ppa": _pick(table, "steerx", "ppa_projection"),
            "allhistory_ppa": _pick(table, "all-history", "ppa_projection"),
            "steerx_minus_allhistory_ppa": _pick(
                table, "steerx − all-history", "ppa_projection_paired"
            ),
            "steerx_ppa_under_steering": _pick(table, "steerx", steered),
            "allhistory_ppa_under_steering": _pick(table, "all-history", steered),
            "steerx_minus_allhistory_ppa_under_steering": _pick(
                table, "steerx − all-history", f"{steered}_paired"
            ),
            "steerx_utility_gain": _pick(table, "steerx", f"utility_gain@{alpha:g}"),
            "allhistory_utility_gain": _pick(table, "all-history", f"utility_gain@{alpha:g}"),
            "description_hit_rate": by_mode.get(cfg.describe),
            "description_hit_rate_by_mode": by_mode,
            "steerx_seconds": report["seconds"],
        },
    )
    return report
