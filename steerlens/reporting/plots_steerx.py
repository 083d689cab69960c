"""The token-effect and SteerX figures (public through ``steerlens.reporting.plots`` and
``sl.plots``): per-token effects, history heatmaps, user cards, precision-recall curves
and SteerX vs all-history bars."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from steerlens.reporting.plot_style import (
    _PALETTE,
    _interval_bars,
    _need,
    _style,
)

__all__ = ["effect_heatmap", "pr_curves", "steerx_bars", "token_effects", "user_card"]


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
