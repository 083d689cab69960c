"""Summary tables of a sweep (exact arithmetic), every figure from a small frame, the report
page (and, when Chromium is installed, that it renders offline with no script errors)."""

from __future__ import annotations

import itertools
import math
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from steerlens.metrics.side_effects import side_effect_table
from steerlens.metrics.summaries import dose_response_table, gating_table, selectivity_table
from steerlens.reporting import plots
from steerlens.reporting.page import write_report

FIVE_USERS = ("u0", "u1", "u2", "u3", "u4")  # MIN_CLUSTERS: enough users for an interval


def _cells(users: tuple[str, ...] = ("u",)) -> pd.DataFrame:
    """Two prompts (one per category) for each user; baseline errors 0.2 / 0.4; utility 1 / 2."""
    rows = []
    prompts = (("p0", "benign", 0.2, 1.0), ("p1", "harmful", 0.4, 2.0))
    for user, (pid, cat, err, util) in itertools.product(users, prompts):
        rows.append(
            dict(
                key=f"none|{user}|{pid}",
                method="none",
                user=user,
                alpha=0.0,
                gate="all",
                prompt_id=pid,
                category=cat,
                abs_error=err,
                utility=util,
            )
        )
        for a, f in ((1.0, 0.5), (2.0, 1.5)):
            rows.append(
                dict(
                    key=f"pop|{user}|{a}|{pid}",
                    method="pop",
                    user=user,
                    alpha=a,
                    gate="all",
                    prompt_id=pid,
                    category=cat,
                    abs_error=err * f,
                    utility=util + a,
                )
            )
        for gate, f in (("first:0", 1.0), ("first:4", 0.75), ("prefill", 1.0)):
            rows.append(
                dict(
                    key=f"pop|{user}|1|{gate}|{pid}",
                    method="pop",
                    user=user,
                    alpha=1.0,
                    gate=gate,
                    prompt_id=pid,
                    category=cat,
                    abs_error=err * f,
                    utility=util,
                )
            )
    frame = pd.DataFrame(rows)
    frame["toxicity"] = 0.1
    frame["perplexity"] = 3.0 + frame["alpha"]
    frame["degenerate"] = frame["alpha"] > 1.5
    frame["empty"] = False
    frame["generation"] = "some words here and there"
    return frame


def test_dose_response_table_is_paired_with_the_unsteered_cells():
    t = dose_response_table(_cells(), n_boot=200)
    assert list(t["alpha"]) == [0.0, 1.0, 2.0] and set(t["method"]) == {"pop"}
    a1 = t[t["alpha"] == 1.0].iloc[0]
    assert a1["mae"] == pytest.approx(0.15)
    assert a1["delta_pct"] == pytest.approx(100 * (0.15 / 0.3 - 1))
    # one user: below MIN_CLUSTERS users the intervals are withheld, not bootstrapped
    assert a1["n"] == 1 and a1["n_prompts"] == 2
    assert math.isnan(a1["delta_low"]) and math.isnan(a1["delta_high"])
    assert a1["utility_gain"] == pytest.approx(1.0) and math.isnan(a1["utility_low"])
    # five users: every prompt's error halves at α 1 and gains 1 utility, so every paired
    # resample gives exactly -50 % and +1 (a resample that broke the pairing would not)
    five = dose_response_table(_cells(FIVE_USERS), n_boot=200)
    f1 = five[five["alpha"] == 1.0].iloc[0]
    assert f1["n"] == 5 and f1["delta_pct"] == pytest.approx(-50.0)
    assert (f1["delta_low"], f1["delta_high"]) == (pytest.approx(-50.0), pytest.approx(-50.0))
    assert (f1["utility_low"], f1["utility_high"]) == (pytest.approx(1.0), pytest.approx(1.0))
    assert t[t["alpha"] == 2.0].iloc[0]["degenerate_share"] == 1.0
    assert t[t["alpha"] == 0.0].iloc[0]["delta_pct"] == 0.0
    with pytest.raises(ValueError, match="unsteered"):
        dose_response_table(_cells()[lambda d: d.method != "none"])


def test_gating_and_selectivity_tables():
    g = gating_table(_cells(), method="pop", alpha=1.0, n_boot=200)
    assert list(g["gate"]) == ["prefill", "first:0", "first:4", "all"]
    assert list(g["k"].fillna(-1)) == [0.0, 0.0, 4.0, -1]
    assert g.set_index("gate").loc["first:4", "delta_pct"] == pytest.approx(-25.0)
    assert g.set_index("gate").loc["prefill", "delta_pct"] == pytest.approx(0.0)
    sel = selectivity_table(_cells(), method="pop")
    assert sel.loc["benign", 1.0] == pytest.approx(-50.0)
    assert sel.loc["harmful", 2.0] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="no cells"):
        gating_table(_cells(), method="pop", alpha=3.0)


def _figures() -> dict[str, go.Figure]:
    cells = _cells()
    ppa = pd.DataFrame(
        [
            dict(method=m, measure="ppa_projection", mean=v, low=v - 0.05, high=v + 0.05, n=10)
            for m, v in (
                ("population", 0.6),
                ("personalized (dislike-weighted)", 0.7),
                ("chance", 0.5),
                ("oracle", 0.85),
            )
        ]
    )
    coords = pd.DataFrame(
        {"c0": [0.1, -0.2], "c1": [0.3, 0.0], "group": ["a", "b"]}, index=["u1", "u2"]
    )
    util = pd.DataFrame([dict(method="pop", group=g, mean=0.1, low=0.0, high=0.2) for g in "ab"])
    mmlu = pd.DataFrame([dict(condition=c, mean=0.3, low=0.2, high=0.4) for c in ("u", "s")])
    side = side_effect_table(
        pd.DataFrame(
            [
                dict(method=m, alpha=a, text_id=t, kl=0.01 * a * (t + 1), nll=20 + a, n_tokens=10)
                for m in ("pop", "bt")
                for a in (0.0, 1.0, 2.0)
                for t in range(4)
            ]
        ),
        n_boot=100,
    )
    calibrated = pd.DataFrame(
        [
            dict(
                method=m,
                kl_budget=b,
                alpha=2 * b,
                alpha_min=b,
                alpha_max=3 * b,
                delta_pct=-10 * b,
                delta_low=-20 * b,
                delta_high=0.0,
            )
            for m in ("pop", "bt")
            for b in (0.0, 0.05, 0.1)
        ]
    )
    return {
        "dose": plots.dose_response(dose_response_table(cells, n_boot=100)),
        "dose_side": plots.dose_response(dose_response_table(cells, n_boot=100), side_effects=side),
        "calibrated": plots.calibrated_curves(calibrated),
        "selectivity": plots.selectivity_heatmap(selectivity_table(cells, method="pop")),
        "gating": plots.gating_curve(gating_table(cells, method="pop", alpha=1.0, n_boot=100)),
        "ppa": plots.ppa_bars(ppa),
        "users": plots.users_in_basis(coords),
        "utility": plots.utility_by_group(util),
        "mmlu": plots.mmlu_bars(mmlu),
    }


def test_every_figure_builds_from_a_small_frame():
    figs = _figures()
    dose = figs["dose"]
    delta = next(tr for tr in dose.data if tr.name == "pop" and tr.xaxis == "x")
    assert list(delta.y) == pytest.approx([0.0, -50.0, 50.0])
    heat = figs["selectivity"].data[0]
    assert [pytest.approx(r) for r in heat.z.tolist()] == [[-50.0, 50.0], [-50.0, 50.0]]
    gate = figs["gating"].data[0]
    assert list(gate.x) == [0.0, 4.0] and list(gate.y) == pytest.approx([0.0, -25.0])
    for fig in figs.values():
        assert isinstance(fig, go.Figure) and len(fig.data) >= 1
    with pytest.raises(ValueError, match="delta_pct"):
        plots.dose_response(pd.DataFrame({"method": ["x"], "alpha": [0.0]}))


def test_save_figure_writes_html_and_never_fails_without_chrome(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "_chrome_available", lambda: False)
    files = plots.save_figure(_figures()["dose"], tmp_path / "f" / "dose")
    assert [f.name for f in files] == ["dose.html"] and files[0].stat().st_size > 1000
    assert (tmp_path / "f" / "plotly.min.js").exists()  # opens offline


def test_save_figures_without_png_never_starts_chromium(tmp_path, monkeypatch):
    import plotly.io as pio

    monkeypatch.setattr(plots, "_chrome_available", lambda: True)
    exported: list[object] = []
    monkeypatch.setattr(pio, "write_images", lambda **kw: exported.append(kw["file"]))
    figs = {tmp_path / "dose": _figures()["dose"]}
    assert [f.name for f in plots.save_figures(figs, png=False)] == ["dose.html"]
    assert exported == []
    assert [f.name for f in plots.save_figures(figs)] == ["dose.html", "dose.png"]
    assert exported == [[tmp_path / "dose.png"]]


def _gens() -> pd.DataFrame:
    return pd.DataFrame(
        [
            dict(
                user=u,
                method=m,
                alpha=a,
                gate="all",
                category="c",
                prompt=f"q </script> {u}",
                preferred="pref",
                unsteered="plain",
                generation=f"{m}-{a}",
            )
            for u in ("u1", "u2")
            for m in ("pop", "bt")
            for a in (0.5, 1.0)
        ]
    )


def test_report_page_is_self_contained(tmp_path):
    page = write_report(
        tmp_path,
        title="T",
        config={"x": 1},
        tables={"t": pd.DataFrame({"a": [1.5]})},
        figures=_figures(),
        generations=_gens(),
        notes=["simulated data"],
    )
    text = page.read_text()
    assert '<script src="plotly.min.js">' in text and "cdn" not in text.lower()
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    assert text.count('class="figure"') == len(_figures())
    assert "q <\\/script> u1" in text  # data cannot close its script tag
    with pytest.raises(ValueError, match="generation"):
        write_report(tmp_path, title="T", generations=_gens().drop(columns="generation"))


def _png_pixels(path: Path) -> tuple[int, int, set[bytes]]:
    """Width, height and the set of distinct RGB(A) pixels of a non-interlaced 8-bit PNG."""
    data = path.read_bytes()
    pos, idat, width, height, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
            ctype = body[9]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    bpp = 4 if ctype == 6 else 3
    raw, stride, prev, colours = zlib.decompress(idat), width * bpp, bytearray(width * bpp), set()
    for y in range(height):
        f, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 7 == 0:
            colours.update(bytes(line[i : i + 3]) for i in range(0, stride, bpp * 5))
        prev = line
    return width, height, colours


CHROME = next(
    (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
)


def _headless() -> list[str]:
    """Headless Chromium with the network cut off (the page must render offline)."""
    return [
        str(CHROME),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=8000",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=127.0.0.1:9",
    ]


@pytest.mark.skipif(CHROME is None, reason="no Chromium installed (make install adds Debian's)")
def test_report_page_renders_in_headless_chromium_offline(tmp_path):
    write_report(
        tmp_path,
        title="T",
        figures=_figures(),
        generations=_gens(),
        tables={"t": pd.DataFrame({"a": [1.5]})},
    )
    url = (tmp_path / "index.html").as_uri()
    flags = _headless()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    body = dom.stdout[dom.stdout.find("<body") :].split(">", 1)[0]
    assert f'data-rendered="{len(_figures())}"' in body, body
    assert 'data-errors="0"' in body, body
    # the generation browser filled itself from its data: the first user, method, alpha
    # and gate picked, their one generation shown beside the prompt and preferred response
    assert '<span id="gen-count">1 generation(s)</span>' in dom.stdout
    listing = dom.stdout[dom.stdout.find('id="gen-list"') :]
    assert "preferred response" in listing and "unsteered" in listing
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, "--window-size=1200,2400", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
    )
    width, height, colours = _png_pixels(shot)
    assert (width, height) == (1200, 2400)
    assert len(colours) > 20  # not blank: text, tables and plots in many colours


@pytest.mark.skipif(CHROME is None, reason="no Chromium installed (make install adds Debian's)")
@pytest.mark.parametrize("width", [1280, 400])
def test_report_page_fits_the_window_with_every_legend_inside_its_figure(tmp_path, width):
    from steerlens.reporting.tables import dose_view

    cells = _cells()
    write_report(
        tmp_path,
        title="T",
        headline=["A finding, 0.150 [0.023, 0.300]."],
        figures=_figures(),
        generations=_gens(),
        tables={"dose": dose_view(dose_response_table(cells, n_boot=100))},
    )
    flags = [*_headless(), f"--window-size={width},2000"]
    url = (tmp_path / "index.html").as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    body = dom.stdout[dom.stdout.find("<body") :].split(">", 1)[0]
    assert f'data-rendered="{len(_figures())}"' in body, body
    assert 'data-overflow="0"' in body, body  # no horizontal scrollbar
    assert 'data-legends-out="none"' in body, body


def test_readable_tables_put_each_estimate_and_its_interval_in_one_cell():
    from steerlens.reporting.tables import dose_view, est, num

    assert est(0.15, 0.0234, 0.3) == "0.150 [0.0234, 0.300]"
    assert est(-4.123, -9.0, 1.0, signed=True) == "-4.12 [-9.00, +1.00]"
    assert num(None) == "–" and num(float("nan")) == "–" and num(12) == "12"
    assert num(1234.5) == "1234" or num(1234.5) == "1235"
    view = dose_view(dose_response_table(_cells(FIVE_USERS), n_boot=100))
    assert list(view.columns)[:4] == ["method", "α", "toxicity MAE", "ΔMAE vs unsteered, %"]
    assert all(isinstance(v, str) for v in view.to_numpy().ravel())
    assert "[" in view["toxicity MAE"].iloc[1]


def test_append_links_adds_then_replaces_a_section(tmp_path):
    from steerlens.reporting.page import append_links

    page = write_report(tmp_path, title="T", tables={"t": pd.DataFrame({"a": [1]})})
    append_links(page, "SteerX pages", {"card u1": "steerx_user_u1.html"})
    append_links(page, "SteerX pages", {"card u2": "steerx_user_u2.html"})
    text = page.read_text()
    assert text.count('id="links-steerx-pages"') == 1
    assert "steerx_user_u2.html" in text and "steerx_user_u1.html" not in text
    assert text.index("links-steerx-pages") < text.index("</main>")


# --- sl.plots: the public figures, from the frames and objects the library returns -------


def test_sl_plots_is_the_report_figures_each_with_an_example():
    import steerlens as sl

    assert sl.plots.__all__ == plots.__all__
    for name in plots.__all__:
        fn = getattr(sl.plots, name)
        assert fn is getattr(plots, name)
        doc = fn.__doc__ or ""
        assert "Example: ``" in doc and f"sl.plots.{name}(" in doc.split("Example:")[1], name


def _ys(fig: go.Figure) -> str:
    return fig.to_json()  # every trace and the layout (NaN written alike)


def test_sweep_figures_take_a_sweeps_cells_as_they_take_its_summary_tables():
    cells = _cells(FIVE_USERS)
    assert _ys(plots.dose_response(cells)) == _ys(plots.dose_response(dose_response_table(cells)))
    assert _ys(plots.selectivity_heatmap(cells, method="pop")) == _ys(
        plots.selectivity_heatmap(selectivity_table(cells, method="pop"))
    )
    assert _ys(plots.gating_curve(cells, method="pop", alpha=1.0)) == _ys(
        plots.gating_curve(gating_table(cells, method="pop", alpha=1.0))
    )
    with pytest.raises(ValueError, match="alpha="):
        plots.gating_curve(cells)


def test_steerx_figures_take_the_objects_steerx_returns(tiny_bridge):
    import steerlens as sl

    history = [
        {"role": "user", "content": "I like short answers."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Tell me about cats."},
        {"role": "assistant", "content": "Cats purr."},
    ]
    kw = dict(prompt="Say hi.", response="Hi there friend.", history=history)
    items = sl.steerx.item_effects(tiny_bridge, **kw)
    fig = plots.effect_heatmap(items)
    heat = fig.data[0]
    np.testing.assert_array_equal(np.asarray(heat.z), items.effect.double().numpy())
    assert [y.split(":", 1)[1] for y in heat.y] == ["I like short answers.", "Tell me about cats."]
    assert len(heat.x) == len(items.target.tokens)
    with pytest.raises(ValueError, match="labels"):
        plots.effect_heatmap(items.effect)  # a plain matrix needs its labels
    ablated = sl.steerx.history_token_effects(tiny_bridge, **kw, max_tokens=5)
    heat = plots.effect_heatmap(ablated).data[0]
    np.testing.assert_array_equal(np.asarray(heat.z), ablated.effect.double().numpy())
    assert [y.split(":", 1)[1] for y in heat.y] == [t[:40] for t in ablated.history_tokens]
    assert len(heat.y) == 5
    effects = sl.steerx.history_effects(tiny_bridge, **kw)
    a, b = plots.token_effects(effects), plots.token_effects(effects.to_frame())
    assert a.to_plotly_json()["data"] == b.to_plotly_json()["data"]


def test_user_card_outlines_the_kept_tokens():
    card = {
        "user": "u7",
        "group": "g",
        "description": "likes brevity " * 20,
        "targets": [
            {"prompt": "p", "tokens": ["a", "b", "c"], "effect": [0.1, -0.2, 0.3], "selected": [2]},
            {"prompt": "q", "tokens": ["d", "e"], "effect": [0.0, 0.5], "selected": [1]},
        ],
    }
    fig = plots.user_card(card)
    tokens, kept = fig.data[0], fig.data[-1]
    assert list(tokens.marker.color) == [0.1, -0.2, 0.3, 0.0, 0.5]
    assert kept.name == "kept as preference-driven" and list(kept.x) == [2, 4]
    assert "u7" in fig.layout.title.text and "likes brevity" in fig.layout.title.text
    with pytest.raises(ValueError, match="no targets"):
        plots.user_card({"user": "x", "targets": []})


def test_utility_views_show_each_arms_degenerate_share():
    from steerlens.reporting.tables import conditional_view, dose_view, ppa_view

    view = dose_view(dose_response_table(_cells(FIVE_USERS), n_boot=100))
    cols = list(view.columns)
    assert "keyword-density utility gain" in cols and "degenerate share" in cols
    cond = pd.DataFrame(
        [
            dict(method="population", measure="utility_gain", arm=arm, mean=m, low=m - 0.1,
                 high=m + 0.1, n=6, unit="user", degenerate_share=d)
            for arm, m, d in (("conditional", 0.2, 0.1), ("unconditional", 0.1, 0.3),
                              ("difference", 0.1, None))
        ]
    )  # fmt: skip
    row = conditional_view(cond).iloc[0]
    assert row["conditional"].endswith("(degenerate 0.10)")
    assert row["unconditional"].endswith("(degenerate 0.30)")
    assert "degenerate" not in row["conditional − unconditional"]  # its arms are beside it
    ppa = pd.DataFrame(
        [dict(method="population", measure="utility_gain", mean=0.1, low=0.0, high=0.2, n=6,
              degenerate_share=0.05)]
    )  # fmt: skip
    assert ppa_view(ppa).iloc[0]["estimate [95 %]"].endswith("(degenerate 0.050)")
    util = pd.DataFrame(
        [dict(method="population", group="all", mean=0.1, low=0.0, high=0.2, n=6,
              degenerate_share=0.25)]
    )  # fmt: skip
    fig = plots.utility_by_group(util)
    assert fig.data[0].text[0] == "0.100 (deg. 0.25)"
    assert "Keyword-density" in fig.layout.title.text
