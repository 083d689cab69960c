"""What every report figure shares: the font and layout, one colour per method, input checks,
interval bands and bars (helpers of ``steerlens.reporting.plots`` and its sibling modules)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

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
