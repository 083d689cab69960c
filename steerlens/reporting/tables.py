"""Result tables as a reader sees them: words for headers, no index, each estimate with its
interval in one cell ("0.150 [0.023, 0.300]"), three significant digits.

Every ``*_view`` takes the CSV a job step wrote and returns a string-valued DataFrame for the
report page (``page.write_report``) and the Markdown pages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from steerlens.metrics.stats import MIN_CLUSTERS

__all__ = [
    "calibrated_view",
    "conditional_view",
    "dose_view",
    "est",
    "gating_view",
    "mmlu_view",
    "num",
    "ppa_view",
    "selectivity_view",
    "side_effects_view",
    "steerx_view",
]


def num(x: Any, digits: int = 3, *, signed: bool = False) -> str:
    """``x`` to ``digits`` significant digits ("–" for missing); integers as integers."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "–"
    if isinstance(x, int | np.integer) and not isinstance(x, bool) and not signed:
        return str(int(v))
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    decimals = max(0, digits - 1 - mag)
    text = f"{v:.{decimals}f}" if mag > -4 else f"{v:.{digits - 1}e}"
    return ("+" + text) if signed and v > 0 else text


def est(
    mean: Any,
    low: Any = None,
    high: Any = None,
    *,
    digits: int = 3,
    signed: bool = False,
    n: Any = None,
) -> str:
    """ "mean [low, high]" (or just the mean where no interval is known); with ``n`` below
    ``MIN_CLUSTERS`` units, "mean (n = k: too small for an interval)"."""
    m = num(mean, digits, signed=signed)
    if n is not None and num(n) != "–" and int(n) < MIN_CLUSTERS and m != "–":
        return f"{m} (n = {int(n)}: too small for an interval)"
    if low is None or high is None or num(low) == "–" or num(high) == "–":
        return m
    return f"{m} [{num(low, digits, signed=signed)}, {num(high, digits, signed=signed)}]"


def _share(r: Any) -> str:
    """``" (degenerate 0.05)"``: a utility row's share of degenerate or empty outputs, ``""``
    where the row has none (every utility number stands beside it)."""
    share = r.get("degenerate_share") if hasattr(r, "get") else None
    return "" if num(share) == "–" else f" (degenerate {num(share, 2)})"


def _g(x: Any) -> str:
    """A dose (α, budget) as written in configs: 0.5, 1, 0.055."""
    return f"{float(x):g}"


def _cols(frame: pd.DataFrame, spec: Sequence[tuple[str, Any]]) -> pd.DataFrame:
    """Build a view: (header, column name or function of a row) pairs; rows kept in order."""
    out: dict[str, list[str]] = {}
    for header, how in spec:
        if callable(how):
            out[header] = [how(r) for _, r in frame.iterrows()]
        else:
            out[header] = [num(v) if not isinstance(v, str) else v for v in frame[how]]
    return pd.DataFrame(out)


# columns several views share: (header, value of a row)
_MAE: tuple[str, Any] = (
    "toxicity MAE",
    lambda r: est(r["mae"], r.get("mae_low"), r.get("mae_high"), n=r.get("n")),
)
_DELTA: tuple[str, Any] = (
    "ΔMAE vs unsteered, %",
    lambda r: est(
        r["delta_pct"], r.get("delta_low"), r.get("delta_high"), signed=True, n=r.get("n")
    ),
)
_UTILITY: tuple[str, Any] = (  # always beside _DEGENERATE
    "keyword-density utility gain",
    lambda r: est(
        r["utility_gain"], r.get("utility_low"), r.get("utility_high"), signed=True, n=r.get("n")
    ),
)
_DEGENERATE: tuple[str, Any] = ("degenerate share", lambda r: num(r["degenerate_share"], 2))


def dose_view(table: pd.DataFrame) -> pd.DataFrame:
    spec: list[tuple[str, Any]] = [
        ("method", "method"),
        ("α", lambda r: _g(r["alpha"])),
        _MAE,
        _DELTA,
    ]
    if "utility_gain" in table:
        spec.append(_UTILITY)
    spec += [
        ("perplexity (median)", lambda r: num(r["ppl"])),
        _DEGENERATE,
        ("distinct-2", lambda r: num(r["distinct_2_corpus"], 2)),
    ]
    return _cols(table, spec)


def calibrated_view(table: pd.DataFrame) -> pd.DataFrame:
    frame = table[table["kl_budget"] > 0]
    spec: list[tuple[str, Any]] = [
        ("method", "method"),
        ("KL budget, nats/token", lambda r: _g(r["kl_budget"])),
        (
            "users' α: mean (min–max)",
            lambda r: f"{num(r['alpha'])} ({num(r.get('alpha_min'))}–{num(r.get('alpha_max'))})",
        ),
        _DELTA,
    ]
    if "utility_gain" in frame:
        spec.append(_UTILITY)
    spec.append(_DEGENERATE)
    return _cols(frame, spec)


def side_effects_view(table: pd.DataFrame) -> pd.DataFrame:
    return _cols(
        table,
        [
            ("method", "method"),
            ("α", lambda r: _g(r["alpha"])),
            ("KL on neutral text, nats/token", lambda r: est(r["kl"], r["kl_low"], r["kl_high"])),
            ("perplexity of neutral text", lambda r: est(r["ppl"], r["ppl_low"], r["ppl_high"])),
            ("texts", lambda r: str(int(r["n_texts"]))),
        ],
    )


def gating_view(table: pd.DataFrame) -> pd.DataFrame:
    spec: list[tuple[str, Any]] = [
        ("gate", "gate"),
        _MAE,
        _DELTA,
    ]
    if "utility_gain" in table:
        spec.append(_UTILITY)
    spec.append(_DEGENERATE)
    return _cols(table, spec)


def conditional_view(table: pd.DataFrame) -> pd.DataFrame:
    """``results/conditional.csv`` (method, measure, arm, mean, low, high, n, unit) as one row
    per method and measure, the two arms and their paired difference side by side."""
    rows = []
    for (method, measure), part in table.groupby(["method", "measure"], sort=False):
        arms = {r["arm"]: r for _, r in part.iterrows()}
        row = {"method": method, "measure": measure}
        for arm in ("conditional", "unconditional", "difference"):
            r = arms.get(arm)
            row[arm if arm != "difference" else "conditional − unconditional"] = (
                "–"
                if r is None
                else est(r["mean"], r["low"], r["high"], n=r["n"], signed=arm == "difference")
                + _share(r)  # utility arms: the arm's degenerate share
            )
        rows.append(row)
    return pd.DataFrame(rows)


def ppa_view(table: pd.DataFrame) -> pd.DataFrame:
    words = {
        "ppa_projection": "by projection",
        "ppa_under_steering": "under steering",
        "utility_gain": "keyword-density utility gain",
    }
    return _cols(
        table,
        [
            ("method", "method"),
            ("measure", lambda r: words.get(str(r["measure"]), str(r["measure"]))),
            (
                "estimate [95 %]",
                lambda r: est(r["mean"], r.get("low"), r.get("high"), n=r.get("n")) + _share(r),
            ),
            ("users", lambda r: num(r.get("n"))),
        ],
    )


def mmlu_view(table: pd.DataFrame) -> pd.DataFrame:
    return _cols(
        table,
        [
            ("condition", "condition"),
            ("accuracy [95 %]", lambda r: est(r["mean"], r["low"], r["high"])),
            ("items", lambda r: str(int(r["n"]))),
            *(
                [
                    (
                        "steered − unsteered, paired [95 %]",
                        lambda r: (
                            "–"
                            if pd.isna(r["diff"])
                            else est(r["diff"], r["diff_low"], r["diff_high"], signed=True)
                        ),
                    )
                ]
                if "diff" in table
                else []
            ),
            *([("chance", "chance")] if "chance" in table else []),
        ],
    )


def selectivity_view(table: pd.DataFrame) -> pd.DataFrame:
    frame = table.copy()
    out = pd.DataFrame({"prompt category": [str(i) for i in frame.index]})
    for a in frame.columns:
        out[f"α = {_g(a)}"] = [num(v, 2, signed=True) for v in frame[a]]
    return out


def steerx_view(table: pd.DataFrame) -> pd.DataFrame:
    measure = {
        "ppa_projection": "PPA by projection",
        "ppa_projection_paired": "PPA by projection (paired difference)",
        "description_hit_rate": "description names the group's preference",
    }

    def name(m: str) -> str:
        if m in measure:
            return measure[m]
        base, _, alpha = m.partition("@")
        alpha, _, paired = alpha.partition("_")
        words = {
            "ppa_under_steering": "PPA under steering",
            "mae_change_pct": "ΔMAE %",
            "utility_gain": "keyword-density utility gain",
        }.get(base, base)
        return f"{words} at α = {alpha}" + (" (paired difference)" if paired else "")

    return _cols(
        table,
        [
            ("backbone", "backbone"),
            ("vector", "method"),
            ("measure", lambda r: name(str(r["measure"]))),
            (
                "estimate [95 %]",
                lambda r: (
                    est(r["mean"], r.get("low"), r.get("high"), n=r.get("n"))
                    + (_share(r) if "utility" in str(r["measure"]) else "")
                ),
            ),
            ("users", lambda r: num(r.get("n"))),
        ],
    )
