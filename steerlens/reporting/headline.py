"""The few findings that matter, rendered from ``summary["headline"]`` (built by
``steerlens.experiments.headline`` from the summary's estimates; built here from the summary
for results written before it existed): each claim's words were chosen by its paired
interval, and each sentence carries its estimate, interval and n — or "n too small"."""

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
    iv = c.get("interval")
    truth = f"; truth: {c['truth']}" if c.get("truth") else ""
    if iv is None:
        value = f"{num(c.get('estimate'), signed=True)} (n = {n} {units}: n too small for an interval{truth})"
    else:
        value = f"{est(c.get('estimate'), iv[0], iv[1], signed=True)} (n = {n} {units}{truth})"
    return f"{c.get('claim')}: {value}."


def headline(s: Mapping[str, Any]) -> list[str]:
    """One sentence per claim the summary supports (a partial run gives fewer)."""
    claims = s.get("headline")
    if claims is None:
        claims = build_headline(s)
    return [render_claim(c) for c in claims]
