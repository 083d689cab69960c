"""The few findings that matter, in words a reader can check against the figures, each with
its interval — drawn from ``results/summary.json`` for the report page and the Markdown page."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from steerlens.reporting.tables import est, num

__all__ = ["headline"]


def _iv(s: Mapping[str, Any], key: str, *, signed: bool = False) -> str:
    iv = s.get(f"{key}_interval") or [None, None]
    return est(s.get(key), iv[0], iv[1], signed=signed)


def _cell(entry: Mapping[str, Any] | None, *, signed: bool = False) -> str:
    if not entry:
        return "–"
    iv = entry.get("interval") or [None, None]
    return est(entry.get("mean"), iv[0], iv[1], signed=signed)


def headline(s: Mapping[str, Any]) -> list[str]:
    """One sentence per finding present in the summary (a partial run gives fewer)."""
    out: list[str] = []
    a = s.get("best_alpha")
    if a is not None and "mae_change_pct_best" in s:
        out.append(
            f"Steering toward the users' preferred toxicity: the population vector at its best "
            f"α = {float(a):g} changes toxicity MAE by {_iv(s, 'mae_change_pct_best', signed=True)} % "
            f"against unsteered generations ({s.get('n_prompts')} held-out prompts of "
            f"{s.get('n_users')} users)."
        )
    if s.get("ppa_personalized") is not None:
        out.append(
            f"Preference accuracy by projection on held-out pairs: "
            f"{s.get('ppa_personalized_method', 'personalised')} {_iv(s, 'ppa_personalized')}, "
            f"Bradley-Terry {_iv(s, 'ppa_bradley_terry')}, population {_iv(s, 'ppa_population')}, "
            f"toxicity-only {_iv(s, 'ppa_toxicity_only')} (chance 0.5"
            + (f", oracle {_iv(s, 'ppa_oracle')})." if s.get("ppa_oracle") is not None else ").")
        )
    util = s.get("utility_gain") or {}
    if util and a is not None:
        ivs = s.get("utility_gain_interval") or {}
        parts = [
            f"{m}: "
            + ", ".join(
                f"{g} {est(v, *(ivs.get(m, {}).get(g) or [None, None]), signed=True)}"
                for g, v in row.items()
            )
            for m, row in util.items()
        ]
        out.append(
            f"Ground-truth utility gain at α = {float(a):g} per simulated user group — "
            + "; ".join(parts)
            + "."
        )
    kl = s.get("kl_neutral") or {}
    ppl = s.get("ppl_neutral") or {}
    if kl and a is not None:
        key = f"{float(a):g}"
        parts = [f"{m} {_cell(row.get(key))}" for m, row in kl.items() if key in row]
        pop_ppl = ppl.get("population", {})
        out.append(
            f"Side effect on neutral text (MMLU question stems) at α = {float(a):g}: mean per-token "
            f"KL from the unsteered model {', '.join(parts)} nats; perplexity of that text "
            f"{_cell(pop_ppl.get('0'))} unsteered, {_cell(pop_ppl.get(key))} with the "
            "population vector."
        )
    upk = s.get("utility_per_kl") or {}
    per_kl = upk.get("calibrated") or {}
    if per_kl:
        budget = max({b for row in per_kl.values() for b in row}, key=float)
        parts = [f"{m} {_cell(row.get(budget), signed=True)}" for m, row in per_kl.items()]
        diff = upk.get("minus_population") or {}
        vs = [f"{m} {_cell(row.get(budget), signed=True)}" for m, row in diff.items()]
        out.append(
            f"At equal side effect (each user's α calibrated to {budget} nats/token of KL), "
            f"utility gain per nat: {', '.join(parts)}"
            + (
                f"; utility gain minus the population vector's, paired by prompt: {', '.join(vs)}"
                if vs
                else ""
            )
            + "."
        )
    if s.get("token_precision") is not None:
        smoke = " (a smoke run: few users)" if s.get("token_effects_smoke_run") else ""
        out.append(
            f"SteerX's token selection (reconstructed) against the planted preference tokens, "
            f"on held-out users{smoke}: precision {num(s['token_precision'])}, recall "
            f"{num(s.get('token_recall'))} with {s.get('token_estimator')}; NextQuill's "
            f"p-difference > 0.05 gives {num(s.get('token_precision_baseline'))} / "
            f"{num(s.get('token_recall_baseline'))} (point estimates over "
            f"{s.get('token_effects_targets')} target responses)."
        )
    spearman = s.get("attribution_spearman") or {}
    if spearman:
        out.append(
            "Attribution patching against exact activation patching (rank correlation over "
            "layer x position): "
            + ", ".join(f"{k.replace('steps=', '')} step(s) {num(v)}" for k, v in spearman.items())
            + "."
        )
    if s.get("steerx_pair_ppa"):
        out.append(
            "SteerX selection on the dislike-weighted (pair-based) backbone, PPA by projection "
            "(the same pairs, unshrunk): "
            f"selected tokens {_cell(s.get('steerx_pair_ppa'))} vs all tokens "
            f"{_cell(s.get('steerx_pair_all_tokens_ppa'))}; paired difference "
            f"{_cell(s.get('steerx_pair_minus_all_ppa'), signed=True)}."
        )
    if s.get("mmlu_unsteered") is not None:
        out.append(
            f"Zero-shot MMLU ({s.get('mmlu_items')} items): {_iv(s, 'mmlu_unsteered')} unsteered, "
            f"{_iv(s, 'mmlu_steered')} steered (chance 0.25)."
        )
    return out
