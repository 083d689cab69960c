"""The few findings that matter, rendered from the claims ``steerlens.experiments.headline``
builds from the summary's estimates (the rule ``summary["headline"]`` was written with): each
claim's words were chosen by its paired interval, and each sentence carries its estimate,
interval and n — or "n too small"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from steerlens.experiments.headline import build_headline
from steerlens.reporting.tables import est, num

__all__ = ["headline", "render_claim"]


def render_claim(c: Mapping[str, Any]) -> str:
    """ "claim: estimate [low, high] (n = k units)", or "(n = k units: n too small for an
    interval)" where the interval was withheld."""
    n, unit = c.get("n"), c.get("unit", "")
    units = f"{unit}s" if unit and not str(unit).endswith("s") else str(unit)
    said = f"(n = {n} {units})" in str(c.get("claim"))  # "no difference detected (n = …)"
    iv = c.get("interval")
    truth = f"; truth: {c['truth']}" if c.get("truth") else ""
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


def headline(s: Mapping[str, Any]) -> list[str]:
    """One sentence per claim the summary supports (a partial run gives fewer), built anew
    from the summary's estimates (a step run on its own, e.g. by an analysis script, updates
    the estimates; the stored ``summary["headline"]`` is the demo's copy of the same rule)."""
    return [render_claim(c) for c in build_headline(s)]
