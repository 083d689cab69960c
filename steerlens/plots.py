"""Plotly figures: each a function data -> ``go.Figure``; ``save_figure`` writes HTML (+ PNG)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

logger = logging.getLogger(__name__)

__all__ = ["dataset_overview", "dose_response", "save_figure", "selectivity_heatmap"]

_PNG_WARNED = False
_FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)


def _style(fig: go.Figure, title: str) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.02),
        template="plotly_white",
        font=_FONT,
        margin=dict(l=60, r=30, t=70, b=50),
    )
    return fig


def dose_response(sweep: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """ΔMAE % (vs alpha 0) and perplexity against alpha; ``sweep`` has one row per generation
    with columns ``alpha``, ``abs_error`` and ``perplexity``."""
    for col in ("alpha", "abs_error", "perplexity"):
        if col not in sweep:
            raise ValueError(f"dose_response needs a {col!r} column")
    g = (
        sweep.groupby("alpha")
        .agg(mae=("abs_error", "mean"), ppl=("perplexity", "median"))
        .reset_index()
    )
    if 0.0 not in set(g["alpha"]):
        raise ValueError("dose_response needs alpha 0 (the unsteered baseline) in the sweep")
    base = float(g.loc[g["alpha"] == 0.0, "mae"].iloc[0])
    g["delta"] = 100 * (g["mae"] - base) / base if base else 0.0
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(
            x=g["alpha"],
            y=g["delta"],
            name="ΔMAE vs unsteered (%)",
            mode="lines+markers",
            line=dict(color="#e8731a", width=3),
        ),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=g["alpha"],
            y=g["ppl"],
            name="perplexity (median)",
            mode="lines+markers",
            line=dict(color="#b59b6b", width=2, dash="dot"),
        ),
        secondary_y=True,
    )
    fig.add_hline(y=0, line=dict(color="#999", width=1))
    fig.update_xaxes(title_text="steering strength α")
    fig.update_yaxes(title_text="ΔMAE (%) · lower is better", secondary_y=False)
    fig.update_yaxes(title_text="perplexity", secondary_y=True)
    return _style(fig, title or "Dose-response: toxicity MAE change and perplexity vs α")


def selectivity_heatmap(sweep: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """% change of MAE vs alpha 0, per prompt category (rows) and alpha (columns)."""
    for col in ("alpha", "abs_error", "category"):
        if col not in sweep:
            raise ValueError(f"selectivity_heatmap needs a {col!r} column")
    table = sweep.pivot_table(index="category", columns="alpha", values="abs_error", aggfunc="mean")
    if 0.0 not in table.columns:
        raise ValueError("selectivity_heatmap needs alpha 0 (the unsteered baseline)")
    base = table[0.0].replace(0, float("nan"))
    pct = table.drop(columns=[0.0]).div(base, axis=0).sub(1).mul(100)
    text = [[f"{v:+.1f}%" if pd.notna(v) else "" for v in row] for row in pct.to_numpy()]
    bound = max(1.0, float(pct.abs().max().max()) if pct.size else 1.0)
    fig = go.Figure(
        go.Heatmap(
            z=pct.to_numpy(),
            x=[f"α={a:g}" for a in pct.columns],
            y=list(pct.index),
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


def dataset_overview(ground_truth: dict[str, Any], pairs: pd.DataFrame) -> go.Figure:
    """Simulated set: users' latent weights, score distribution per category, toxicity per style."""
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
    fig.update_layout(width=1400, height=480)
    return _style(fig, "Simulated PRISM-format set (not real PRISM): users, scores, styles")


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
    """Users in the first two Bradley-Terry coordinates, coloured by ``group`` if present."""
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
    """MMLU accuracy per condition with 95 % intervals (columns condition, mean, low, high)."""
    fig = go.Figure(_interval_bars(results["condition"], results, "#b59b6b"))
    fig.add_hline(y=0.25, line=dict(color="#999", dash="dash"), annotation_text="chance 0.25")
    fig.update_yaxes(title_text="zero-shot MMLU accuracy", range=[0, 1])
    return _style(fig, title or "Zero-shot MMLU, steered and unsteered")


def _chrome_available() -> bool:
    return any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome"))


def save_figure(fig: go.Figure, stem: str | Path) -> list[Path]:
    """Write ``stem.html`` and, where a Chrome/Chromium is available, ``stem.png``."""
    global _PNG_WARNED
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    html = stem.with_suffix(".html")
    fig.write_html(html, include_plotlyjs="directory")  # offline: plotly.min.js beside it
    written = [html]
    if _chrome_available():
        try:
            png = stem.with_suffix(".png")
            fig.write_image(
                png, width=fig.layout.width or 1000, height=fig.layout.height or 550, scale=2
            )
            written.append(png)
            return written
        except Exception as exc:  # kaleido/Chrome trouble must never fail a run
            reason = f"PNG export failed ({type(exc).__name__}: {exc})"
    else:
        reason = "PNG export needs Chrome/Chromium (Debian package 'chromium'); none found"
    if not _PNG_WARNED:
        logger.warning("%s: writing HTML figures only", reason)
        _PNG_WARNED = True
    return written
