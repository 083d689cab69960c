"""SteerX vs all-history as one job step: the study, its tables, user-card data and summary
keys (``analyses/steerx_compare.py`` and ``steerlens demo`` both run it; the figures and
cards are drawn from these files by ``steerlens.reporting.study``).

SteerX is reconstructed (its body text was unavailable; the selection follows NextQuill). The
SAE backbone trains a small TopK SAE with sae-lens on the model's activations (offline text)
the first time, cached under ``~/.cache/steerlens/sae``.

Writes ``OUT/results/steerx_compare.{csv,json}``, ``OUT/results/steerx_descriptions.csv``,
``OUT/results/steerx_cards.json`` (one user per group: description, tokens, effects,
selection), the vectors with their provenance
(``OUT/results/steerx/vectors/<backbone>/<user>/``, the pair-based ones under ``pairs/``),
and adds ``steerx_ppa``, ``allhistory_ppa``, ``steerx_minus_allhistory_ppa``,
``steerx_ppa_under_steering``, ``allhistory_ppa_under_steering``,
``steerx_minus_allhistory_ppa_under_steering``, ``steerx_utility_gain``,
``allhistory_utility_gain``, ``steerx_pair_ppa``, ``steerx_pair_all_tokens_ppa``,
``steerx_pair_minus_all_ppa`` (and both under steering), ``description_hit_rate`` and
``description_hit_rate_by_mode`` to ``OUT/results/summary.json``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from steerlens.core._jsonsafe import update_json, write_json
from steerlens.core.models import HookedModel, default_layers, model_name
from steerlens.data.prism import PrismDataset
from steerlens.experiments.steerx_study import SteerXStudyConfig, steerx_study
from steerlens.metrics.stats import reported

__all__ = ["RECONSTRUCTION", "run_steerx_compare"]

RECONSTRUCTION = "SteerX body text unavailable; NextQuill selection rule"


def _pick(table: pd.DataFrame, method: str, measure: str) -> dict[str, Any]:
    """backbone -> ``{"mean", "interval", "n", "unit"}`` (users; no interval below
    ``MIN_CLUSTERS``)."""
    rows = table[(table["method"] == method) & (table["measure"] == measure)]
    return {
        r["backbone"]: reported(r["mean"], r["low"], r["high"], int(r["n"]), "user")
        for _, r in rows.iterrows()
    }


def _cards(study: dict[str, Any], first: str, simulated: bool) -> list[dict[str, Any]]:
    """One user card's data per group (the first backbone's description and selected tokens);
    ``steerlens.reporting`` draws the cards from ``results/steerx_cards.json``."""
    users = study["users"]
    results = study["results"][first]
    cards = []
    for group, part in users[users["backbone"] == first].groupby("group"):
        u = str(part["user"].iloc[0])
        subtitle = f"group {group} (simulated)" if simulated else ""
        cards.append(results[u].card(str(group), subtitle))
    return cards


def _pair_keys(table: pd.DataFrame, steered: str) -> dict[str, Any]:
    """The pair-based backbone's keys: SteerX-selected tokens vs all tokens, same pairs."""
    if not (table["backbone"] == "pairs").any():
        return {}
    pairs = table[table["backbone"] == "pairs"]
    return {
        "steerx_pair_ppa": _pick(pairs, "steerx", "ppa_projection").get("pairs"),
        "steerx_pair_all_tokens_ppa": _pick(pairs, "all-history", "ppa_projection").get("pairs"),
        "steerx_pair_minus_all_ppa": _pick(
            pairs, "steerx − all-history", "ppa_projection_paired"
        ).get("pairs"),
        "steerx_pair_ppa_under_steering": _pick(pairs, "steerx", steered).get("pairs"),
        "steerx_pair_minus_all_ppa_under_steering": _pick(
            pairs, "steerx − all-history", f"{steered}_paired"
        ).get("pairs"),
    }


def run_steerx_compare(
    model: HookedModel,
    dataset: PrismDataset,
    config: SteerXStudyConfig | None = None,
    *,
    out: str | Path = ".",
    data_label: str | None = None,
    sae: Any = None,
    sae_steps: int = 1500,
    norms: Mapping[int, float] | None = None,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Run the comparison on a loaded model and dataset; write its files under ``out``.
    ``norms``: the per-layer norms vectors are rescaled to under steering (a study passes its
    population vector's; default: the population vector of this comparison's training pairs).

    Returns the report written to ``results/steerx_compare.json``.
    """
    t0 = time.perf_counter()
    cfg = config or SteerXStudyConfig()
    results = Path(out) / "results"
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
        model,
        dataset,
        cfg,
        out=results / "steerx",
        sae=sae,
        norms=norms,
        progress_bar=progress_bar,
    )
    table, users = study["table"], study["users"]
    table.to_csv(results / "steerx_compare.csv", index=False)
    users.to_csv(results / "steerx_descriptions.csv", index=False)
    alpha = study["alpha"]
    cards = _cards(study, cfg.backbones[0], dataset.is_simulated)
    write_json(results / "steerx_cards.json", cards)
    report = {
        "model": model_name(model),
        "data": data_label or dataset.source,
        "simulated": dataset.is_simulated,
        "reconstruction": RECONSTRUCTION,
        "config": study["config"],
        "sae": sae_report,
        "rows": table.to_dict(orient="records"),
        "cards": [c["user"] for c in cards],
        "seconds": round(time.perf_counter() - t0, 1),
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
            **_pair_keys(table, steered),
            # the token rule these vectors select by: NextQuill's published one (untuned),
            # not the token_effects step's tuned selection
            "steerx_selection_rule": f"none · p-diff > {study['config']['threshold']:g} "
            "(NextQuill's published rule, untuned)",
            "description_hit_rate": by_mode.get(cfg.describe),
            "description_hit_rate_by_mode": by_mode,
            "steerx_seconds": report["seconds"],
        },
    )
    return report
