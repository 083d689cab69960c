"""The study's headline as data: ``summary["headline"]`` is a list of claims, each
``{"claim", "estimate", "interval", "n", "unit", "truth", "paired", "family", "key",
"p_value", "p_holm", "family_size"}``, built from the summary's estimates alone.

Multiplicity: one primary claim (``PRIMARY``, personalised − population PPA) and declared
families of secondary comparisons (``FAMILIES``); every paired comparison belongs to one, and
every member is listed whether or not it favours a method. Within a family, Holm's step-down
procedure (``steerlens.metrics.stats.holm``) over the members' p-values decides the words:
"higher" / "lower" only where the adjusted p is below ``LEVEL`` and the interval excludes 0
(``steerlens.metrics.stats.direction``), else "no difference detected (n = ...)". The
p-values come from each comparison's 95 % interval (``interval_pvalue``: the summary keeps
no resamples), with the t distribution on n − 1 degrees of freedom the interval was built
with; a member below ``MIN_CLUSTERS`` units has no interval, p = 1, and still counts in its
family's size; below ``MIN_WORDED`` units no member gets a direction word. Levels (a KL, a precision, a
share) are no comparison: ``family`` None, exploratory, no direction word. The pages render
this list; they never word a finding themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from steerlens.metrics.stats import MIN_CLUSTERS, direction, holm, interval_pvalue

__all__ = [
    "FAMILIES",
    "LEVEL",
    "PRIMARY",
    "adjust",
    "build_headline",
    "calibrated_claims",
    "claim",
    "conditional_claims",
    "dose_claims",
    "equal_kl_kept",
    "kl_claims",
    "mmlu_claims",
    "ppa_claims",
    "steerx_claims",
    "token_claims",
]

_UNITS = {"user": "users", "prompt": "prompts", "text": "texts", "item": "items"}

PRIMARY = "ppa_personalized_minus_population"
"""The one primary claim's summary key: personalised minus population PPA, paired by user."""

LEVEL = 0.05
"""The family-wise error rate Holm's procedure holds within each family (and the primary
claim's level)."""

FAMILIES: dict[str, str] = {
    "primary": "personalised minus population preference accuracy (one comparison)",
    "preference accuracy": "Bradley-Terry minus population, oracle minus personalised (PPA)",
    "alignment": "toxicity MAE change and simulated utility gains of steered outputs",
    "side effects": "MMLU accuracy under steering (KL and perplexity are levels: exploratory)",
    "token selection": "SteerX token selection's precision minus each baseline's (NextQuill "
    "tuned and as published, placebo-controlled, position only, base rate), both truths",
    "SteerX vs all-history": "SteerX minus all-history PPA, by projection and under steering",
    "conditional": "conditional minus unconditional steering of the population vector",
}
"""The declared families of secondary comparisons (name: what they ask), in page order."""


def claim(
    text: str,
    entry: Mapping[str, Any] | None,
    *,
    truth: str | None = None,
    compare: tuple[str, str] | None = None,
    family: str | None = None,
    key: str | None = None,
) -> dict[str, Any] | None:
    """One headline entry from a summary estimate ``{"mean", "interval", "n", "unit"}``.

    With ``compare = (higher, lower)`` the estimate is a paired difference of ``family`` and
    ``text`` gets the word Holm's procedure over that family allows (``{word}`` in ``text``
    is replaced; ``adjust`` does it once the family is complete; a comparison outside every
    family never gets a direction word). ``key`` is the summary key it reads. ``None`` when
    the estimate is missing."""
    if not isinstance(entry, Mapping) or entry.get("mean") is None:
        return None  # missing, or a plain number of a summary written before estimates had n
    n, unit = int(entry.get("n") or 0), str(entry.get("unit") or "user")
    interval = entry.get("interval")
    if compare is None:
        family = None  # a level: no comparison, no family
    elif family is None:  # a comparison no family declares: exploratory, no direction word
        untested = f"exploratory, not tested (n = {n} {_UNITS.get(unit, unit)})"
        text = text.replace("{word}", untested)
    return {
        "claim": text,
        "estimate": float(entry["mean"]),
        "interval": None if interval is None else [float(v) for v in interval],
        "n": n,
        "unit": unit,
        "truth": truth,
        "paired": compare is not None,
        "family": family,
        "key": key,
        "p_value": None,
        "p_holm": None,
        "family_size": None,
        **({"_words": compare} if compare is not None and family is not None else {}),
    }


def adjust(claims: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Word each family's comparisons by Holm's step-down procedure over the family: a
    direction only where the adjusted p is below ``LEVEL`` and the interval excludes 0.
    Returns the claims ordered primary, families in ``FAMILIES`` order, then the levels."""
    order = {name: i for i, name in enumerate(FAMILIES)}
    for name in dict.fromkeys(c["family"] for c in claims if c.get("family") is not None):
        members = [c for c in claims if c.get("family") == name]
        raw = [
            interval_pvalue(c["estimate"], c["interval"], df=c["n"] - 1)
            if c["n"] >= MIN_CLUSTERS
            else 1.0
            for c in members
        ]
        for c, p, p_adj in zip(members, raw, holm(raw), strict=True):
            higher, lower = c.pop("_words")
            unit = _UNITS.get(c["unit"], c["unit"])
            word = direction(c["interval"], c["n"], higher=higher, lower=lower, unit=unit)
            if p_adj >= LEVEL and word in (higher, lower):  # the interval alone would word it
                word = f"no difference detected after Holm's adjustment (n = {c['n']} {unit})"
            c["claim"] = c["claim"].replace("{word}", word)
            c.update(p_value=round(p, 6), p_holm=round(p_adj, 6), family_size=len(members))
    return sorted(claims, key=lambda c: order.get(c.get("family") or "", len(order)))


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
            family="alignment",
            key="mae_change_pct_best",
        )
    ]


def _ppa_claims(s: Mapping[str, Any], gt: str | None) -> list[dict[str, Any] | None]:
    """PPA: personalised and Bradley-Terry minus population, oracle minus personalised."""
    out: list[dict[str, Any] | None] = []
    for key, name, family in (
        (PRIMARY, s.get("ppa_personalized_method", "personalised"), "primary"),
        ("ppa_bradley_terry_minus_population", "Bradley-Terry", "preference accuracy"),
    ):
        out.append(
            claim(
                f"Preference accuracy by projection on held-out pairs, {name} minus population "
                "(paired by user): {word}",
                s.get(key),
                truth="held-out choices",
                compare=("higher", "lower"),
                family=family,
                key=key,
            )
        )
    out.append(
        claim(
            "PPA of the oracle (the simulated users' own weights) minus personalised, paired "
            "by user: {word}",
            s.get("ppa_oracle_minus_personalized"),
            truth=gt,
            compare=("higher", "lower"),
            family="preference accuracy",
            key="ppa_oracle_minus_personalized",
        )
    )
    return out


def _degenerate(entry: Any) -> str:
    """``"; degenerate or empty outputs: 0.12"`` (an arm's share) or ``"...: m 0.12,
    population 0.05"`` (a difference's arms): every utility number beside its arms'
    degenerate share; ``""`` where the entry carries none."""
    share = entry.get("degenerate_share") if isinstance(entry, Mapping) else None
    if share is None:
        return ""
    if isinstance(share, Mapping):
        text = ", ".join(f"{k} {float(v):.2f}" for k, v in share.items())
    else:
        text = f"{float(share):.2f}"
    return f"; degenerate or empty outputs: {text}"


def _utility_claims(s: Mapping[str, Any], a: Any, gt: str | None) -> list[dict[str, Any] | None]:
    """Keyword-density utility gain of the simulated users at the operating α (degenerate
    outputs floored at no gain), one claim per comparison, with its arms' degenerate shares."""
    util = s.get("utility_gain_all") or {}
    if a is None or not util:
        return []
    out: list[dict[str, Any] | None] = []
    for m, entry in util.items():
        what = m if "−" in m else f"{m} minus unsteered"
        out.append(
            claim(
                f"Keyword-density utility gain (simulated users) at α = {float(a):g}, {what}, "
                f"on the report prompts ({len(util)} comparisons{_degenerate(entry)}): "
                "{word}",
                entry,
                truth=gt,
                compare=("higher", "lower"),
                family="alignment",
                key=f"utility_gain_all.{m}",
            )
        )
    return out


def kl_claims(s: Mapping[str, Any]) -> list[dict[str, Any] | None]:
    """The side-effects step's level: the population vector's KL at the operating α."""
    a = s.get("operating_alpha")
    kl = (s.get("kl_neutral") or {}).get("population", {})
    if a is None or not kl.get(f"{float(a):g}"):
        return []
    return [
        claim(
            f"Side effect of the population vector at α = {float(a):g}: mean per-token KL "
            "from the unsteered model on neutral text (nats)",
            kl[f"{float(a):g}"],
            key=f"kl_neutral.population.{float(a):g}",
        )
    ]


def calibrated_claims(s: Mapping[str, Any]) -> list[dict[str, Any] | None]:
    """The calibrated step's: utility at equal KL (alignment), KL on held-out text (levels)."""
    gt = _truths(s)[1]
    out: list[dict[str, Any] | None] = []
    upk = (s.get("utility_per_kl") or {}).get("minus_population") or {}
    if upk:
        budget = max({b for row in upk.values() for b in row}, key=float)
        grid = sum(len(row) for row in upk.values())
        for m, row in upk.items():
            out.append(
                claim(
                    f"At equal side effect (each user's α calibrated to {budget} nats/token), "
                    f"keyword-density utility gain of {m} minus the population vector's, "
                    f"paired by prompt (the largest budget of {grid} such comparisons; "
                    f"unreached users excluded{_degenerate(row.get(budget))}): {{word}}",
                    row.get(budget),
                    truth=gt,
                    compare=("higher", "lower"),
                    family="alignment",
                    key=f"utility_per_kl.minus_population.{m}.{budget}",
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
                    key=f"kl_heldout.{m}.{budget}",
                )
            )
    return out


def token_claims(s: Mapping[str, Any]) -> list[dict[str, Any] | None]:
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
                    key=f"token_{what}{sfx}",
                )
            )
    baselines = s.get("token_baselines") or {}
    if not baselines:  # a summary written before the baselines: NextQuill's rule only
        for truth, sfx in (("completed", ""), ("planted", "_planted")):
            for what in ("precision", "recall"):
                out.append(
                    claim(
                        f"SteerX token selection {what} minus NextQuill's, {truth} truth, "
                        "report side, paired by user: {word}",
                        s.get(f"token_{what}_minus_baseline{sfx}"),
                        truth=truth,
                        compare=("higher", "lower"),
                        family="token selection",
                        key=f"token_{what}_minus_baseline{sfx}",
                    )
                )
        return out
    for truth in ("completed", "planted"):  # precision over each baseline, tuned alike
        for name, row in (baselines.get(truth) or {}).items():
            if name == "chosen" or "precision_minus" not in row:
                continue
            out.append(
                claim(
                    f"SteerX token selection precision minus {row.get('label', name)}, "
                    f"{truth} truth, report side, paired by user: {{word}}",
                    row["precision_minus"],
                    truth=truth,
                    compare=("higher", "lower"),
                    family="token selection",
                    key=f"token_baselines.{truth}.{name}.precision_minus",
                )
            )
    return out


def steerx_claims(s: Mapping[str, Any]) -> list[dict[str, Any] | None]:
    """SteerX vs all-history PPA per backbone, and selected vs all tokens on the pairs; by
    projection and under steering (a negative result is a member like any other)."""
    out: list[dict[str, Any] | None] = []
    for sfx, how in (("", "by projection"), ("_under_steering", "under steering")):
        key = f"steerx_minus_allhistory_ppa{sfx}"
        for b, e in (s.get(key) or {}).items():
            if b == "pairs":  # claimed below, in the pair-based backbone's own words
                continue
            out.append(
                claim(
                    f"SteerX (reconstructed) minus all-history PPA {how}, {b} backbone, "
                    "paired by user: {word}",
                    e,
                    truth="held-out choices",
                    compare=("higher", "lower"),
                    family="SteerX vs all-history",
                    key=f"{key}.{b}",
                )
            )
        out.append(
            claim(
                "SteerX-selected tokens minus all tokens on the pair-based backbone, PPA "
                f"{how}, paired by user: {{word}}",
                s.get(f"steerx_pair_minus_all_ppa{sfx}"),
                truth="held-out choices",
                compare=("higher", "lower"),
                family="SteerX vs all-history",
                key=f"steerx_pair_minus_all_ppa{sfx}",
            )
        )
    return out


_UTILITY = "keyword-density utility gain (simulated users)"


def equal_kl_kept(alphas: Mapping[str, Any], method: str = "population") -> bool:
    """Whether ``method``'s conditional comparison keeps the words "at equal KL"
    (``summary["conditional_alphas"]``): its held-out KL ratio, conditional over unconditional,
    lies within the band (``equal_kl_matched``); a summary written before that rule: its
    equal-KL α was not the top of its grid."""
    matched = (alphas.get("equal_kl_matched") or {}).get(method)
    if matched is not None:
        return bool(matched)
    return not (alphas.get("equal_kl_capped") or {}).get(method)


def _withheld(entry: Any) -> Any:
    """A conditional measure's entry with its difference's interval removed (the equal-KL
    comparison withheld: listed in its family with p = 1, never worded)."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("difference"), Mapping):
        return entry
    return {**entry, "difference": {**entry["difference"], "interval": None, "withheld": True}}


def _conditional_claims(s: Mapping[str, Any], gt: str | None) -> list[dict[str, Any] | None]:
    """Conditional minus unconditional steering of the population vector, paired by prompt:
    toxicity MAE and utility at the operating α and at equal neutral-text KL; the share of
    report prompts the condition steered."""
    pop = (s.get("conditional") or {}).get("population") or {}
    alphas = s.get("conditional_alphas") or {}
    if not pop:
        return []
    at, eq = alphas.get("operating"), (alphas.get("equal_kl") or {}).get("population")
    kept = equal_kl_kept(alphas)
    if not kept:  # held-out KL not matched: no "equal KL" claim, but the members stay in
        # the family (without an interval: p = 1), so the family's size does not move
        pop = {k: _withheld(v) if k.endswith("_equal_kl") else v for k, v in pop.items()}
    eq_where = (
        f"at equal neutral-text KL (conditional α = {_g(eq)})"
        if kept
        else f"at the equal-KL search's α = {_g(eq)} (withheld: KL not matched on held-out text)"
    )
    rows = [
        ("mae", f"at α = {_g(at)}", "toxicity MAE", ("higher (worse)", "lower (better)"), None),
        ("utility_gain", f"at α = {_g(at)}", _UTILITY, ("higher", "lower"), gt),
        (
            "mae_equal_kl",
            eq_where,
            "toxicity MAE",
            ("higher (worse)", "lower (better)"),
            None,
        ),
        (
            "utility_gain_equal_kl",
            eq_where,
            _UTILITY,
            ("higher", "lower"),
            gt,
        ),
    ]
    out: list[dict[str, Any] | None] = [
        claim(
            f"Conditional minus unconditional steering (population vector) {where}: {what} "
            "{word}, paired by prompt" + _degenerate((pop.get(key) or {}).get("difference")),
            (pop.get(key) or {}).get("difference"),
            truth=truth,
            compare=words,
            family="conditional",
            key=f"conditional.population.{key}.difference",
        )
        for key, where, what, words, truth in rows
    ]
    out.append(
        claim(
            "Share of report prompts the learned condition steered",
            (s.get("conditional_steered_share") or {}).get("report_prompts"),
            key="conditional_steered_share.report_prompts",
        )
    )
    return out


def _g(x: Any) -> str:
    return "?" if x is None else f"{float(x):g}"


def _truths(s: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(the simulated ground truth's name, the keyword-density utility's), or Nones on real
    data; the utility is keyword densities of the simulated users' attributes: said so."""
    gt = "simulated ground truth" if s.get("data_is_simulated") else None
    return gt, ("keyword-density utility of the simulated users" if gt else None)


def ppa_claims(s: Mapping[str, Any]) -> list[dict[str, Any] | None]:
    """The vectors step's: PPA comparisons (the primary claim among them)."""
    return _ppa_claims(s, _truths(s)[0])


def dose_claims(s: Mapping[str, Any]) -> list[dict[str, Any] | None]:
    """The dose step's: the operating α's MAE change and utility gains."""
    a = s.get("operating_alpha")
    return [*_mae_claims(s, a), *_utility_claims(s, a, _truths(s)[1])]


def conditional_claims(s: Mapping[str, Any]) -> list[dict[str, Any] | None]:
    """The conditional step's: conditional minus unconditional, and the steered share."""
    return _conditional_claims(s, _truths(s)[1])


def build_headline(
    s: Mapping[str, Any], steps: Iterable[Any] | None = None
) -> list[dict[str, Any]]:
    """The headline entries the summary supports (a partial run gives fewer): every
    registered step's ``claims`` (``steerlens.experiments.steps``, in the order they run),
    worded within their families by ``adjust``."""
    if steps is None:  # imported here: the step modules import this one for their claims
        from steerlens.experiments.steps import REGISTRY

        steps = REGISTRY.values()
    out = [c for step in steps if step.claims is not None for c in step.claims(s)]
    return adjust([c for c in out if c is not None])


def mmlu_claims(s: Mapping[str, Any]) -> list[dict[str, Any] | None]:
    """MMLU steered minus unsteered, paired by item: the operating α's key and any other
    ``mmlu_*_minus_unsteered`` estimate (one, or one per setting), all in "side effects"."""
    out: list[dict[str, Any] | None] = []
    for key in sorted(k for k in s if k.startswith("mmlu_") and k.endswith("_minus_unsteered")):
        value = s[key]
        if not isinstance(value, Mapping):
            continue
        where = key.removeprefix("mmlu_").removesuffix("_minus_unsteered").replace("_", " ")
        settings = {"": value} if "mean" in value else dict(value)
        for label, entry in settings.items():
            at = str(label) if where == "steered" else f"{where} {label}".strip()
            out.append(
                claim(
                    f"Zero-shot MMLU ({s.get('mmlu_items')} items), steered"
                    + (f" ({at})" if at else "")
                    + " minus unsteered, paired by item: {word}",
                    entry if isinstance(entry, Mapping) else None,
                    compare=("higher", "lower"),
                    family="side effects",
                    key=key + (f".{label}" if label else ""),
                )
            )
    return out
