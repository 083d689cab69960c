"""Plotly figures: each a function data -> ``go.Figure``; ``save_figure`` writes HTML (+ PNG).

Public as ``steerlens.plots`` (``sl.plots``). The sweep figures take either a sweep's raw
cells (``cells.parquet``, summarised here with ``steerlens.metrics.summaries``) or the summary
table the study writes (``results/dose_response.csv`` ...); the SteerX figures take the objects
``sl.steerx`` returns (``history_effects``, ``item_effects``, ``history_token_effects``) or the
frames and matrices written from them.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

logger = logging.getLogger(__name__)

__all__ = [
    "calibrated_curves",
    "conditional_dose",
    "dataset_overview",
    "dose_response",
    "effect_heatmap",
    "gating_curve",
    "mmlu_bars",
    "ppa_bars",
    "pr_curves",
    "save_figure",
    "save_figures",
    "selectivity_heatmap",
    "steerx_bars",
    "token_effects",
    "user_card",
    "users_in_basis",
    "utility_by_group",
]

_PNG_WARNED = False
_FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)


def _style(
    fig: go.Figure, title: str, *, export_width: int = 1000, legend_y: float = -0.16
) -> go.Figure:
    """The house style. No fixed width: a figure fills its box in the page (1280 px or a
    phone), the legend sits below the plot inside the figure's box, and ``export_width`` is
    the width of the PNG export."""
    fig.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=15)),
        template="plotly_white",
        font=_FONT,
        autosize=True,
        margin=dict(l=56, r=24, t=70, b=40),
        legend=dict(orientation="h", yanchor="top", y=legend_y, x=0, xanchor="left"),
        meta={"export_width": export_width},
    )
    return fig


_METHOD_COLOURS = {
    "population": "#b59b6b",
    "dislike-weighted": "#e8731a",
    "bradley-terry": "#4c78a8",
}
_PALETTE = ["#54a24b", "#b279a2", "#e45756", "#72b7b2", "#9d755d"]


def _colour(method: str, k: int) -> str:
    return _METHOD_COLOURS.get(method, _PALETTE[k % len(_PALETTE)])


def _need(frame: pd.DataFrame, cols: tuple[str, ...], who: str) -> None:
    missing = [c for c in cols if c not in frame]
    if missing:
        raise ValueError(f"{who} needs columns {missing}")


def _is_cells(frame: pd.DataFrame) -> bool:
    """A sweep's raw cells (one row a generation), not a summary table."""
    return {"key", "prompt_id", "abs_error"} <= set(frame.columns)


def _band(x: Any, low: Any, high: Any, colour: str, group: str) -> go.Scatter:
    """A shaded interval between ``low`` and ``high`` (drawn as one closed polygon)."""
    return go.Scatter(
        x=list(x) + list(x)[::-1],
        y=list(high) + list(low)[::-1],
        mode="lines",
        fill="toself",
        fillcolor=colour,
        opacity=0.18,
        line=dict(width=0),
        hoverinfo="skip",
        showlegend=False,
        legendgroup=group,
    )


def dose_response(
    table: pd.DataFrame,
    *,
    side_effects: pd.DataFrame | None = None,
    gate: str = "all",
    title: str | None = None,
) -> go.Figure:
    """Against α, one line per vector method: ΔMAE % vs unsteered with 95 % bands, the
    ground-truth utility gain (simulated sets), the share of degenerate outputs, the median
    perplexity of the generations, and — with ``side_effects``
    (``metrics.side_effects.side_effect_table``) — the per-token KL on neutral text and that
    text's perplexity under steering, each with its band. ``table``: a sweep's cells (the
    ``gate`` given is summarised) or ``metrics.summaries.dose_response_table``'s output.

    Example: ``sl.plots.dose_response(pd.read_parquet("results/sweep/.../cells.parquet"))``
    """
    if _is_cells(table):
        from steerlens.metrics.summaries import dose_response_table

        table = dose_response_table(table, gate=gate)
    _need(table, ("method", "alpha", "delta_pct", "ppl", "degenerate_share"), "dose_response")
    panels: list[tuple[str, pd.DataFrame, str, str | None, str | None]] = [
        ("ΔMAE vs unsteered (%) · lower is better", table, "delta_pct", "delta_low", "delta_high")
    ]
    if "utility_gain" in table:
        panels.append(
            ("utility gain (simulated users)", table, "utility_gain", "utility_low", "utility_high")
        )
    if side_effects is not None and not side_effects.empty:
        panels.append(("KL on neutral text (nats/token)", side_effects, "kl", "kl_low", "kl_high"))
        panels.append(("perplexity of neutral text", side_effects, "ppl", "ppl_low", "ppl_high"))
    panels += [
        ("perplexity of generations (median)", table, "ppl", None, None),
        ("degenerate outputs (share)", table, "degenerate_share", None, None),
    ]
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[p[0] for p in panels],
        horizontal_spacing=0.07,
        vertical_spacing=0.2 if rows > 1 else 0.1,
    )
    methods = sorted(table["method"].unique())
    for n, (_, frame, y, lo, hi) in enumerate(panels):
        r, c = n // cols + 1, n % cols + 1
        for k, method in enumerate(methods):
            part = frame[frame["method"] == method].sort_values("alpha")
            if part.empty:
                continue
            colour = _colour(method, k)
            if lo is not None and hi is not None and {lo, hi} <= set(part.columns):
                fig.add_trace(
                    _band(part["alpha"], part[lo], part[hi], colour, method), row=r, col=c
                )
            fig.add_trace(
                go.Scatter(
                    x=part["alpha"],
                    y=part[y],
                    mode="lines+markers",
                    name=method,
                    legendgroup=method,
                    showlegend=n == 0,
                    line=dict(color=colour, width=3 if n == 0 else 2),
                ),
                row=r,
                col=c,
            )
        if y in ("delta_pct", "utility_gain"):
            fig.add_hline(y=0, line=dict(color="#999", width=1), row=r, col=c)
        if y == "degenerate_share":
            fig.update_yaxes(range=[-0.02, 1.02], row=r, col=c)
    fig.update_xaxes(title_text="α", title_standoff=4)
    fig.update_layout(height=330 * rows + 90)
    return _style(
        fig,
        title or "Dose-response: what changes with α (bands: bootstrap 95 %)",
        export_width=1280,
        legend_y=-0.3 / rows,
    )


def calibrated_curves(table: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """A KL-calibrated sweep (``dose_response_table(..., dose="kl_budget")``): ΔMAE %, the
    utility gain (simulated sets) and the spread of the users' calibrated α against the KL
    budget, one line per method.

    Example: ``sl.plots.calibrated_curves(pd.read_csv("results/calibrated.csv"))``
    """
    _need(table, ("method", "kl_budget", "alpha", "delta_pct"), "calibrated_curves")
    panels = [("ΔMAE vs unsteered (%)", "delta_pct", "delta_low", "delta_high")]
    if "utility_gain" in table:
        panels.append(
            ("utility gain (simulated users)", "utility_gain", "utility_low", "utility_high")
        )
    panels.append(("users' calibrated α (mean, min-max)", "alpha", "alpha_min", "alpha_max"))
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.08
    )
    for c, (_, y, lo, hi) in enumerate(panels, start=1):
        for k, method in enumerate(sorted(table["method"].unique())):
            part = table[table["method"] == method].sort_values("kl_budget")
            colour = _colour(method, k)
            if {lo, hi} <= set(part.columns):
                fig.add_trace(
                    _band(part["kl_budget"], part[lo], part[hi], colour, method), row=1, col=c
                )
            fig.add_trace(
                go.Scatter(
                    x=part["kl_budget"],
                    y=part[y],
                    mode="lines+markers",
                    name=method,
                    legendgroup=method,
                    showlegend=c == 1,
                    line=dict(color=colour),
                ),
                row=1,
                col=c,
            )
        if y != "alpha":
            fig.add_hline(y=0, line=dict(color="#999", width=1), row=1, col=c)
    fig.update_xaxes(title_text="KL budget (nats/token on neutral text)", title_standoff=4)
    fig.update_layout(height=430)
    return _style(
        fig,
        title or "Equal side effect: each user's α calibrated to a KL budget",
        export_width=1280,
    )


def selectivity_heatmap(
    table: pd.DataFrame,
    *,
    method: str = "population",
    gate: str = "all",
    title: str | None = None,
) -> go.Figure:
    """% change of MAE vs unsteered, prompt category (rows) x α (columns), as the study's
    selectivity table (``evaluation.selectivity_table``); from a sweep's cells, ``method``'s
    at ``gate``.

    Example: ``sl.plots.selectivity_heatmap(cells, method="dislike-weighted")``
    """
    if _is_cells(table):
        from steerlens.metrics.summaries import selectivity_table

        table = selectivity_table(table, method=method, gate=gate)
    if table.empty:
        raise ValueError("selectivity_heatmap needs a non-empty category x alpha table")
    pct = table.astype(float)
    text = [[f"{v:+.1f}%" if pd.notna(v) else "" for v in row] for row in pct.to_numpy()]
    bound = max(1.0, float(np.nanmax(np.abs(pct.to_numpy()))) if pct.size else 1.0)
    fig = go.Figure(
        go.Heatmap(
            z=pct.to_numpy(),
            x=[f"α={a:g}" for a in pct.columns],
            y=[str(i) for i in pct.index],
            text=text,
            texttemplate="%{text}",
            colorscale="RdBu_r",
            zmid=0,
            zmin=-bound,
            zmax=bound,
            colorbar=dict(title="ΔMAE %"),
        )
    )
    return _style(fig, title or "Selectivity: MAE change by prompt category (negative = better)")


def gating_curve(
    table: pd.DataFrame,
    *,
    method: str = "population",
    alpha: float | None = None,
    title: str | None = None,
) -> go.Figure:
    """ΔMAE % (with 95 % intervals) and utility gain per gate: ``first:K`` against K, and
    ``prefill`` / ``generated`` / ``all`` as reference lines (``evaluation.gating_table``);
    from a sweep's cells, ``method``'s at ``alpha``.

    Example: ``sl.plots.gating_curve(pd.read_csv("results/gating.csv"))``
    """
    if _is_cells(table):
        if alpha is None:
            raise ValueError("gating_curve from a sweep's cells needs alpha=")
        from steerlens.metrics.summaries import gating_table

        table = gating_table(table, method=method, alpha=alpha)
    _need(table, ("gate", "k", "delta_pct", "delta_low", "delta_high"), "gating_curve")
    first = table[table["gate"].str.startswith("first:")].sort_values("k")
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("ΔMAE vs unsteered (%)", "keyword-density utility gain")
    )
    panels = [(1, "delta_pct", "delta_low", "delta_high")]
    if "utility_gain" in table:
        panels.append((2, "utility_gain", "utility_low", "utility_high"))
    for col, y, lo, hi in panels:
        fig.add_trace(
            go.Scatter(
                x=first["k"],
                y=first[y],
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=first[hi] - first[y],
                    arrayminus=first[y] - first[lo],
                ),
                mode="lines+markers",
                name="first K generated tokens",
                showlegend=col == 1,
                line=dict(color="#e8731a", width=3),
            ),
            row=1,
            col=col,
        )
        k_range = [float(first["k"].min()), float(first["k"].max())] if len(first) else [0, 1]
        for k, gate in enumerate(("prefill", "generated", "all")):
            ref = table[table["gate"] == gate]
            if not ref.empty:  # a dashed line named in the legend (labels cannot collide)
                fig.add_trace(
                    go.Scatter(
                        x=k_range,
                        y=[float(ref[y].iloc[0])] * 2,
                        mode="lines",
                        name=f"gate: {gate}",
                        legendgroup=gate,
                        showlegend=col == 1,
                        line=dict(color=_PALETTE[k], dash="dash"),
                    ),
                    row=1,
                    col=col,
                )
    fig.update_xaxes(title_text="K (steered generated tokens)")
    fig.update_layout(height=460)
    return _style(
        fig,
        title or "Gating: steering the prompt and the first K generated tokens",
        export_width=1200,
    )


def conditional_dose(table: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Conditional and unconditional dose-response side by side, one panel per prompt
    category: ΔMAE % vs unsteered against α (``results/conditional_by_category.csv``:
    category, alpha, arm, mae_change_pct, n).

    Example: ``sl.plots.conditional_dose(pd.read_csv("results/conditional_by_category.csv"))``
    """
    from plotly.subplots import make_subplots

    _need(table, ("category", "alpha", "arm", "mae_change_pct"), "conditional_dose")
    cats = sorted(table["category"].unique())
    fig = make_subplots(rows=1, cols=max(1, len(cats)), subplot_titles=cats, shared_yaxes=True)
    styles = {"unconditional": ("#636efa", "solid"), "conditional": ("#ef553b", "dash")}
    for col, cat in enumerate(cats, start=1):
        for arm, (colour, dash) in styles.items():
            part = table[(table["category"] == cat) & (table["arm"] == arm)].sort_values("alpha")
            if part.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["alpha"],
                    y=part["mae_change_pct"],
                    mode="lines+markers",
                    name=arm,
                    legendgroup=arm,
                    showlegend=col == 1,
                    line={"color": colour, "dash": dash},
                ),
                row=1,
                col=col,
            )
        fig.add_hline(y=0, line={"color": "grey", "width": 1}, row=1, col=col)  # type: ignore[arg-type]
    fig.update_xaxes(title_text="α")
    fig.update_yaxes(title_text="ΔMAE % vs unsteered", row=1, col=1)
    return _style(fig, title or "Conditional vs unconditional steering per category")


def utility_by_group(table: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Keyword-density utility gain (simulated users) of steered generations per user group
    and method, with 95 % intervals (columns ``method``, ``group``, ``mean``, ``low``,
    ``high``; with ``degenerate_share``, each bar's label carries it).

    Example: ``sl.plots.utility_by_group(pd.read_csv("results/utility_by_group.csv"))``
    """
    _need(table, ("method", "group", "mean", "low", "high"), "utility_by_group")
    fig = go.Figure()
    for k, method in enumerate(sorted(table["method"].unique())):
        part = table[table["method"] == method]
        bars = _interval_bars(part["group"], part, _colour(method, k))
        bars.name = method
        if "degenerate_share" in part:  # every utility number beside its degenerate share
            bars.text = [
                f"{v:.3f} (deg. {d:.2f})"
                for v, d in zip(part["mean"], part["degenerate_share"], strict=True)
            ]
        fig.add_trace(bars)
    fig.add_hline(y=0, line=dict(color="#999", width=1))
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="gain vs unsteered (keyword-density utility, simulated users)")
    return _style(fig, title or "Keyword-density utility gain per user group")


def dataset_overview(ground_truth: dict[str, Any], pairs: pd.DataFrame) -> go.Figure:
    """Simulated set: users' latent weights, score distribution per category, toxicity per style.

    Example: ``ds = sl.data.load_prism("demo"); sl.plots.dataset_overview(ds.ground_truth,
    pd.DataFrame([p.__dict__ for p in ds.preference_pairs()]))``
    """
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "users' latent weights",
            "scores per prompt category",
            "toxicity per response style",
        ),
    )
    attrs = ground_truth["attributes"]
    groups = sorted({u["group"] for u in ground_truth["users"].values()})
    colours = dict(zip(groups, ["#4c78a8", "#f58518", "#54a24b", "#b279a2"], strict=False))
    for g in groups:
        users = [u for u in ground_truth["users"].values() if u["group"] == g]
        for k, u in enumerate(users):
            fig.add_trace(
                go.Scatter(
                    x=attrs,
                    y=[u["weights"][a] for a in attrs],
                    mode="lines",
                    line=dict(color=colours[g], width=1),
                    opacity=0.45,
                    name=g,
                    legendgroup=g,
                    showlegend=k == 0,
                ),
                row=1,
                col=1,
            )
    for cat in sorted(pairs["category"].unique()):
        sub = pairs[pairs["category"] == cat]
        fig.add_trace(
            go.Box(
                y=pd.concat([sub["chosen_score"], sub["rejected_score"]]),
                name=cat,
                showlegend=False,
                marker_color="#72b7b2",
            ),
            row=1,
            col=2,
        )
    resp = pd.DataFrame(ground_truth["responses"].values())
    resp["toxicity"] = resp["attributes"].map(lambda a: a["toxicity"])
    for style in resp["style"].unique():
        fig.add_trace(
            go.Box(
                y=resp.loc[resp["style"] == style, "toxicity"],
                name=style,
                showlegend=False,
                marker_color="#e45756",
            ),
            row=1,
            col=3,
        )
    fig.update_yaxes(title_text="weight on z-score", row=1, col=1)
    fig.update_yaxes(title_text="score (1-100)", row=1, col=2)
    fig.update_yaxes(title_text="toxicity (profanity-check)", row=1, col=3)
    fig.update_layout(height=480)
    return _style(
        fig, "Simulated PRISM-format set (not real PRISM): users, scores, styles", export_width=1400
    )


def _interval_bars(x: Any, rows: pd.DataFrame, color: Any) -> go.Bar:
    """Bars of ``rows["mean"]`` with asymmetric error bars to ``low`` / ``high``."""
    return go.Bar(
        x=x,
        y=rows["mean"],
        error_y=dict(
            type="data",
            symmetric=False,
            array=rows["high"] - rows["mean"],
            arrayminus=rows["mean"] - rows["low"],
        ),
        marker_color=color,
        text=[f"{v:.3f}" for v in rows["mean"]],
        textposition="outside",
    )


def ppa_bars(
    table: pd.DataFrame, *, measure: str = "ppa_projection", title: str | None = None
) -> go.Figure:
    """Preference accuracy per method with 95 % intervals; chance and oracle as lines.

    ``table`` has columns ``method``, ``measure``, ``mean``, ``low``, ``high``.

    Example: ``sl.plots.ppa_bars(pd.read_csv("results/ppa.csv"))``
    """
    for col in ("method", "measure", "mean", "low", "high"):
        if col not in table:
            raise ValueError(f"ppa_bars needs a {col!r} column")
    rows = table[table["measure"] == measure]
    if rows.empty:
        raise ValueError(f"no rows with measure {measure!r}")
    bars = rows[~rows["method"].isin(["chance", "oracle"])]
    fig = go.Figure(
        _interval_bars(
            bars["method"],
            bars,
            ["#e8731a" if "personal" in m else "#b59b6b" for m in bars["method"]],
        )
    )
    for name, color in (("chance", "#999"), ("oracle", "#2a7f62")):
        line = rows[rows["method"] == name]
        if not line.empty:
            fig.add_hline(
                y=float(line["mean"].iloc[0]),
                line=dict(color=color, dash="dash"),
                annotation_text=f"{name} {float(line['mean'].iloc[0]):.3f}",
            )
    fig.update_yaxes(title_text="preference accuracy (held-out pairs)", range=[0, 1.05])
    label = "by projection" if measure == "ppa_projection" else "under steering"
    return _style(fig, title or f"Preference accuracy {label} (bootstrap 95 % over users)")


def users_in_basis(coords: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Users in the first two Bradley-Terry coordinates, coloured by ``group`` if present.

    Example: ``sl.plots.users_in_basis(pd.read_csv("results/users_bt.csv", index_col=0))``
    """
    for col in ("c0", "c1"):
        if col not in coords:
            raise ValueError("users_in_basis needs columns c0 and c1 (a rank >= 2 basis)")
    groups = coords["group"] if "group" in coords else pd.Series("users", index=coords.index)
    fig = go.Figure()
    for g in sorted(groups.unique()):
        sel = coords[groups == g]
        fig.add_trace(
            go.Scatter(
                x=sel["c0"],
                y=sel["c1"],
                mode="markers",
                name=str(g),
                text=list(sel.index),
                marker=dict(size=10),
            )
        )
    fig.update_xaxes(title_text="Bradley-Terry coordinate 1")
    fig.update_yaxes(title_text="Bradley-Terry coordinate 2")
    return _style(fig, title or "Users in the Bradley-Terry basis")


def mmlu_bars(results: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """MMLU accuracy per condition with 95 % intervals (columns condition, mean, low, high).

    Example: ``sl.plots.mmlu_bars(pd.read_csv("results/mmlu.csv"))``
    """
    fig = go.Figure(_interval_bars(results["condition"], results, "#b59b6b"))
    fig.add_hline(y=0.25, line=dict(color="#999", dash="dash"), annotation_text="chance 0.25")
    fig.update_yaxes(title_text="zero-shot MMLU accuracy", range=[0, 1])
    return _style(fig, title or "Zero-shot MMLU, steered and unsteered")


def token_effects(frame: Any, *, title: str | None = None) -> go.Figure:
    """A response's tokens coloured by causal effect (hover: p_with, p_without, effect);
    ``frame`` is a ``TokenEffects`` (what ``sl.steerx.history_effects`` returns) or its
    ``to_frame()``, optionally with a ``planted`` column (drawn as an underline) and a
    ``selected`` column (the tokens kept as preference-driven, outlined).

    Example: ``sl.plots.token_effects(sl.steerx.history_effects(model, prompt=p,
    response=r, history=h))``
    """
    if hasattr(frame, "to_frame"):
        frame = frame.to_frame()
    _need(frame, ("token", "p_with", "p_without", "effect"), "token_effects")
    per_line = 16
    n = len(frame)
    x = [i % per_line for i in range(n)]
    y = [-(i // per_line) for i in range(n)]
    bound = max(0.05, float(frame["effect"].abs().max()) if n else 0.05)
    hover = [
        f"{t!r}<br>p_with {a:.3f}<br>p_without {b:.3f}<br>effect {e:+.3f}"
        for t, a, b, e in zip(
            frame["token"], frame["p_with"], frame["p_without"], frame["effect"], strict=True
        )
    ]
    fig = go.Figure(
        go.Scatter(
            x=x,
            y=y,
            mode="markers+text",
            text=[t.replace(" ", "·") for t in frame["token"]],
            textfont=dict(size=14, color="#111"),
            marker=dict(
                symbol="square",
                size=34,
                color=frame["effect"],
                colorscale="RdBu_r",
                cmin=-bound,
                cmax=bound,
                colorbar=dict(title="CE"),
            ),
            hovertext=hover,
            hoverinfo="text",
            showlegend=False,
        )
    )
    if "planted" in frame:
        sel = frame["planted"].to_numpy(bool)
        fig.add_trace(
            go.Scatter(
                x=[x[i] for i in range(n) if sel[i]],
                y=[y[i] - 0.32 for i in range(n) if sel[i]],
                mode="markers",
                marker=dict(symbol="line-ew", size=30, line=dict(width=3, color="#2a7f62")),
                name="planted span",
            )
        )
    if "selected" in frame:
        kept = frame["selected"].to_numpy(bool)
        fig.add_trace(
            go.Scatter(
                x=[x[i] for i in range(n) if kept[i]],
                y=[y[i] for i in range(n) if kept[i]],
                mode="markers",
                marker=dict(symbol="square-open", size=38, line=dict(width=3, color="#2a7f62")),
                name="kept as preference-driven",
                hoverinfo="skip",
            )
        )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=140 + 60 * (1 + (n - 1) // per_line))
    return _style(fig, title or "Causal effect of the history on each token", export_width=1100)


def effect_heatmap(
    matrix: Any,
    *,
    x: Sequence[str] | None = None,
    y: Sequence[str] | None = None,
    x_title: str | None = None,
    y_title: str | None = None,
    title: str | None = None,
    colorbar: str = "effect",
) -> go.Figure:
    """A signed heatmap (history item x target token, history token x target token, layer x
    position) with hover values. ``matrix`` is a matrix with its labels ``x`` (columns) and
    ``y`` (rows), or a result of ``sl.steerx.item_effects`` / ``history_token_effects``
    (labels and titles taken from it; any given here win).

    Example: ``sl.plots.effect_heatmap(sl.steerx.item_effects(model, prompt=p, response=r,
    history=h))``
    """
    if hasattr(matrix, "effect") and hasattr(matrix, "target"):
        x, y, x_title, y_title, title = _effect_labels(matrix, x, y, x_title, y_title, title)
        matrix = matrix.effect
    if x is None or y is None:
        raise ValueError("effect_heatmap needs x= and y= labels for a plain matrix")
    z = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix, dtype=float)
    if z.shape != (len(y), len(x)):
        raise ValueError(f"matrix is {z.shape} but the labels are {len(y)} x {len(x)}")
    bound = max(1e-6, float(np.nanmax(np.abs(z))) if z.size else 1.0)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"{i}:{t}" for i, t in enumerate(x)],
            y=[f"{i}:{t}" for i, t in enumerate(y)],
            colorscale="RdBu_r",
            zmid=0,
            zmin=-bound,
            zmax=bound,
            colorbar=dict(title=colorbar),
        )
    )
    fig.update_xaxes(title_text=x_title or "")
    fig.update_yaxes(title_text=y_title or "", autorange="reversed")
    return _style(fig, title or "Causal effect")


def _effect_labels(
    result: Any,
    x: Sequence[str] | None,
    y: Sequence[str] | None,
    x_title: str | None,
    y_title: str | None,
    title: str | None,
) -> tuple[Sequence[str], Sequence[str], str, str, str]:
    """Labels of an ``ItemEffects`` (rows: history items, by their prompt) or a
    ``HistoryTokenEffects`` (rows: the history tokens ablated one at a time)."""
    if hasattr(result, "items"):
        rows = [next((m["content"] for m in it if m["role"] == "user"), "") for it in result.items]
        what, ylab = "history without item", "history item (its prompt)"
    else:
        rows, what, ylab = list(result.history_tokens), "without the token", "history token"
    return (
        x if x is not None else list(result.target.tokens),
        y if y is not None else [r[:40] for r in rows],
        x_title or "target token",
        y_title or ylab,
        title or f"P(y_t | history) − P(y_t | {what})",
    )


def user_card(card: Any, *, title: str | None = None) -> go.Figure:
    """A SteerX user card as a figure: the description as the title, and each of the user's
    texts token by token, coloured by the history's causal effect, the tokens kept as
    preference-driven outlined. ``card``: a ``SteerXResult`` (``sl.steerx.steerx_user``) or
    one entry of ``results/steerx_cards.json`` (its ``card()``).

    Example: ``sl.plots.user_card(json.load(open("results/steerx_cards.json"))[0])``
    """
    if hasattr(card, "card"):
        card = card.card()
    targets = card.get("targets") or []
    if not targets:
        raise ValueError(f"user card {card.get('user')!r} has no targets")
    frame = pd.DataFrame(
        [
            {
                "token": tok,
                "p_with": float("nan"),
                "p_without": float("nan"),
                "effect": float(eff),
                "selected": i in set(t["selected"]),
            }
            for t in targets
            for i, (tok, eff) in enumerate(zip(t["tokens"], t["effect"], strict=True))
        ]
    )
    words = str(card.get("description", "")).split()
    lines = [" ".join(words[i : i + 14]) for i in range(0, len(words), 14)][:4]
    head = title or f"SteerX user card · {card.get('user')} ({card.get('group', '')})"
    fig = token_effects(frame, title="<br>".join([head, *[f"<sub>{w}</sub>" for w in lines]]))
    fig.update_layout(margin=dict(t=70 + 18 * len(lines)))
    return fig


def pr_curves(curve: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Precision against recall of each estimator over its thresholds
    (``evaluation.token_truth.pr_curve``).

    Example: ``sl.plots.pr_curves(pd.read_csv("results/steerx_pr_curve.csv"))``
    """
    _need(curve, ("estimator", "threshold", "precision", "recall"), "pr_curves")
    fig = go.Figure()
    for k, est in enumerate(curve["estimator"].unique()):
        part = curve[curve["estimator"] == est].sort_values("recall")
        fig.add_trace(
            go.Scatter(
                x=part["recall"],
                y=part["precision"],
                mode="lines+markers",
                name=est,
                text=[f"threshold {t:g}" for t in part["threshold"]],
                line=dict(color=_PALETTE[k % len(_PALETTE)] if k else "#e8731a"),
            )
        )
    fig.add_shape(type="rect", x0=0.5, x1=1, y0=0.8, y1=1, line=dict(dash="dot", color="#2a7f62"))
    fig.update_xaxes(title_text="recall of planted-span tokens", range=[0, 1.02])
    fig.update_yaxes(title_text="precision", range=[0, 1.02])
    return _style(fig, title or "Preference-driven tokens vs planted spans (goal: dotted box)")


def steerx_bars(table: pd.DataFrame, *, measure: str, title: str | None = None) -> go.Figure:
    """SteerX vs all-history per backbone, with 95 % intervals (rows of
    ``steerx_study`` with columns backbone, method, measure, mean, low, high).

    Example: ``sl.plots.steerx_bars(pd.read_csv("results/steerx_compare.csv"), measure="ppa_projection")``
    """
    _need(table, ("backbone", "method", "measure", "mean", "low", "high"), "steerx_bars")
    rows = table[(table["measure"] == measure) & table["method"].isin(["steerx", "all-history"])]
    if rows.empty:
        raise ValueError(f"no SteerX / all-history rows with measure {measure!r}")
    fig = go.Figure()
    for method, colour in (("all-history", "#b59b6b"), ("steerx", "#e8731a")):
        part = rows[rows["method"] == method]
        bars = _interval_bars(part["backbone"], part, colour)
        bars.name = method
        fig.add_trace(bars)
    fig.update_layout(barmode="group")
    if measure.startswith("ppa"):
        fig.add_hline(y=0.5, line=dict(color="#999", dash="dash"), annotation_text="chance")
    else:
        fig.add_hline(y=0, line=dict(color="#999", width=1))
    fig.update_yaxes(title_text=measure)
    return _style(fig, title or f"SteerX vs all-history per backbone: {measure}")


def _chrome_available() -> bool:
    return any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome"))


def _export_size(fig: go.Figure) -> tuple[int, int]:
    return (
        int(fig.layout.width or (fig.layout.meta or {}).get("export_width", 1000)),
        int(fig.layout.height or 550),
    )


def _warn_html_only(reason: str) -> None:
    global _PNG_WARNED
    if not _PNG_WARNED:
        logger.warning("%s: writing HTML figures only", reason)
        _PNG_WARNED = True


def save_figures(figures: Mapping[Path, go.Figure] | Mapping[str, go.Figure]) -> list[Path]:
    """``save_figure`` for many figures (stem -> figure): each ``stem.html``, and the PNGs
    in one batch through one Chromium session where one is available (starting Chromium per
    figure costs about a second each).

    Example: ``sl.plots.save_figures({"figures/dose": fig_a, "figures/ppa": fig_b})``
    """
    written: list[Path] = []
    stems = [Path(s) for s in figures]
    for stem, fig in zip(stems, figures.values(), strict=True):
        stem.parent.mkdir(parents=True, exist_ok=True)
        html = stem.with_suffix(".html")
        fig.write_html(html, include_plotlyjs="directory")  # offline: plotly.min.js beside it
        written.append(html)
    if not figures:
        return written
    if not _chrome_available():
        _warn_html_only("PNG export needs Chrome/Chromium (Debian package 'chromium'); none found")
        return written
    for name in ("kaleido", "choreographer"):  # their INFO lines would drown the run's
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    figs = list(figures.values())
    sizes = [_export_size(f) for f in figs]
    pngs = [s.with_suffix(".png") for s in stems]
    try:
        pio.write_images(
            fig=figs,
            file=pngs,
            width=[w for w, _ in sizes],
            height=[h for _, h in sizes],
            scale=2,
        )
        written += pngs
    except Exception as exc:  # kaleido/Chrome trouble must never fail a run
        _warn_html_only(f"PNG export failed ({type(exc).__name__}: {exc})")
    return written


def save_figure(fig: go.Figure, stem: str | Path) -> list[Path]:
    """Write ``stem.html`` and, where a Chrome/Chromium is available, ``stem.png``.

    Example: ``sl.plots.save_figure(fig, "figures/dose_response")``
    """
    return save_figures({Path(stem): fig})
