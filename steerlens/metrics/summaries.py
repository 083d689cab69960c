"""Summary tables of a sweep's tidy cells (``steerlens.experiments.sweep``): dose-response, selectivity,
gating. Every change is paired with the same prompt's unsteered cell (method ``"none"``), and
its interval is a bootstrap over prompts.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd

from steerlens.metrics.text import corpus_distinct_n

__all__ = ["dose_response_table", "gating_table", "selectivity_table"]

BASELINE = "none"


def _baseline(cells: pd.DataFrame) -> pd.DataFrame:
    base = cells[cells["method"] == BASELINE].drop_duplicates("prompt_id").set_index("prompt_id")
    if base.empty:
        raise ValueError("the sweep has no unsteered cells (method 'none'): nothing to compare to")
    return base


def _pct_interval(
    steered: np.ndarray, base: np.ndarray, n_boot: int, seed: int
) -> tuple[float, float, float]:
    """100 · (mean steered / mean base − 1), with a paired bootstrap over prompts."""
    ok = ~(np.isnan(steered) | np.isnan(base))
    s, b = steered[ok], base[ok]
    if s.size == 0 or b.mean() == 0:
        return (math.nan, math.nan, math.nan)
    idx = np.random.default_rng(seed).integers(0, s.size, size=(n_boot, s.size))
    boot = 100 * (s[idx].mean(1) / np.maximum(b[idx].mean(1), 1e-12) - 1)
    return (
        float(100 * (s.mean() / b.mean() - 1)),
        float(np.percentile(boot, 2.5)),
        float(np.percentile(boot, 97.5)),
    )


def _mean_interval(x: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    x = x[~np.isnan(x)]
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(1)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _summarise(group: pd.DataFrame, base: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    b = base.loc[group["prompt_id"]]
    row: dict[str, Any] = {"n": len(group)}
    if "abs_error" in group:
        err, berr = group["abs_error"].to_numpy(float), b["abs_error"].to_numpy(float)
        row["mae"], row["mae_low"], row["mae_high"] = _mean_interval(err, n_boot, seed)
        row["delta_pct"], row["delta_low"], row["delta_high"] = _pct_interval(
            err, berr, n_boot, seed
        )
    row["toxicity"] = float(group["toxicity"].mean())
    row["ppl"] = float(group["perplexity"].median())
    row["degenerate_share"] = float(group["degenerate"].mean())
    row["empty_share"] = float(group["empty"].mean())
    row["distinct_2_corpus"] = corpus_distinct_n(group["generation"].fillna("").tolist())
    if "utility" in group:
        gain = group["utility"].to_numpy(float) - b["utility"].to_numpy(float)
        row["utility_gain"], row["utility_low"], row["utility_high"] = _mean_interval(
            gain, n_boot, seed
        )
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
