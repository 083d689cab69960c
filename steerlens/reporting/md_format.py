"""Small Markdown formatters the result pages share: numbers, estimates with their intervals,
tables and cells (see ``steerlens.reporting.markdown``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["md_cell", "md_est", "md_num", "md_row_cell", "md_share", "md_table"]


def md_num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    x = float(x)
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def md_est(mean: Any, interval: Sequence[Any] | None, digits: int = 3) -> str:
    """``0.15 [0.023, 0.3]``: an estimate with its interval in one cell."""
    if mean is None:
        return "–"
    if not interval:
        return md_num(mean, digits)
    return f"{md_num(mean, digits)} [{md_num(interval[0], digits)}, {md_num(interval[1], digits)}]"


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


def md_cell(entry: Mapping[str, Any] | None) -> str:
    """A summary estimate ``{"mean", "interval", "n", "unit"}`` in one cell; "n too small"
    where the interval was withheld."""
    if not entry or entry.get("mean") is None:
        return "–"
    if entry.get("interval") is None and entry.get("n") is not None:
        n = int(entry["n"])
        too_small = f"{md_num(entry['mean'])} (n = {n} {entry.get('unit', '')}s: n too small)"
        return too_small + md_share(entry)
    count = f" (n = {entry['n']})" if entry.get("n") is not None else ""
    return md_est(entry.get("mean"), entry.get("interval")) + count + md_share(entry)


def md_share(entry: Mapping[str, Any]) -> str:
    """A utility estimate's degenerate-or-empty share(s), ``""`` where it has none: an arm's
    share, or a difference's two arms' (``{arm: share}``)."""
    share = entry.get("degenerate_share")
    if share is None:
        return ""
    if isinstance(share, Mapping):
        return "; degenerate " + ", ".join(f"{k} {md_num(v, 2)}" for k, v in share.items())
    return f"; degenerate {md_num(share, 2)}"


def md_row_cell(r: Mapping[str, Any], col: str, lo: str, hi: str) -> str:
    """A table row's estimate: interval unless withheld (NaN below MIN_CLUSTERS users)."""
    if r.get(lo) is None or r.get(hi) is None:
        return f"{md_num(r.get(col))} (n = {r.get('n')}: n too small)"
    return md_est(r.get(col), [r.get(lo), r.get(hi)])
