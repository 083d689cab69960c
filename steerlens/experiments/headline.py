"""The study's headline as data: ``summary["headline"]`` is a list of claims, each
``{"claim", "estimate", "interval", "n", "unit", "truth"}``, built from the summary's
estimates alone. A comparison's words follow its paired interval
(``steerlens.metrics.stats.direction``): "higher" / "lower" only when the interval excludes
0, else "no difference detected (n = ...)"; below ``MIN_CLUSTERS`` units there is no
interval and so no direction. The pages render this list; they never word a finding
themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from steerlens.metrics.stats import direction

__all__ = ["build_headline", "claim"]

_UNITS = {"user": "users", "prompt": "prompts", "text": "texts", "item": "items"}


def claim(
    text: str,
    entry: Mapping[str, Any] | None,
    *,
    truth: str | None = None,
    compare: tuple[str, str] | None = None,
) -> dict[str, Any] | None:
    """One headline entry from a summary estimate ``{"mean", "interval", "n", "unit"}``.

    With ``compare = (higher, lower)`` the estimate is a paired difference and ``text``
    gets the word its interval allows (``{word}`` in ``text`` is replaced). ``None`` when
    the estimate is missing."""
    if not isinstance(entry, Mapping) or entry.get("mean") is None:
        return None  # missing, or a plain number of a summary written before estimates had n
    n, unit = int(entry.get("n") or 0), str(entry.get("unit") or "user")
    interval = entry.get("interval")
    if compare is not None:
        word = direction(
            interval, n, higher=compare[0], lower=compare[1], unit=_UNITS.get(unit, unit)
        )
        text = text.replace("{word}", word)
    return {
        "claim": text,
        "estimate": float(entry["mean"]),
        "interval": None if interval is None else [float(v) for v in interval],
        "n": n,
        "unit": unit,
        "truth": truth,
        "paired": compare is not None,
    }


def _sel(s: Mapping[str, Any], quantity: str) -> Mapping[str, Any]:
    return (s.get("selection") or {}).get(quantity) or {}


def _mae_claims(s: Mapping[str, Any], a: Any) -> list[dict[str, Any] | None]:
    """The operating α's toxicity MAE change vs unsteered."""
    if a is None:
        return []
    sel = _sel(s, "operating_alpha")
    return [
        claim(
            f"Toxicity MAE with the population vector at α = {float(a):g} (chosen on "
            f"{sel.get('n_select', '?')} selection prompts) vs unsteered, % change paired "
            f"by prompt on {sel.get('n_report', '?')} disjoint report prompts: {{word}}",
            s.get("mae_change_pct_best"),
            compare=("higher (worse)", "lower (better)"),
        )
    ]


def _ppa_claims(s: Mapping[str, Any], gt: str | None) -> list[dict[str, Any] | None]:
    """PPA: personalised and Bradley-Terry minus population, oracle minus personalised."""
    out: list[dict[str, Any] | None] = []
    for key, name in (
        ("ppa_personalized_minus_population", s.get("ppa_personalized_method", "personalised")),
        ("ppa_bradley_terry_minus_population", "Bradley-Terry"),
    ):
        out.append(
            claim(
                f"Preference accuracy by projection on held-out pairs, {name} minus population "
                "(paired by user): {word}",
                s.get(key),
                truth="held-out choices",
                compare=("higher", "lower"),
            )
        )
    out.append(
        claim(
            "PPA of the oracle (the simulated users' own weights) minus personalised, paired "
            "by user: {word}",
            s.get("ppa_oracle_minus_personalized"),
            truth=gt,
            compare=("higher", "lower"),
        )
    )
    return out


def _utility_claims(s: Mapping[str, Any], a: Any, gt: str | None) -> list[dict[str, Any] | None]:
    """Ground-truth utility gain at the operating α, one claim per comparison."""
    util = s.get("utility_gain_all") or {}
    if a is None or not util:
        return []
    out: list[dict[str, Any] | None] = []
    for m, entry in util.items():
        what = m if "−" in m else f"{m} minus unsteered"
        out.append(
            claim(
                f"Ground-truth utility gain at α = {float(a):g}, {what}, on the report "
                f"prompts ({len(util)} comparisons): {{word}}",
                entry,
                truth=gt,
                compare=("higher", "lower"),
            )
        )
    return out


def _side_effect_claims(
    s: Mapping[str, Any], a: Any, gt: str | None
) -> list[dict[str, Any] | None]:
    """Side effects: KL at the operating α, utility at equal KL, KL on held-out text."""
    out: list[dict[str, Any] | None] = []
    kl = (s.get("kl_neutral") or {}).get("population", {})
    if a is not None and kl.get(f"{float(a):g}"):
        out.append(
            claim(
                f"Side effect of the population vector at α = {float(a):g}: mean per-token KL "
                "from the unsteered model on neutral text (nats)",
                kl[f"{float(a):g}"],
            )
        )
    upk = (s.get("utility_per_kl") or {}).get("minus_population") or {}
    if upk:
        budget = max({b for row in upk.values() for b in row}, key=float)
        grid = sum(len(row) for row in upk.values())
        for m, row in upk.items():
            out.append(
                claim(
                    f"At equal side effect (each user's α calibrated to {budget} nats/token), "
                    f"utility gain of {m} minus the population vector's, paired by prompt "
                    f"(the largest budget of {grid} such comparisons; unreached users "
                    "excluded): {word}",
                    row.get(budget),
                    truth=gt,
                    compare=("higher", "lower"),
                )
            )
    held = s.get("kl_heldout") or {}
    for m, row in held.items():
        if row:
            budget = max(row, key=float)
            e = row[budget]
            ratio = e.get("ratio_to_budget") if isinstance(e, Mapping) else None
            out.append(
                claim(
                    f"KL on held-out neutral text of {m} calibrated to {budget} nats/token on "
                    "other texts"
                    + (f" ({float(ratio):.2f} × the budget)" if ratio is not None else ""),
                    e,
                )
            )
    return out


def _token_claims(s: Mapping[str, Any]) -> list[dict[str, Any] | None]:
    """SteerX token selection precision / recall, and its difference from NextQuill's."""
    out: list[dict[str, Any] | None] = []
    for truth in ("planted", "completed"):
        sfx = "" if truth == "completed" else "_planted"
        for what in ("precision", "recall"):
            out.append(
                claim(
                    f"SteerX token selection (reconstructed; {s.get('token_estimator')}, chosen "
                    f"on the selection side) {what} against the {truth} preference tokens, on "
                    f"{s.get('token_effects_report_targets', '?')} report-side target "
                    "responses" + (" (a smoke run)" if s.get("token_effects_smoke_run") else ""),
                    s.get(f"token_{what}{sfx}"),
                    truth=truth,
                )
            )
    for what in ("precision", "recall"):
        out.append(
            claim(
                f"SteerX token selection {what} minus NextQuill's (no-history p-difference > "
                "0.05), completed truth, report side, paired by user: {word}",
                s.get(f"token_{what}_minus_baseline"),
                truth="completed",
                compare=("higher", "lower"),
            )
        )
    return out


def _steerx_claims(s: Mapping[str, Any]) -> list[dict[str, Any] | None]:
    """SteerX vs all-history PPA per backbone, and selected vs all tokens on the pairs."""
    out: list[dict[str, Any] | None] = []
    for b, e in (s.get("steerx_minus_allhistory_ppa") or {}).items():
        if b == "pairs":  # claimed below, in the pair-based backbone's own words
            continue
        out.append(
            claim(
                f"SteerX (reconstructed) minus all-history PPA by projection, {b} backbone, "
                "paired by user: {word}",
                e,
                truth="held-out choices",
                compare=("higher", "lower"),
            )
        )
    out.append(
        claim(
            "SteerX-selected tokens minus all tokens on the pair-based backbone, PPA by "
            "projection, paired by user: {word}",
            s.get("steerx_pair_minus_all_ppa"),
            truth="held-out choices",
            compare=("higher", "lower"),
        )
    )
    return out


def _conditional_claims(s: Mapping[str, Any], gt: str | None) -> list[dict[str, Any] | None]:
    """Conditional minus unconditional steering of the population vector, paired by prompt:
    toxicity MAE and utility at the operating α and at equal neutral-text KL; the share of
    report prompts the condition steered."""
    pop = (s.get("conditional") or {}).get("population") or {}
    alphas = s.get("conditional_alphas") or {}
    if not pop:
        return []
    at, eq = alphas.get("operating"), (alphas.get("equal_kl") or {}).get("population")
    if (alphas.get("equal_kl_capped") or {}).get("population"):  # KL not matched: no claim
        pop = {k: v for k, v in pop.items() if not k.endswith("_equal_kl")}
    rows = [
        ("mae", f"at α = {_g(at)}", "toxicity MAE", ("higher (worse)", "lower (better)"), None),
        ("utility_gain", f"at α = {_g(at)}", "utility gain", ("higher", "lower"), gt),
        (
            "mae_equal_kl",
            f"at equal neutral-text KL (conditional α = {_g(eq)})",
            "toxicity MAE",
            ("higher (worse)", "lower (better)"),
            None,
        ),
        (
            "utility_gain_equal_kl",
            f"at equal neutral-text KL (conditional α = {_g(eq)})",
            "utility gain",
            ("higher", "lower"),
            gt,
        ),
    ]
    out: list[dict[str, Any] | None] = [
        claim(
            f"Conditional minus unconditional steering (population vector) {where}: {what} "
            "{word}, paired by prompt",
            (pop.get(key) or {}).get("difference"),
            truth=truth,
            compare=words,
        )
        for key, where, what, words, truth in rows
    ]
    out.append(
        claim(
            "Share of report prompts the learned condition steered",
            (s.get("conditional_steered_share") or {}).get("report_prompts"),
        )
    )
    return out


def _g(x: Any) -> str:
    return "?" if x is None else f"{float(x):g}"


def build_headline(s: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The headline entries the summary supports (a partial run gives fewer)."""
    gt = "simulated ground truth" if s.get("data_is_simulated") else None
    a = s.get("best_alpha")
    out = [
        *_mae_claims(s, a),
        *_ppa_claims(s, gt),
        *_utility_claims(s, a, gt),
        *_side_effect_claims(s, a, gt),
        *_conditional_claims(s, gt),
        *_token_claims(s),
        *_steerx_claims(s),
        claim(
            f"Zero-shot MMLU ({s.get('mmlu_items')} items), steered minus unsteered, paired by "
            "item: {word}",
            s.get("mmlu_steered_minus_unsteered"),
            compare=("higher", "lower"),
        ),
    ]
    return [c for c in out if c is not None]
