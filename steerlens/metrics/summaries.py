"""Summary tables of a sweep's tidy cells (``steerlens.experiments.sweep``): dose-response, selectivity,
gating. Every change is paired with the same prompt's unsteered cell (method ``"none"``), and
its interval is a two-stage bootstrap over users, then prompts within them (``n`` users; no
interval below ``steerlens.metrics.stats.MIN_CLUSTERS``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd

from steerlens.metrics.preference import utility_gain
from steerlens.metrics.stats import cluster_estimate
from steerlens.metrics.text import corpus_distinct_n

__all__ = [
    "degenerate_flags",
    "degenerate_share",
    "dose_response_table",
    "gating_table",
    "selectivity_table",
    "utility_gains",
]

BASELINE = "none"


def _baseline(cells: pd.DataFrame) -> pd.DataFrame:
    base = cells[cells["method"] == BASELINE].drop_duplicates("prompt_id").set_index("prompt_id")
    if base.empty:
        raise ValueError("the sweep has no unsteered cells (method 'none'): nothing to compare to")
    return base


def degenerate_flags(cells: pd.DataFrame) -> np.ndarray:
    """Per row: the output is degenerate or empty (a column the rows lack counts False)."""
    flag = np.zeros(len(cells), dtype=bool)
    for col in ("degenerate", "empty"):
        if col in cells:
            flag |= cells[col].fillna(False).to_numpy(dtype=bool)
    return flag


def degenerate_share(cells: pd.DataFrame) -> float:
    """The share of rows whose output is degenerate or empty (NaN without rows)."""
    return round(float(degenerate_flags(cells).mean()), 4) if len(cells) else math.nan


def utility_gains(cells: pd.DataFrame, base_utility: pd.Series) -> np.ndarray:
    """Per row, the utility gain over the same prompt's unsteered output (``base_utility``
    indexed by ``prompt_id``), floored at 0 for degenerate or empty rows
    (``steerlens.metrics.preference.utility_gain``)."""
    base = base_utility.loc[cells["prompt_id"]].to_numpy(float)
    return utility_gain(cells["utility"].to_numpy(float), base, degenerate_flags(cells))


def _clusters(group: pd.DataFrame) -> np.ndarray:
    """The unit each row belongs to: its user (rows of one user share them), else its prompt."""
    col = "user" if "user" in group else "prompt_id"
    return group[col].astype(str).to_numpy()


def _summarise(group: pd.DataFrame, base: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """The measures of one group of cells; intervals from a two-stage bootstrap (users, then
    prompts within them), ``n`` the number of users, withheld (NaN) below ``MIN_CLUSTERS``."""
    b = base.loc[group["prompt_id"]]
    units = _clusters(group)
    row: dict[str, Any] = {"n": len(set(units)), "n_prompts": int(group["prompt_id"].nunique())}
    boot: dict[str, Any] = {"n_boot": n_boot, "seed": seed}

    def put(prefix: str, low: str, high: str, est: Any) -> None:
        iv = est.interval or [math.nan, math.nan]
        row[prefix], row[low], row[high] = est.mean, iv[0], iv[1]

    if "abs_error" in group:
        err, berr = group["abs_error"].to_numpy(float), b["abs_error"].to_numpy(float)
        put("mae", "mae_low", "mae_high", cluster_estimate(err, units, **boot))
        put("delta_pct", "delta_low", "delta_high", cluster_estimate(err, units, base=berr, **boot))
    row["toxicity"] = float(group["toxicity"].mean())
    row["ppl"] = float(group["perplexity"].median())
    row["degenerate_share"] = float(degenerate_flags(group).mean())  # or empty
    row["empty_share"] = float(group["empty"].mean())
    row["distinct_2_corpus"] = corpus_distinct_n(group["generation"].fillna("").tolist())
    if "utility" in group:
        gain = utility_gains(group, base["utility"])
        put("utility_gain", "utility_low", "utility_high", cluster_estimate(gain, units, **boot))
    return row


def dose_response_table(
    cells: pd.DataFrame,
    *,
    gate: str = "all",
    dose: Literal["alpha", "kl_budget"] = "alpha",
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per method and α (α 0 = the unsteered cells): MAE with its interval, ΔMAE % vs
    unsteered with a paired interval, median perplexity, degenerate/empty shares, corpus
    distinct-2 and (simulated sets) the ground-truth utility gain.

    ``dose="kl_budget"`` groups a KL-calibrated sweep by budget instead (each user at their
    own α; the row's ``alpha`` is then the mean α over its cells)."""
    if dose not in ("alpha", "kl_budget"):
        raise ValueError(f"dose must be 'alpha' or 'kl_budget', got {dose!r}")
    base = _baseline(cells)
    steered = cells[(cells["method"] != BASELINE) & (cells["gate"] == gate)]
    calibrated = "kl_budget" in steered and not steered["kl_budget"].isna().any()
    if dose == "kl_budget" and not calibrated:
        raise ValueError("dose='kl_budget' needs a KL-calibrated sweep (every cell's kl_budget)")
    rows = []
    for method in sorted(steered["method"].unique()):
        part = steered[steered["method"] == method]
        prompts = part["prompt_id"].unique()
        base_rows = base.loc[prompts].reset_index()
        zero = {"kl_budget": 0.0} if dose == "kl_budget" else {}
        rows.append(
            {"method": method, **zero, "alpha": 0.0, **_summarise(base_rows, base, n_boot, seed)}
        )
        for value, group in part.groupby(dose):
            at: dict[str, float] = {dose: float(value)}
            if dose == "kl_budget":
                at["alpha"] = float(group["alpha"].mean())
            rows.append({"method": method, **at, **_summarise(group, base, n_boot, seed)})
    return pd.DataFrame(rows)


def _gate_order(gate: str) -> tuple[int, float]:
    if gate.startswith("first:"):
        return (0, float(gate.split(":")[1]))
    return ({"prefill": -1, "generated": 1, "all": 2}.get(gate, 3), 0.0)


def gating_table(
    cells: pd.DataFrame, *, method: str, alpha: float, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Per gate at one (method, α): the measures of ``dose_response_table``, with ``k`` the
    number of steered generated tokens for ``first:K`` (0 for ``prefill``, NaN otherwise)."""
    base = _baseline(cells)
    part = cells[(cells["method"] == method) & np.isclose(cells["alpha"], alpha)]
    part = part.drop_duplicates("key")
    if part.empty:
        raise ValueError(f"no cells of method {method!r} at alpha {alpha:g}")
    rows = []
    for gate in sorted(part["gate"].unique(), key=_gate_order):
        k = float(gate.split(":")[1]) if gate.startswith("first:") else math.nan
        if gate == "prefill":
            k = 0.0
        rows.append(
            {
                "gate": gate,
                "k": k,
                **_summarise(part[part["gate"] == gate], base, n_boot, seed),
            }
        )
    return pd.DataFrame(rows)


def selectivity_table(cells: pd.DataFrame, *, method: str, gate: str = "all") -> pd.DataFrame:
    """% change of MAE vs unsteered per prompt category (rows) and α (columns), the study's
    selectivity table; negative = closer to the users' preferred toxicity."""
    base = _baseline(cells)
    part = cells[(cells["method"] == method) & (cells["gate"] == gate)]
    if part.empty:
        raise ValueError(f"no cells of method {method!r} with gate {gate!r}")
    part = part.assign(base_error=base.loc[part["prompt_id"], "abs_error"].to_numpy())
    grouped = part.groupby(["category", "alpha"])[["abs_error", "base_error"]].mean()
    pct = 100 * (grouped["abs_error"] / grouped["base_error"].replace(0, np.nan) - 1)
    return pct.unstack("alpha").sort_index()
