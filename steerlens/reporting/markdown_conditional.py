"""The conditional step's part of the result page: its verdict (with the equal-KL comparison
withheld where the held-out KL ratio is outside the band), its table and its arms' lines
(see ``steerlens.reporting.markdown``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from steerlens.experiments.claims import equal_kl_kept
from steerlens.reporting.claim_text import holm_kept
from steerlens.reporting.md_format import (
    md_cell,
    md_num,
    md_table,
)

__all__ = ["conditional_verdict"]

_CONDITIONAL_MEASURES = {
    "mae": "toxicity MAE at the operating α",
    "utility_gain": "keyword-density utility gain at the operating α",
    "mae_equal_kl": "toxicity MAE at equal neutral-text KL",
    "utility_gain_equal_kl": "keyword-density utility gain at equal neutral-text KL",
    "steered_share": "share of report prompts steered",
    "neutral_kl": "KL on neutral text at the operating α (nats)",
    "neutral_kl_equal_kl": "KL on neutral text at equal KL (nats)",
}


def _equal_kl_withheld(alphas: Mapping[str, Any], method: str = "population") -> str:
    """Why the equal-KL comparison of ``method`` is withheld: its held-out KL ratio outside
    the band, or (a summary from before that rule) its α at the top of the grid."""
    ratio = (alphas.get("equal_kl_heldout_ratio") or {}).get(method)
    band = alphas.get("equal_kl_ratio_band") or [0.9, 1.1]
    if ratio is None and "equal_kl_matched" not in alphas:
        return (
            "The equal-KL α reached the top of its grid with the KL still below the target, so "
            "no equal-KL comparison is made."
        )
    said = "not measurable" if ratio is None else f"{md_num(ratio)}"
    return (
        f"No equal-KL comparison is made: on the held-out neutral texts the conditional arm's "
        f"KL at its equal-KL α is {said} × the unconditional arm's, outside "
        f"{md_num(band[0], 2)}–{md_num(band[1], 2)}."
    )


def conditional_verdict(s: Mapping[str, Any]) -> str:
    """One sentence: did conditioning help the population vector, by the paired intervals of
    its toxicity MAE and utility differences (``summary["conditional"]``)."""
    cond = s.get("conditional") or {}
    if "skipped" in cond:
        return f"The conditional step was skipped: {cond['skipped']}."
    entry = cond.get("population") or {}
    withheld = not equal_kl_kept(s.get("conditional_alphas") or {})
    found: dict[str, list[str]] = {"helped": [], "hurt": [], "open": [], "few": []}
    for key, better in (
        ("mae", -1),
        ("utility_gain", 1),
        ("mae_equal_kl", -1),
        ("utility_gain_equal_kl", 1),
    ):
        diff = (entry.get(key) or {}).get("difference") or {}
        iv = diff.get("interval")
        if diff.get("mean") is None or (withheld and key.endswith("_equal_kl")):
            continue
        if iv is None:
            kind = "few"
        elif iv[0] <= 0 <= iv[1] or not holm_kept(s, f"conditional.population.{key}.difference"):
            kind = "open"
        else:
            kind = "helped" if (iv[0] > 0) == (better > 0) else "hurt"
        found[kind].append(_CONDITIONAL_MEASURES[key])
    words = {
        "helped": "helped on ",
        "hurt": "hurt on ",
        "open": "made no detected difference on ",
        "few": "had too few users to tell on ",
    }
    parts = [words[k] + ", ".join(v) for k, v in found.items() if v]
    if not parts:
        return "No conditional comparison was recorded."
    note = " " + _equal_kl_withheld(s.get("conditional_alphas") or {}) if withheld else ""
    return (
        "Population vector, report prompts, as the conditional family of the findings "
        "words it: conditioning "
        + "; ".join(parts)
        + " (paired 95 % intervals; a difference counts only where it survives Holm's "
        "adjustment within the family, over at least 10 users)." + note
    )


def _conditional_lines(s: Mapping[str, Any]) -> list[str]:
    """Conditional vs unconditional steering per method and measure; empty without it."""
    cond = s.get("conditional") or {}
    if not cond:
        return []
    alphas = s.get("conditional_alphas") or {}
    share = s.get("conditional_steered_share") or {}
    lines = [
        "## Conditional steering (a learned condition) vs steering every prompt",
        "",
        conditional_verdict(s),
        "",
    ]
    if "skipped" in cond:
        return lines
    eq = alphas.get("equal_kl") or {}
    eq_text = ", ".join(f"{m} {md_num(a)}" for m, a in eq.items())
    lines += [
        f"Operating α {md_num(alphas.get('operating'))}; the conditional arm's equal-KL α per "
        f"method: {eq_text} (chosen on {alphas.get('equal_kl_selection_texts', 'other')} "
        "neutral texts, the KL reported on others). The condition steered "
        f"{md_cell(share.get('report_prompts'))} of the report prompts and "
        f"{md_cell(share.get('neutral_texts'))} of the neutral texts.",
        "",
        *_conditional_arm_lines(s),
    ]
    lines += md_table(
        ["method", "measure", "conditional", "unconditional", "conditional − unconditional"],
        (
            [
                m,
                _CONDITIONAL_MEASURES.get(k, k),
                md_cell(v["conditional"]),
                md_cell(v["unconditional"]),
                md_cell(v["difference"]),
            ]
            for m, measures in cond.items()
            for k, v in measures.items()
        ),
    )
    by_cat = s.get("conditional_by_category") or {}
    if by_cat:
        lines += [
            "Per category at the operating α (population vector): ΔMAE % vs unsteered (points) "
            "and the paired MAE difference with its interval:",
            "",
        ]
        lines += md_table(
            ["category", "conditional", "unconditional", "n prompts", "MAE, cond. − uncond."],
            (
                [
                    c,
                    md_num(r.get("conditional")),
                    md_num(r.get("unconditional")),
                    str(r.get("n")),
                    md_cell((r.get("mae") or {}).get("difference")),
                ]
                for c, r in by_cat.items()
            ),
        )
    return lines


def _conditional_arm_lines(s: Mapping[str, Any]) -> list[str]:
    """Per method: the equal-KL α and the top of its non-degenerate range, the held-out KL
    ratio and whether it keeps "at equal KL", each arm's degenerate share and the report
    prompts whose two arms' generations differ; empty for a summary without them."""
    arms, alphas = s.get("conditional_arms") or {}, s.get("conditional_alphas") or {}
    if not arms:
        return []
    band = alphas.get("equal_kl_ratio_band") or [0.9, 1.1]
    ratio = alphas.get("equal_kl_heldout_ratio") or {}
    limit = alphas.get("equal_kl_limit") or {}

    def at(entry: Mapping[str, Any] | None) -> list[str]:
        if not entry:
            return ["–", "–"]
        d = entry.get("degenerate_share") or {}
        return [
            f"{md_num(d.get('conditional'), 2)} / {md_num(d.get('unconditional'), 2)}",
            f"{entry.get('prompts_differing')} of {entry.get('prompts')}",
        ]

    lines = [
        f"The equal-KL α is searched up to the top of each method's swept α range where no "
        f"swept α has more than {md_num(alphas.get('degenerate_max', 0.5), 2)} of its "
        'unconditional generations degenerate (selection prompts); "at equal KL" is kept '
        f"only where the held-out KL ratio (conditional / unconditional) is within "
        f"{md_num(band[0], 2)}–{md_num(band[1], 2)}. Degenerate share: conditional / unconditional "
        "arm; the unconditional arm is at the operating α throughout.",
        "",
    ]
    lines += md_table(
        [
            "method",
            "equal-KL α (range top)",
            "held-out KL ratio",
            '"at equal KL"',
            "degenerate, operating α",
            "prompts differing, operating α",
            "degenerate, equal-KL α",
            "prompts differing, equal-KL α",
        ],
        (
            [
                m,
                f"{md_num((alphas.get('equal_kl') or {}).get(m))} ({md_num(limit.get(m))})",
                md_num(ratio.get(m)),
                "kept" if equal_kl_kept(alphas, m) else "withheld",
                *at(e.get("operating")),
                *at(e.get("equal_kl")),
            ]
            for m, e in arms.items()
        ),
    )
    return lines
