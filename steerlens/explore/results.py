"""The results browser: a run's report figures, live, and the generations behind a point.

``result_figures`` gives every figure of the run's report (``reporting.study.report_figures``;
for a sweep's own folder, its dose-response and selectivity from the cells);
``point_generations`` turns a plotly click on a dose-response, KL-calibrated, gating,
selectivity or conditional figure into the cells behind that point (each steered generation
beside its prompt and the unsteered reply, on the prompts the figure summarises);
``cell_state`` turns one of those rows into a workbench state ("rerun this cell live").
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from steerlens.metrics.summaries import BASELINE
from steerlens.reporting import plots
from steerlens.reporting.study import report_figures

from .sources import Sources
from .state import ExploreState

__all__ = ["CLICKABLE", "cell_state", "point_generations", "result_figures"]

CLICKABLE = ("dose_response", "calibrated", "gating", "selectivity", "conditional")
"""The figures whose points open their generations."""


def result_figures(src: Sources) -> dict[str, tuple[str, go.Figure]]:
    """``{stem: (heading, figure)}``: the report's figures of a study, or a sweep's
    dose-response and selectivity (drawn from its cells); empty without a run."""
    if src.run is None:
        return {}
    if (src.run / "summary.json").exists():
        return report_figures(src.run.parent)
    cells = src.cells("dose")
    if cells is None or cells.empty:
        return {}
    figs = {"dose_response": ("Dose-response", plots.dose_response(cells))}
    if "category" in cells and (cells["method"] == "population").any():
        gate = str(cells["gate"].iloc[0])
        figs["selectivity"] = (
            "Selectivity (population vector)",
            plots.selectivity_heatmap(cells, method="population", gate=gate),
        )
    return figs


def _all_cells(src: Sources, steps: tuple[str, ...]) -> pd.DataFrame:
    parts = [c for s in steps if (c := src.cells(s)) is not None]
    if not parts:
        raise ValueError(f"this run has no cells for {', '.join(steps)}")
    return pd.concat(parts, ignore_index=True)


def _near(values: pd.Series, x: float) -> pd.Series:
    return (values.astype(float) - x).abs() <= 1e-6 * max(1.0, abs(x))


def _trace(fig: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    traces = fig.get("data", [])
    curve = int(point.get("curveNumber", 0))
    return traces[curve] if 0 <= curve < len(traces) else {}


def point_generations(
    src: Sources, figure: str, fig: dict[str, Any], point: dict[str, Any]
) -> tuple[str, pd.DataFrame]:
    """The cells behind one clicked point: a title and one row per steered generation
    (``user``, ``method``, ``alpha``, ``gate``, ``category``, ``prompt``, ``unsteered``,
    ``generation``, and ``utility`` / ``degenerate`` where measured). A study's figures
    summarise its report prompts (``results/splits.json``): so do the rows.

    Args:
        figure: the figure's stem (``CLICKABLE``).
        fig: that figure as the page holds it (``figure.to_dict()``), to name the trace.
        point: one entry of plotly's ``clickData["points"]``.
    """
    trace = _trace(fig, point)
    name = str(trace.get("name", ""))
    x: Any = point.get("x")
    summary = src.summary()
    if figure == "dose_response":
        cells = _all_cells(src, ("dose",))
        pick = (cells["method"] == name) & _near(cells["alpha"], float(x))
        pick &= cells["gate"] == cells["gate"].iloc[0]
        title = f"{name} at α = {float(x):g}"
    elif figure == "calibrated":
        cells = _all_cells(src, ("calibrated", "dose"))
        if "kl_budget" not in cells:
            raise ValueError("this run's calibrated cells carry no KL budget")
        pick = (cells["method"] == name) & _near(cells["kl_budget"].fillna(-1.0), float(x))
        title = f"{name} at KL budget {float(x):g}"
    elif figure == "gating":
        cells = _all_cells(src, ("gating", "dose"))
        gate = name.removeprefix("gate: ") if name.startswith("gate: ") else f"first:{round(x)}"
        pick = (cells["method"] == "population") & (cells["gate"] == gate)
        if summary.get("operating_alpha") is not None:
            pick &= _near(cells["alpha"], float(summary["operating_alpha"]))
        title = f"population, gate {gate}"
    elif figure == "selectivity":
        cells = _all_cells(src, ("dose",))
        alpha = float(str(x).removeprefix("α="))
        category = str(point.get("y"))
        pick = (cells["method"] == "population") & _near(cells["alpha"], alpha)
        pick &= (cells["category"] == category) & (cells["gate"] == cells["gate"].iloc[0])
        title = f"population at α = {alpha:g} on {category} prompts"
    elif figure == "conditional":
        cells, pick, title = _conditional(src, trace, name, float(x))
    else:
        raise ValueError(f"no generations behind the {figure!r} figure")
    chosen = cells[pick]
    report = src.report_prompts()
    if report is not None and summary:
        chosen = chosen[chosen["prompt_id"].isin(report)]
        title += " · report prompts"
    return title, _with_unsteered(src, cells, chosen)


def _conditional(
    src: Sources, trace: dict[str, Any], arm: str, alpha: float
) -> tuple[pd.DataFrame, pd.Series, str]:
    """The conditional figure: one panel per prompt category (sorted), a line per arm; the
    unconditional arm is the dose step's population vector at the same α."""
    dose = _all_cells(src, ("dose",))
    axis = str(trace.get("xaxis", "x"))
    panel = int(axis[1:] or 1) - 1
    categories = sorted(dose["category"].dropna().unique())
    if not 0 <= panel < len(categories):
        raise ValueError("this point's panel names no prompt category")
    category = categories[panel]
    if arm == "conditional":
        source = _all_cells(src, ("conditional",))
    elif arm == "unconditional":
        source = dose[dose["gate"] == "all"]
    else:
        raise ValueError(f"no generations behind the line {arm!r}")
    keep = (source["method"] == "population") & (source["category"] == category)
    keep &= _near(source["alpha"], alpha)
    cells = pd.concat([source[keep], dose[dose["method"] == BASELINE]], ignore_index=True)
    return cells, cells["method"] != BASELINE, f"{arm} at α = {alpha:g} on {category} prompts"


def _with_unsteered(src: Sources, cells: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    chosen = chosen[chosen["method"] != BASELINE]
    if chosen.empty:
        raise ValueError("no generations behind this point (a band or a reference line?)")
    base_cells = cells if (cells["method"] == BASELINE).any() else src.cells("dose")
    base: dict[str, str] = {}
    if base_cells is not None:
        b = base_cells[base_cells["method"] == BASELINE].drop_duplicates("prompt_id")
        base = dict(zip(b["prompt_id"], b["generation"], strict=True))
    text = dict(zip(src.prompts["prompt_id"], src.prompts["prompt"], strict=True))
    out = pd.DataFrame(
        {
            "user": chosen["user"],
            "method": chosen["method"],
            "alpha": chosen["alpha"].astype(float),
            "gate": chosen["gate"],
            "category": chosen["category"],
            "prompt": [text.get(p, p) for p in chosen["prompt_id"]],
            "unsteered": [base.get(p, "") for p in chosen["prompt_id"]],
            "generation": chosen["generation"],
        }
    )
    for col in ("utility", "degenerate"):
        if col in chosen:
            out[col] = chosen[col].to_numpy()
    return out.reset_index(drop=True)


def cell_state(
    row: dict[str, Any], keys: list[str], max_new_tokens: int | None = None, *, chat: bool = True
) -> ExploreState:
    """A workbench state that reruns one generation live: its prompt, its user's vector of
    its method (``population`` for the population vector), its gate, a ladder around its α
    and the run's ``max_new_tokens`` (so the ladder's row at that α is the cell's reply);
    ``chat``: whether the model has a chat template."""
    method, user = str(row["method"]), row.get("user")
    vector = method if method in keys else f"{method}/{user}"
    if vector not in keys:
        raise ValueError(f"no vector {vector!r} in this run to rerun with")
    alpha = float(row["alpha"])
    ladder = sorted({0.0, round(alpha / 2, 4), alpha, round(2 * alpha, 4)})
    if len(ladder) < 3:
        ladder = [0.0, 1.0, 2.0]
    gate = str(row.get("gate") or "all")
    if gate.startswith("condition"):
        gate = gate.split("&", 1)[1] if "&" in gate else "all"
    return ExploreState(
        prompt=str(row["prompt"]),
        vector=vector,
        user=None if user is None or (isinstance(user, float) and math.isnan(user)) else str(user),
        alphas=tuple(ladder),
        gate=gate,
        max_new_tokens=int(max_new_tokens) if max_new_tokens else ExploreState.max_new_tokens,
        chat=chat,  # a sweep formats prompts with the chat template where the model has one
    )
