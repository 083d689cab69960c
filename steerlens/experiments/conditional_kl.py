"""The conditional step's equal side effect: the α grid whose conditional mean KL on neutral
texts stays within the unconditional KL at the operating α (chosen on one half of the texts,
reported on the other), the rows it runs (only the texts the condition fires on), the swept
non-degenerate range it may search, and the held-out KL ratio that keeps the words "at equal
KL" (see steerlens.experiments.conditional)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steerlens.core.conditions import Condition, split_gate
from steerlens.core.models import HookedModel
from steerlens.core.vectors import SteeringVector
from steerlens.experiments.splits import Split, record_selection
from steerlens.metrics.token_truth import text_id
from steerlens.run.divergence import reference_logprobs, steering_divergence

__all__ = [
    "DEGENERATE_MAX",
    "KL_FACTORS",
    "KL_RATIO_BAND",
    "MIN_NEUTRAL_SELECT",
    "condition_fires",
    "conditional_kl",
    "equal_kl_alpha",
    "heldout_kl_ratio",
    "kl_matched",
    "kl_vectors",
    "neutral_kl_rows",
    "nondegenerate_limit",
]

KL_FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0)
"""The α grid of the equal-KL search, as multiples of the operating α."""


MIN_NEUTRAL_SELECT = 8
"""The equal-KL α is chosen on at least this many neutral texts (and reported on as many)."""


DEGENERATE_MAX = 0.5
"""An α whose unconditional generations are more than this share degenerate (or any α above
such a swept α) is out of the equal-KL search."""


KL_RATIO_BAND = (0.9, 1.1)
"""The held-out KL ratio (conditional over unconditional) that keeps the words "at equal KL"."""


def condition_fires(
    model: HookedModel,
    condition: Condition,
    vector: SteeringVector,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    reference: Sequence[Any] | None = None,
) -> list[bool]:
    """Per text, whether ``condition`` steers it. The condition is read at or before the
    earliest steered point, so its decision is the text's alone (the same under every vector
    and α); a soft condition steers every text in part. ``reference``: the texts' unsteered
    log-probabilities, when the caller has them (the unsteered pass is not run again)."""
    _, cond = split_gate(condition)  # a Condition, or one joined with a position gate
    if cond is None or cond.soft is not None:
        return [True] * len(texts)
    out = steering_divergence(
        model, texts, vector, 1.0, gate=condition, batch_size=batch_size, reference=reference
    )
    return [d.steered is not False for d in out]


def conditional_kl(
    model: HookedModel,
    vectors: Sequence[SteeringVector],
    condition: Condition,
    texts: Sequence[str],
    alpha: float,
    fires: Sequence[bool],
    reference: Sequence[Any],
    *,
    batch_size: int = 16,
) -> list[tuple[float, bool]]:
    """Per (vector, text) row, vector-major: the KL of conditional steering at ``alpha`` and
    whether it steered. Only the texts the condition ``fires`` on run; a text it leaves
    unsteered is the unsteered model there (KL 0), so it is not run again per vector."""
    n = len(texts)
    rows = [i for i in range(len(vectors) * n) if fires[i % n]]
    got = (
        steering_divergence(
            model,
            [texts[i % n] for i in rows],
            [vectors[i // n] for i in rows],
            alpha,
            gate=condition,
            reference=[reference[i % n] for i in rows],
            batch_size=batch_size,
        )
        if rows
        else []
    )
    out = [(0.0, False)] * (len(vectors) * n)
    for i, d in zip(rows, got, strict=True):
        out[i] = (d.kl, d.steered is not False)
    return out


def _unconditional_kl(
    model: HookedModel,
    vectors: Sequence[SteeringVector],
    texts: Sequence[str],
    alpha: float,
    reference: Sequence[Any],
    batch_size: int,
) -> list[float]:
    """Per (vector, text) row, vector-major: the KL of steering every text at ``alpha``."""
    out = steering_divergence(
        model,
        [t for _ in vectors for t in texts],
        [v for v in vectors for _ in texts],
        alpha,
        batch_size=batch_size,
        reference=list(reference) * len(vectors),
    )
    return [d.kl for d in out]


def equal_kl_alpha(
    model: HookedModel,
    vectors: SteeringVector | Sequence[SteeringVector],
    condition: Condition,
    texts: Sequence[str],
    alpha: float,
    *,
    factors: Sequence[float] = KL_FACTORS,
    limit: float = float("inf"),
    batch_size: int = 16,
    reference: Sequence[Any] | None = None,
    fires: Sequence[bool] | None = None,
) -> tuple[float, pd.DataFrame]:
    """The largest ``alpha * factor`` (at most ``limit``, and ``alpha`` itself always) whose
    conditional mean KL on ``texts`` (every text under every one of ``vectors``: a method's
    users) stays within the unconditional mean KL at ``alpha``; and the search's table (α,
    arm, mean KL, share steered, ``admissible``: within ``limit``, else not run and KL empty;
    ``capped``: the largest admissible α was chosen, so KL may stay below the target).
    ``reference`` / ``fires``: the texts' unsteered log-probabilities and the condition's
    decisions (``condition_fires``), when the caller has them."""
    vecs = [vectors] if isinstance(vectors, SteeringVector) else list(vectors)
    ref = list(reference or reference_logprobs(model, texts, batch_size=batch_size))
    if fires is None:
        fires = condition_fires(
            model, condition, vecs[0], texts, batch_size=batch_size, reference=ref
        )
    unconditional = _unconditional_kl(model, vecs, texts, alpha, ref, batch_size)
    target = float(np.mean(unconditional))
    rows: list[dict[str, Any]] = [
        {"alpha": alpha, "arm": "unconditional", "kl": target, "steered": 1.0, "admissible": True}
    ]
    grid = sorted({alpha, *(alpha * f for f in factors)})
    top = max([a for a in grid if a <= limit * (1 + 1e-9)] + [alpha])
    chosen = alpha
    for a in grid:
        if a > top * (1 + 1e-9):  # above the swept, non-degenerate range: not run
            rows.append({"alpha": a, "arm": "conditional", "kl": np.nan, "admissible": False})
            continue
        got = conditional_kl(model, vecs, condition, texts, a, fires, ref, batch_size=batch_size)
        kl = float(np.mean([k for k, _ in got]))
        rows.append(
            {
                "alpha": a,
                "arm": "conditional",
                "kl": kl,
                "steered": float(np.mean([s for _, s in got])),
                "admissible": True,
            }
        )
        if kl <= target * (1 + 1e-9):
            chosen = max(chosen, a)
    table = pd.DataFrame(rows)
    table["chosen"] = (table["arm"] == "conditional") & np.isclose(table["alpha"], chosen)
    table["capped"] = bool(np.isclose(chosen, top))
    return chosen, table


def kl_vectors(entry: Any, users: Sequence[str], limit: int = 8) -> list[SteeringVector]:
    """A method's vectors for the neutral-text KL: its one vector, or the first ``limit`` of
    ``users`` (sorted) that have one."""
    if isinstance(entry, SteeringVector):
        return [entry]
    return [entry[u] for u in sorted(users) if u in entry][:limit]


def nondegenerate_limit(
    dose: pd.DataFrame, select: Sequence[str], method: str, alphas: Sequence[float]
) -> tuple[float, dict[str, float]]:
    """The top of ``method``'s swept, non-degenerate α range: the largest swept α such that
    no swept α up to it has more than ``DEGENERATE_MAX`` of the method's unconditional
    generations degenerate (the dose sweep's ``degenerate`` column, on the ``select`` prompts
    only); and each swept α's degenerate share. 0.0 where the smallest nonzero α already is
    degenerate; the largest swept α where nothing is (or no cell says)."""
    part = dose[
        (dose["method"] == method)
        & (dose["gate"] == "all")
        & dose["prompt_id"].isin(list(select))
        & (dose["alpha"] > 0)
    ]
    shares: dict[str, float] = {}
    if "degenerate" in part:
        by = part.groupby("alpha")["degenerate"].mean()
        shares = {f"{a:g}": round(float(v), 5) for a, v in by.items()}
    limit = 0.0
    for a in sorted(float(x) for x in alphas if x > 0):
        if shares.get(f"{a:g}", 0.0) > DEGENERATE_MAX:
            break
        limit = a
    return limit, shares


def heldout_kl_ratio(rows: pd.DataFrame) -> float | None:
    """Mean KL of the conditional arm at the equal-KL α over that of the unconditional arm,
    on the report half of the neutral texts (``neutral_kl_rows``'s rows); None where the
    unconditional KL is 0 or either arm is missing."""
    by = rows.groupby("arm")["kl"].mean()
    if "conditional_equal_kl" not in by or "unconditional" not in by:
        return None
    if not np.isfinite(by["unconditional"]) or by["unconditional"] <= 0:
        return None
    return float(by["conditional_equal_kl"] / by["unconditional"])


def kl_matched(ratio: float | None, band: tuple[float, float] = KL_RATIO_BAND) -> bool:
    """Whether a held-out KL ratio keeps the words "at equal KL": it lies within ``band``."""
    return ratio is not None and bool(np.isfinite(ratio)) and band[0] <= ratio <= band[1]


def neutral_kl_rows(
    model: HookedModel,
    vectors: Sequence[SteeringVector],
    condition: Condition,
    texts: Sequence[str],
    alpha: float,
    alpha_kl: float,
    *,
    batch_size: int = 16,
    reference: Sequence[Any] | None = None,
    fires: Sequence[bool] | None = None,
) -> pd.DataFrame:
    """Per text (``t0``, ``t1``, ...) and vector (``v0``, ...): the KL of unconditional
    steering at ``alpha`` and of conditional steering at ``alpha`` and ``alpha_kl``, and
    whether the condition steered it (``reference`` / ``fires`` as in ``equal_kl_alpha``)."""
    ref = list(reference or reference_logprobs(model, texts, batch_size=batch_size))
    if fires is None:
        fires = condition_fires(
            model, condition, vectors[0], texts, batch_size=batch_size, reference=ref
        )
    unconditional = _unconditional_kl(model, vectors, texts, alpha, ref, batch_size)
    runs = {
        "unconditional": [(kl, True) for kl in unconditional],
        **{
            arm: conditional_kl(
                model, vectors, condition, texts, a, fires, ref, batch_size=batch_size
            )
            for arm, a in (("conditional", alpha), ("conditional_equal_kl", alpha_kl))
        },
    }
    n = len(texts)
    return pd.DataFrame(
        [
            {"text": f"t{i % n}", "vector": f"v{i // n}", "arm": arm, "kl": kl, "steered": on}
            for arm, rows in runs.items()
            for i, (kl, on) in enumerate(rows)
        ]
    )


def _equal_kl(
    model: HookedModel,
    vectors: Mapping[str, Any],
    methods: Sequence[str],
    users: Sequence[str],
    cond: Condition,
    neutral: Sequence[str],
    alpha: float,
    results: Path,
    batch_size: int,
    limits: Mapping[str, tuple[float, Any]] | None = None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Per method, its equal-KL α (on the selection half of the neutral texts, its users'
    vectors; at most its ``limits`` α) and the KL rows on the report half; writes both
    tables."""
    kl_select, kl_report = _halves(neutral)
    if len(kl_select) < MIN_NEUTRAL_SELECT:
        raise ValueError(
            f"the equal-KL α needs >= {MIN_NEUTRAL_SELECT} selection neutral texts (half of "
            f"the neutral texts), got {len(kl_select)} of {len(neutral)}"
        )
    alpha_kl: dict[str, float] = {}
    searches, rows = [], []
    bs = batch_size
    # each half's unsteered pass and the condition's decisions, once for every method
    probe = kl_vectors(vectors[methods[0]], users)[0]  # any vector: decisions are the text's
    ref = {
        h: reference_logprobs(model, t, batch_size=bs)
        for h, t in (("s", kl_select), ("r", kl_report))
    }
    fires = {
        h: condition_fires(model, cond, probe, t, batch_size=bs, reference=ref[h])
        for h, t in (("s", kl_select), ("r", kl_report))
    }
    for m in methods:
        vecs = kl_vectors(vectors[m], users)
        lim = (limits or {}).get(m, (float("inf"), None))[0]
        alpha_kl[m], search = equal_kl_alpha(
            model,
            vecs,
            cond,
            kl_select,
            alpha,
            limit=lim,
            batch_size=bs,
            reference=ref["s"],
            fires=fires["s"],
        )
        searches.append(search.assign(method=m))
        kl = neutral_kl_rows(
            model,
            vecs,
            cond,
            kl_report,
            alpha,
            alpha_kl[m],
            batch_size=bs,
            reference=ref["r"],
            fires=fires["r"],
        )
        rows.append(kl.assign(method=m))
    pd.concat(searches, ignore_index=True).to_csv(
        results / "conditional_kl_search.csv", index=False
    )
    kl_rows = pd.concat(rows, ignore_index=True)
    kl_rows.to_csv(results / "conditional_neutral_kl.csv", index=False)
    _record_equal_kl(results, kl_select, kl_report, alpha, alpha_kl)
    return alpha_kl, kl_rows


def _record_equal_kl(
    results: Path,
    select: Sequence[str],
    report: Sequence[str],
    alpha: float,
    alpha_kl: Mapping[str, float],
) -> None:
    record_selection(
        results,
        "conditional_equal_kl_alpha",
        Split([text_id(t) for t in select], [text_id(t) for t in report], "text"),
        dict(alpha_kl),
        criterion="per method, the largest α of the grid whose conditional mean KL on the "
        f"selection neutral texts (its report users' vectors) stays within its unconditional "
        f"KL at α {alpha:g}; the grid only up to the method's largest swept α with no swept α "
        f"up to it over {DEGENERATE_MAX:g} degenerate (its unconditional generations on the "
        "selection prompts), and the operating α always",
        grid=[round(alpha * f, 6) for f in KL_FACTORS],
    )


def _halves(texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """The neutral texts' selection half (the equal-KL α) and report half (the KL)."""
    half = len(texts) // 2
    return list(texts[:half]), list(texts[half:])
