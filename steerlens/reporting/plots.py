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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from steerlens.reporting.plot_style import (
    _PALETTE,
    _band,
    _colour,
    _interval_bars,
    _is_cells,
    _need,
    _style,
)
from steerlens.reporting.plots_steerx import (
    effect_heatmap,
    pr_curves,
    steerx_bars,
    token_effects,
    user_card,
)

logger = logging.getLogger(__name__)

__all__ = [
    "calibrated_curves",
    "condition_projections",
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


def condition_projections(
    view: pd.DataFrame,
    fitted: float,
    threshold: float,
    *,
    prompt_projection: float | None = None,
    title: str | None = None,
) -> go.Figure:
    """Prompts' projections on a ``Condition``'s direction against its fitted threshold and
    a chosen one: ``view`` has ``prompt``, ``projection``, ``fires`` (at ``threshold``) and
    ``flipped`` (firing differs from the fitted threshold's: drawn as diamonds);
    ``prompt_projection`` marks one more prompt (the explorer's).

    Example: ``sl.plots.condition_projections(threshold_view(table, 1.2, 0.8), 1.2, 0.8)``
    (``steerlens.explore.users``: ``condition_table`` and ``threshold_view`` make ``view``)
    """
    _need(view, ("prompt", "projection", "fires", "flipped"), "condition_projections")
    fig = go.Figure()
    for fires, colour, label in ((True, "#e45756", "fires"), (False, "#999", "does not fire")):
        part = view[view["fires"] == fires]
        fig.add_trace(
            go.Scatter(
                x=part["projection"],
                y=[str(p)[:60] for p in part["prompt"]],
                mode="markers",
                marker=dict(
                    color=colour,
                    size=11,
                    symbol=["diamond" if f else "circle" for f in part["flipped"]],
                ),
                name=label,
                hovertext=part["prompt"],
            )
        )
    fig.add_vline(x=fitted, line=dict(color="#555", dash="dot"), annotation_text="fitted")
    fig.add_vline(x=threshold, line=dict(color="#4c78a8"), annotation_text="threshold")
    if prompt_projection is not None:
        fig.add_vline(
            x=prompt_projection, line=dict(color="#54a24b", dash="dash"), annotation_text="prompt"
        )
    fig.update_layout(
        xaxis_title="projection on the condition's direction",
        height=max(260, 26 * len(view) + 120),
    )
    return _style(
        fig, title or "Condition: the prompts' projections (diamond: flips against the fitted)"
    )


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


def save_figures(
    figures: Mapping[Path, go.Figure] | Mapping[str, go.Figure], *, png: bool = True
) -> list[Path]:
    """``save_figure`` for many figures (stem -> figure): each ``stem.html``, and (``png``)
    the PNGs in one batch through one Chromium session where one is available (starting
    Chromium per figure costs about a second each).

    Example: ``sl.plots.save_figures({"figures/dose": fig_a, "figures/ppa": fig_b})``
    """
    written: list[Path] = []
    stems = [Path(s) for s in figures]
    for stem, fig in zip(stems, figures.values(), strict=True):
        stem.parent.mkdir(parents=True, exist_ok=True)
        html = stem.with_suffix(".html")
        fig.write_html(html, include_plotlyjs="directory")  # offline: plotly.min.js beside it
        written.append(html)
    if not figures or not png:
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
