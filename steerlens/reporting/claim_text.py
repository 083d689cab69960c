"""The few findings that matter, rendered from the claims ``steerlens.experiments.claims``
builds from the summary's estimates (the rule ``summary["headline"]`` was written with): one
primary claim, the declared families of secondary comparisons (each member's words chosen by
Holm's procedure within its family, its raw and adjusted p beside it), then the levels,
labelled exploratory. Each sentence carries its estimate, interval and n — or "n too
small"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from steerlens.experiments.claims import FAMILIES, LEVEL, build_headline
from steerlens.metrics.stats import MIN_WORDED
from steerlens.reporting.tables import est, num

__all__ = ["findings_markdown", "headline", "holm_kept", "render_claim"]


def render_claim(c: Mapping[str, Any]) -> str:
    """ "claim: estimate [low, high] (n = k units)", or "(n = k units: n too small for an
    interval)" where the interval was withheld."""
    n, unit = c.get("n"), c.get("unit", "")
    units = f"{unit}s" if unit and not str(unit).endswith("s") else str(unit)
    said = f"(n = {n} {units})" in str(c.get("claim"))  # "no difference detected (n = …)"
    iv = c.get("interval")
    truth = f"; truth: {c['truth']}" if c.get("truth") else ""
    if iv is not None and c.get("p_holm") is not None:  # a family member: its test
        size = int(c.get("family_size") or 1)
        truth += f"; p = {_p(c.get('p_value'))}" + (
            f", Holm-adjusted {_p(c['p_holm'])} over {size} in “{c.get('family')}”"
            if size > 1
            else ""
        )
    signed = bool(c.get("paired", True))  # a difference carries its sign; a level does not
    if iv is None:
        value = (
            f"{num(c.get('estimate'), signed=signed)} "
            f"(n = {n} {units}: n too small for an interval{truth})"
        )
    else:
        count = "" if said else f"n = {n} {units}"
        tail = f" ({count}{truth})" if count else (f" ({truth[2:]})" if truth else "")
        value = f"{est(c.get('estimate'), iv[0], iv[1], signed=signed)}{tail}"
    return f"{c.get('claim')}: {value}."


def _p(p: Any) -> str:
    return "–" if p is None else ("< 0.001" if float(p) < 0.001 else f"{float(p):.2g}")


def _role(c: Mapping[str, Any]) -> str:
    family = c.get("family")
    if family == "primary":
        return "Primary claim"
    return f"Secondary ({family})" if family else "Exploratory"


def headline(s: Mapping[str, Any]) -> list[str]:
    """One sentence per claim the summary supports (a partial run gives fewer), each led by
    its role (primary, its secondary family, or exploratory), built anew from the summary's
    estimates (a step run on its own, e.g. by an analysis script, updates the estimates; the
    stored ``summary["headline"]`` is the demo's copy of the same rule)."""
    return [f"{_role(c)}: {render_claim(c)}" for c in build_headline(s)]


def holm_kept(s: Mapping[str, Any], key: str) -> bool:
    """Whether the comparison read from summary ``key`` (a claim's ``key``) is a family
    member whose Holm-adjusted p is below ``LEVEL`` over at least ``MIN_WORDED`` units (its
    direction word stands)."""
    return any(
        c.get("key") == key
        and c.get("p_holm") is not None
        and c["p_holm"] < LEVEL
        and c["n"] >= MIN_WORDED
        for c in build_headline(s)
    )


def findings_markdown(s: Mapping[str, Any]) -> list[str]:
    """The Findings section's lines: the rule, the primary claim, each declared family (all
    its members, whether or not they favour a method), then the levels, labelled
    exploratory; ``[]`` where nothing was claimed."""
    claims = build_headline(s)
    if not claims:
        return []
    lines = [
        f"One primary claim and {len(FAMILIES) - 1} declared families of secondary "
        "comparisons. Within each family, Holm's step-down procedure over its paired "
        f"comparisons holds the family-wise error at {LEVEL:g}: a comparison carries a "
        f"direction word only where its Holm-adjusted p is below {LEVEL:g} (the primary "
        "claim: its own p) and it rests on at least 10 units. p-values come from each "
        "comparison's 95 % interval (standard error = the interval's half-width on the side "
        "of 0 over the t critical value on n − 1 degrees of freedom it was built with); a "
        "member with too few units for an interval has p = 1 and counts in its family. Every "
        "member is listed, whichever method it favours.",
        "",
    ]
    primary = [c for c in claims if c.get("family") == "primary"]
    if primary:
        lines += ["### Primary claim", "", *(f"* {render_claim(c)}" for c in primary), ""]
    families = [f for f in FAMILIES if f != "primary"]
    extra = sorted({str(c["family"]) for c in claims if c.get("family")} - set(FAMILIES))
    for name in [*families, *extra]:
        members = [c for c in claims if c.get("family") == name]
        if members:
            what = FAMILIES.get(name, "")
            lines += [
                f"### Secondary family “{name}” ({len(members)} comparison"
                + ("s" if len(members) > 1 else "")
                + ", Holm within it)",
                "",
                *([what[:1].upper() + what[1:] + ".", ""] if what else []),
                *(f"* {render_claim(c)}" for c in members),
                "",
            ]
    levels = [c for c in claims if not c.get("family")]
    if levels:
        lines += [
            "### Exploratory levels",
            "",
            "Levels (and any comparison outside the families): not tested, not adjusted, no "
            "direction words.",
            "",
            *(f"* {render_claim(c)}" for c in levels),
            "",
        ]
    return lines
