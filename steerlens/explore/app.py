"""The Dash page of ``steerlens explore``: layout and callbacks only.

Every callback hands its inputs to an ``Explorer`` method (``steerlens.explore.session``) and
turns the plain data it returns into page elements; a failure becomes a message in the page.
The page is drawn from the URL's query string (an ``ExploreState``): the form writes the URL,
so a copied link reopens the same view. Dash serves its own JavaScript and plotly.js from the
installed packages and the CSS from ``assets/``: nothing is fetched from another host.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from steerlens.core.models import DEFAULT_MODEL, HookedModel, load_model

from .results import CLICKABLE, cell_state, point_generations, result_figures
from .session import Explorer
from .sources import Sources
from .state import ExploreState, number
from .users import token_drivers

__all__ = ["app"]

logger = logging.getLogger(__name__)
ASSETS = Path(__file__).parent / "assets"
GATES = ["all", "prefill", "generated", "first:1", "first:2", "first:4", "first:8"]
_GRAPH_CONFIG = {"displaylogo": False, "responsive": True}


def _dash() -> Any:
    try:
        import dash
    except ImportError:  # pragma: no cover - the extra is in the lock
        raise ImportError(
            "steerlens explore needs Dash: pip install 'steerlens[explore]'"
        ) from None
    return dash


def app(
    run: str | Path | None = None,
    model: str | HookedModel | None = None,
    vectors: str | Path | None = None,
    *,
    neutral_n: int = 4,
) -> Any:
    """The explorer's Dash app (``app.run(host="127.0.0.1", port=8050)`` serves it).

    Args:
        run: a study's folder or its ``results/`` folder (or a sweep's folder): its vectors,
            held-out prompts, users, condition and figures.
        model: a model name (loaded once, here) or a loaded model; by default the run's own
            model (``summary.json``), else the embedded one.
        vectors: a folder of ``*.safetensors`` / ``*.gguf`` vectors (keys: file stems).
        neutral_n: neutral texts for the per-α KL and KL budgets.
    """
    dash = _dash()
    sources = Sources(
        run=Path(run) if run else None, vectors_dir=Path(vectors) if vectors else None
    )
    if model is None:
        model = str(sources.summary().get("model") or DEFAULT_MODEL)
    loaded = load_model(model) if isinstance(model, str) else model
    explorer = Explorer(loaded, sources, neutral_n=neutral_n)
    application = dash.Dash(
        __name__,
        title="steerlens explore",
        update_title=None,
        serve_locally=True,
        assets_folder=str(ASSETS),
        suppress_callback_exceptions=True,
    )
    application.explorer = explorer
    application.layout = _layout(dash, explorer)
    _callbacks(dash, application, explorer)
    return application


# layout --------------------------------------------------------------------------------------
def _field(label: str, control: Any, html: Any) -> Any:
    return html.Label([html.Span(label, className="field-label"), control], className="field")


def _layout(dash: Any, ex: Explorer) -> Any:
    dcc, html = dash.dcc, dash.html
    users = ex.sources.users()
    keys = ex.sources.vector_keys()
    found = _report_figures(ex)
    figs = sorted(found, key=lambda k: (k not in CLICKABLE, list(found).index(k)))
    controls = html.Div(
        [
            _field("user", dcc.Dropdown(id="user", options=users, clearable=True), html),
            _field("their held-out prompts", dcc.Dropdown(id="prompt-pick", options=[]), html),
            _field("prompt", dcc.Textarea(id="prompt", rows=3), html),
            dcc.Checklist(id="chat", options=[{"label": " chat template", "value": "chat"}]),
            _field("vector", dcc.Dropdown(id="vector", options=keys, clearable=False), html),
            _field(
                "or a vector file",
                dcc.Input(id="vector-file", type="text", placeholder="path/to/vector.safetensors"),
                html,
            ),
            _field("layers (empty: all)", dcc.Input(id="layers", type="text"), html),
            _field("gate", dcc.Dropdown(id="gate", options=GATES, clearable=False), html),
            _field("α ladder (3-7)", dcc.Input(id="alphas", type="text"), html),
            _field("or KL budgets (nats/token)", dcc.Input(id="budgets", type="text"), html),
            _field("new tokens", dcc.Input(id="max-new", type="number", min=1, max=256), html),
            _field(
                "colour tokens by",
                dcc.RadioItems(
                    id="colour-by",
                    options=[
                        {"label": " KL to unsteered", "value": "kl"},
                        {"label": " projection on the vector", "value": "projection"},
                    ],
                    inline=True,
                ),
                html,
            ),
            html.Button("Generate", id="go", n_clicks=0, className="go"),
            html.Div(id="form-msg", className="msg"),
        ],
        className="controls",
    )
    output = html.Div(
        [
            html.Div(id="run-msg", className="msg"),
            html.Div(
                [
                    html.Span(id="status", className="status"),
                    html.Button("Cancel", id="cancel", n_clicks=0, className="cancel"),
                ],
                className="status-line",
            ),
            dcc.Interval(id="tick", interval=400, disabled=True),
            dcc.Store(id="job"),
            html.Div(
                [
                    html.Div(id="badge", className="badge"),
                    html.Div(
                        dcc.Slider(
                            id="alpha",
                            min=0,
                            max=1,
                            step=1,
                            value=0,
                            marks={},
                            allow_direct_input=False,
                        ),
                        className="slider",
                    ),
                    html.Div(
                        [
                            html.Div(
                                [html.H4("unsteered"), html.Div(id="unsteered", className="reply")],
                                className="pane",
                            ),
                            html.Div(
                                [
                                    html.H4(id="steered-title"),
                                    html.Div(id="steered", className="reply"),
                                ],
                                className="pane",
                            ),
                        ],
                        className="panes",
                    ),
                    html.Div(id="readouts"),
                ]
            ),
        ],
        className="output",
    )
    return html.Div(
        [
            dcc.Location(id="url", refresh=False),
            dcc.Store(id="ladder"),
            dcc.Download(id="download"),
            html.Header(
                [html.H2("steerlens explore"), html.Div(id="provenance", className="prov")]
            ),
            html.Section([html.H3("Workbench"), html.Div([controls, output], className="bench")]),
            html.Section(
                [
                    html.H3("User and condition"),
                    html.Div(id="card"),
                    html.Div(id="condition-msg", className="msg"),
                    html.Div(
                        dcc.Slider(id="threshold", min=0, max=1, value=0, allow_direct_input=False),
                        id="threshold-box",
                    ),
                    dcc.Graph(id="condition-graph", config=_GRAPH_CONFIG),
                    html.Div(id="flips"),
                ],
                id="user-section",
            ),
            html.Section(
                [
                    html.H3("Results"),
                    html.P(
                        "open a study's or a sweep's folder (--run) to browse its figures",
                        className="note",
                        style={} if not figs else {"display": "none"},
                    ),
                    dcc.Dropdown(
                        id="figure-pick",
                        options=[
                            {
                                "label": found[k][0]
                                + (" · click a point" if k in CLICKABLE else ""),
                                "value": k,
                            }
                            for k in figs
                        ],
                        value=figs[0] if figs else None,
                        clearable=False,
                        style={} if figs else {"display": "none"},
                    ),
                    dcc.Graph(id="result-graph", config=_GRAPH_CONFIG),
                    html.Div(id="point-msg", className="msg"),
                    html.Div(id="point"),
                ],
                id="results-section",
            ),
            html.Section(
                [
                    html.H3("Save, share, export"),
                    html.Div(id="share"),
                    html.Div(
                        [
                            html.Button(f"vector as {fmt}", id=f"export-{fmt}", n_clicks=0)
                            for fmt in ("safetensors", "gguf", "lm-eval")
                        ],
                        className="buttons",
                    ),
                    html.Div(id="export-msg", className="msg"),
                    html.Div(id="exports"),
                ],
                id="export-section",
            ),
        ],
        className="page",
    )


def _report_figures(ex: Explorer) -> dict[str, Any]:
    if ex.figures is not None:
        return ex.figures
    try:
        ex.figures = result_figures(ex.sources)
        return ex.figures
    except Exception as e:  # a damaged results folder: no figures, a log line
        logger.warning("results figures unavailable: %s", e)
        return {}


# callbacks -----------------------------------------------------------------------------------
def _message(e: Exception) -> str:
    return f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)


def _callbacks(dash: Any, application: Any, ex: Explorer) -> None:
    dcc, html = dash.dcc, dash.html
    Input, Output, State, no_update = dash.Input, dash.Output, dash.State, dash.no_update
    controls = [
        "prompt",
        "user",
        "vector",
        "vector-file",
        "layers",
        "gate",
        "alphas",
        "budgets",
        "max-new",
        "chat",
        "colour-by",
    ]

    @application.callback(
        Output("url", "search"),
        Output("form-msg", "children"),
        Input("go", "n_clicks"),
        *[State(c, "value") for c in controls],
        State("url", "search"),
        prevent_initial_call=True,
    )
    def form_to_url(_n: int, *values: Any):  # type: ignore[no-untyped-def]
        *form, search = values
        try:
            shown = ex.state(search)  # the threshold and seed travel on
        except ValueError:
            shown = ExploreState()
        try:
            state = ExploreState.from_dict(
                {
                    **_form_state(dict(zip(controls, form, strict=True))),
                    "threshold": shown.threshold,
                    "seed": shown.seed,
                }
            )
        except ValueError as e:
            return no_update, str(e)
        return "?" + state.to_query(), ""

    @application.callback(
        Output("url", "search", allow_duplicate=True),
        Input("threshold", "value"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    def threshold_to_url(value: float | None, search: str | None):  # type: ignore[no-untyped-def]
        try:
            state = ex.state(search)
            now = ex.threshold(state)
        except ValueError:
            return no_update
        if value is None or now is None or abs(float(value) - now) <= 1e-9 * max(1, abs(now)):
            return no_update  # set by the page, not dragged
        moved = ExploreState.from_dict({**state.to_dict(), "threshold": float(value)})
        return "?" + moved.to_query()

    @application.callback(
        Output("ladder", "data"),
        Output("job", "data"),
        Output("tick", "disabled"),
        Output("run-msg", "children"),
        Output("status", "children"),
        Output("gate", "options"),
        *[Output(c, "value") for c in controls],
        Input("url", "search"),
    )
    def url_to_page(search: str | None):  # type: ignore[no-untyped-def]
        n = len(controls) + 1
        try:
            state = ex.state(search)
        except ValueError as e:
            msg = f"this link holds a state that cannot be used: {e}"
            return (no_update, None, True, msg, "", *[no_update] * n)
        values = _control_values(ex, state)
        gates = GATES if state.gate in GATES else [*GATES, state.gate]
        try:
            job_id, ladder = ex.start(state)
        except Exception as e:
            logger.exception("workbench")
            return (None, None, True, _message(e), "", gates, *values)
        if ladder is not None:  # kept: at once
            return (ladder, None, True, "", "", gates, *values)
        return (no_update, job_id, False, "", "starting", gates, *values)

    @application.callback(
        Output("ladder", "data", allow_duplicate=True),
        Output("tick", "disabled", allow_duplicate=True),
        Output("run-msg", "children", allow_duplicate=True),
        Output("status", "children", allow_duplicate=True),
        Input("tick", "n_intervals"),
        State("job", "data"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    def poll(_n: int, job_id: str | None, search: str | None):  # type: ignore[no-untyped-def]
        if not job_id:
            return no_update, True, no_update, ""
        try:
            job = ex.job(job_id)
            if job.key != ex.ladder_key(ex.state(search)):
                return no_update, True, no_update, ""  # a job of an earlier view
        except ValueError as e:
            return no_update, True, str(e), ""
        if not job.finished.is_set():
            if job.cancelled.is_set():
                return no_update, False, no_update, f"cancelling at the next stage ({job.status}) …"
            return no_update, False, no_update, job.status + " …"
        if job.result is not None:
            return job.result, True, "", ""
        return no_update, True, job.error or "cancelled: the replies shown are the last ones", ""

    @application.callback(
        Output("status", "children", allow_duplicate=True),
        Input("cancel", "n_clicks"),
        State("job", "data"),
        prevent_initial_call=True,
    )
    def cancel(_n: int, job_id: str | None):  # type: ignore[no-untyped-def]
        if not job_id:
            return no_update
        try:
            ex.cancel(job_id)
        except ValueError as e:
            return str(e)
        return "cancelling at the next stage …"

    @application.callback(
        Output("alpha", "max"),
        Output("alpha", "marks"),
        Output("alpha", "value"),
        Input("ladder", "data"),
    )
    def ladder_marks(ladder: dict | None):  # type: ignore[no-untyped-def]
        if not ladder:
            return 1, {}, 0
        marks = {i: f"α {a:g}" for i, a in enumerate(ladder["alphas"])}
        return len(marks) - 1, marks, len(marks) // 2  # start in the middle of the ladder

    @application.callback(
        Output("unsteered", "children"),
        Output("steered", "children"),
        Output("steered-title", "children"),
        Output("badge", "children"),
        Output("badge", "className"),
        Output("readouts", "children"),
        Output("provenance", "children"),
        Input("alpha", "value"),
        Input("colour-by", "value"),
        Input("ladder", "data"),
    )
    def show_alpha(index: int | None, colour_by: str | None, ladder: dict | None):  # type: ignore[no-untyped-def]
        if not ladder:
            return [], [], "steered", "", "badge", None, ex.model_label()
        v = ex.view(ladder, index or 0, colour_by or "kl")
        return (
            _tokens(html, v["unsteered"]),
            _tokens(html, v["steered"]),
            f"steered · α {v['alpha']:g}",
            v["badge"],
            "badge ok" if v["reproduced"] else "badge",
            _table(html, v["readouts"], highlight=("α", v["alpha"])),
            v["provenance"],
        )

    @application.callback(
        Output("prompt-pick", "options"),
        Input("user", "value"),
    )
    def user_prompts(user: str | None):  # type: ignore[no-untyped-def]
        return ex.sources.user_prompts(user) if user else []

    @application.callback(
        Output("prompt", "value", allow_duplicate=True),
        Input("prompt-pick", "value"),
        prevent_initial_call=True,
    )
    def pick_prompt(prompt: str | None):  # type: ignore[no-untyped-def]
        return prompt or no_update

    @application.callback(
        Output("card", "children"),
        Output("condition-graph", "figure"),
        Output("condition-graph", "style"),
        Output("threshold-box", "style"),
        Output("threshold", "min"),
        Output("threshold", "max"),
        Output("threshold", "step"),
        Output("threshold", "value"),
        Output("threshold", "marks"),
        Output("flips", "children"),
        Output("condition-msg", "children"),
        Input("ladder", "data"),
        Input("url", "search"),
        Input("user", "value"),
    )
    def user_pane(ladder, search, user):  # type: ignore[no-untyped-def]
        hidden = {"display": "none"}
        try:
            state = ExploreState.from_dict({**ex.state(search).to_dict(), "user": user})
            card = _card(html, ex.card(user))
            pane = ex.condition(state, ladder)
        except Exception as e:
            logger.exception("user pane")
            return (None, {}, hidden, hidden, 0, 1, 0.01, 0, {}, None, _message(e))
        if pane is None:
            note = html.P("no condition in this run or vector", className="note")
            return (card, {}, hidden, hidden, 0, 1, 0.01, 0, {}, note, "")
        lo, hi = pane["range"]
        lo, hi = (
            min(lo, pane["fitted"], pane["threshold"]),
            max(hi, pane["fitted"], pane["threshold"]),
        )
        pad = max(0.5, 0.05 * (hi - lo))
        lo, hi = lo - pad, hi + pad
        flips = html.Div(
            [
                html.P(
                    f"{len(pane['flipped'])} prompt(s) flip against the fitted threshold "
                    f"({pane['fitted']:.3g}); {pane['fires']} of {pane['n']} fire:"
                ),
                html.Ul([html.Li(p) for p in pane["flipped"]]),
            ]
        )
        marks = {pane["fitted"]: "fitted"}
        return (
            card,
            pane["figure"],
            {},
            {},
            lo,
            hi,
            (hi - lo) / 200,
            pane["threshold"],
            marks,
            flips,
            "",
        )

    @application.callback(
        Output("sx-drivers", "children"),
        Input({"type": "sx-token", "index": dash.ALL}, "n_clicks"),
        State("user", "value"),
        prevent_initial_call=True,
    )
    def show_drivers(clicks, user):  # type: ignore[no-untyped-def]
        trigger = dash.callback_context.triggered_id
        if not trigger or not any(clicks):
            return no_update
        try:
            detail = (ex.card(user) or {}).get("item_effects")
            if not detail:
                return None
            index = int(trigger["index"])
            rows = token_drivers(detail, index)
        except Exception as e:
            return html.P(_message(e), className="msg")
        return html.Div(
            [
                html.H5(f"what drives {detail['tokens'][index]!r}"),
                html.Ol([html.Li(f"{r['item']} … ({r['effect']:+.3f})") for r in rows]),
            ]
        )

    @application.callback(
        Output("result-graph", "figure"),
        Output("result-graph", "style"),
        Input("figure-pick", "value"),
    )
    def show_figure(name: str | None):  # type: ignore[no-untyped-def]
        figures = _report_figures(ex)
        if not name or name not in figures:
            return {}, {"display": "none"}
        return figures[name][1], {}

    @application.callback(
        Output("point", "children"),
        Output("point-msg", "children"),
        Input("result-graph", "clickData"),
        State("figure-pick", "value"),
        State("result-graph", "figure"),
        prevent_initial_call=True,
    )
    def show_point(click, name, fig):  # type: ignore[no-untyped-def]
        try:
            if not click or not click.get("points"):
                return None, ""
            title, frame = point_generations(ex.sources, name, fig, click["points"][0])
            keys = ex.sources.vector_keys()
            max_new = ex.sources.summary().get("config", {}).get("max_new_tokens")
            rows = []
            for rec in frame.head(24).to_dict(orient="records"):
                try:
                    link = dcc.Link(
                        "rerun this cell live",
                        href="?" + cell_state(rec, keys, max_new, chat=ex.chat).to_query(),
                        className="rerun",
                    )
                except ValueError as e:
                    link = html.Span(str(e))
                rows.append(
                    html.Div(
                        [
                            html.Div(
                                f"{rec['user']} · {rec['method']} · α {rec['alpha']:g} · gate "
                                f"{rec['gate']} · {rec['category']}",
                                className="cell-head",
                            ),
                            html.Div(rec["prompt"], className="cell-prompt"),
                            html.Div(
                                [
                                    html.Div(
                                        [html.H5("unsteered"), html.P(rec["unsteered"])],
                                        className="pane",
                                    ),
                                    html.Div(
                                        [html.H5("steered"), html.P(rec["generation"])],
                                        className="pane",
                                    ),
                                ],
                                className="panes",
                            ),
                            link,
                        ],
                        className="cell",
                    )
                )
            more = f" (first 24 of {len(frame)})" if len(frame) > 24 else ""
            return [html.H4(f"{title}: {len(frame)} generation(s){more}"), *rows], ""
        except Exception as e:
            return None, _message(e)

    @application.callback(
        Output("exports", "children"),
        Output("share", "children"),
        Input("ladder", "data"),
        Input("url", "search"),
        State("url", "href"),
    )
    def show_exports(ladder, search, href):  # type: ignore[no-untyped-def]
        if not ladder:
            return None, None
        try:
            out = ex.exports(ladder, ex.state(search))
        except ValueError as e:
            return html.P(str(e), className="msg"), None
        link = (href or "").split("?")[0] + "?" + out["query"]
        blocks = [
            html.Div([html.H5(label), html.Pre(out[key], id=f"export-{key}-text")])
            for key, label in (
                ("json", "state (JSON)"),
                ("python", "Python"),
                ("command", "steerlens generate"),
                ("yaml", "sweep.yaml block"),
            )
        ]
        return blocks, html.Div(
            [html.Span("link to this view: "), html.Code(link, id="share-link")]
        )

    @application.callback(
        Output("download", "data"),
        Output("export-msg", "children"),
        Input("export-safetensors", "n_clicks"),
        Input("export-gguf", "n_clicks"),
        Input("export-lm-eval", "n_clicks"),
        State("url", "search"),
        State("alpha", "value"),
        State("ladder", "data"),
        prevent_initial_call=True,
    )
    def export_vector(_a, _b, _c, search, index, ladder):  # type: ignore[no-untyped-def]
        trigger = dash.callback_context.triggered[0]["prop_id"].split(".")[0]
        fmt = trigger.removeprefix("export-")
        alphas = (ladder or {}).get("alphas") or [1.0]
        alpha = alphas[max(0, min(int(index or 0), len(alphas) - 1))] or 1.0
        try:
            name, content = ex.export_vector(ex.state(search), fmt, alpha)
        except Exception as e:
            return no_update, _message(e)
        return dcc.send_bytes(content, name), f"wrote {name}"


def _form_state(v: dict[str, Any]) -> dict[str, Any]:
    """The form's controls (by id) as ``ExploreState`` fields; a file path beats the list."""
    return {
        "prompt": v["prompt"] or "",
        "user": v["user"],
        "vector": (v["vector-file"] or "").strip() or v["vector"] or "",
        "layers": v["layers"] or "",
        "gate": v["gate"] or "all",
        "alphas": v["alphas"] or "",
        "kl_budgets": v["budgets"] or "",
        "max_new_tokens": v["max-new"] or 0,
        "chat": bool(v["chat"]),
        "colour_by": v["colour-by"] or "kl",
    }


def _control_values(ex: Explorer, s: ExploreState) -> list[Any]:
    known = s.vector in ex.sources.vectors
    return [
        s.prompt,
        s.user,
        s.vector if known else None,
        "" if known else s.vector,
        ",".join(map(str, s.layers)),
        s.gate,
        ",".join(number(a) for a in s.alphas),
        ",".join(number(b) for b in s.kl_budgets),
        s.max_new_tokens,
        ["chat"] if s.chat else [],
        s.colour_by,
    ]


def _tokens(html: Any, cells: list[dict[str, Any]]) -> list[Any]:
    out = []
    for c in cells:
        cls = "tok" + (" changed" if c["changed"] else "") + (" steered" if c["steered"] else "")
        out.append(
            html.Span(
                c["text"],
                title=c["title"],
                className=cls,
                style={"backgroundColor": c["background"]},
            )
        )
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _table(html: Any, rows: list[dict[str, Any]], highlight: tuple[str, Any] | None = None) -> Any:
    if not rows:
        return None
    head = html.Tr([html.Th(k) for k in rows[0]])
    body = [
        html.Tr(
            [html.Td(_fmt(v)) for v in r.values()],
            className="current" if highlight and r.get(highlight[0]) == highlight[1] else None,
        )
        for r in rows
    ]
    return html.Table([html.Thead(head), html.Tbody(body)], className="readouts")


def _card(html: Any, card: dict[str, Any] | None) -> Any:
    if card is None:
        return html.P("pick a user to see their card")
    parts = [html.H4(f"{card['user']} · {card['n_prompts']} held-out prompt(s)")]
    parts.append(_table(html, card["vectors"]) or html.P("no personal vector in this run"))
    if card["true_weights"]:
        w = ", ".join(f"{k} {v:+.2f}" for k, v in card["true_weights"].items())
        parts.append(html.P(f"true attribute weights (simulated set): {w}"))
    sx = card["steerx"]
    if sx:
        parts.append(html.P(f"SteerX (reconstruction) description: {sx.get('description', '')}"))
        for target in sx.get("targets", [])[:2]:
            effects = target.get("effect", [])
            scale = max((abs(e) for e in effects), default=0.0) or 1.0
            chosen = set(target.get("selected", []))
            spans = [
                html.Span(
                    tok,
                    title=f"effect of the history {e:+.3f}"
                    + (" · selected" if i in chosen else ""),
                    className="tok" + (" changed" if i in chosen else ""),
                    style={
                        "backgroundColor": f"rgba(228, 87, 86, {max(0.0, e) / scale * 0.7:.3f})"
                    },
                )
                for i, (tok, e) in enumerate(zip(target.get("tokens", []), effects, strict=False))
            ]
            parts.append(
                html.Div(
                    [
                        html.Div(target.get("prompt", ""), className="cell-prompt"),
                        html.Div(spans, className="reply"),
                    ],
                    className="cell",
                )
            )
    detail = card.get("item_effects")
    if detail:
        spans = [
            html.Span(
                tok,
                id={"type": "sx-token", "index": i},
                n_clicks=0,
                title="click: the history conversations that drive this token",
                className="tok clickable",
            )
            for i, tok in enumerate(detail["tokens"])
        ]
        parts.append(
            html.Div(
                [
                    html.P(
                        "Item effects (each history conversation left out in turn): click a "
                        "token to see which conversations drive it."
                    ),
                    html.Div(spans, className="reply"),
                    html.Div(id="sx-drivers"),
                ],
                className="cell",
            )
        )
    return html.Div(parts, className="card")
