"""The explorer's page actions as plain functions, on a small study of the tiny model."""

from __future__ import annotations

import json
import re
import shlex

import pandas as pd
import pytest
import torch
from conftest import no_hooks_left
from explore_run import blocking_ladder, make_run
from typer.testing import CliRunner

import steerlens as sl
from steerlens.cli import app as cli
from steerlens.experiments.sweep.job import SweepConfig
from steerlens.explore import Explorer, ExploreState, Sources, cell_state, point_generations
from steerlens.explore.results import result_figures
from steerlens.explore.session import DEFAULT_BUDGETS
from steerlens.explore.users import condition_table
from steerlens.metrics.summaries import BASELINE


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("explore-run"))


@pytest.fixture(scope="module")
def ex(run, tiny_bridge):
    return Explorer(tiny_bridge, Sources(run=run), neutral_n=2)


def _state(ex, **kw):
    base = ex.default_state().to_dict()
    return ExploreState.from_dict({**base, "max_new_tokens": 5, "alphas": [0, 4, 8], **kw})


def test_sources_find_the_runs_vectors_users_prompts_and_condition(run):
    src = Sources(run=run)
    assert Sources(run=run / "results").vectors == src.vectors
    assert "population" in src.vectors
    users = src.users()
    assert users and all(f"dislike-weighted/{u}" in src.vectors for u in users)
    assert src.vector_keys(users[0])[0].endswith(users[0])
    assert src.condition() is not None
    assert set(src.prompts["user_id"]) <= set(users)
    with pytest.raises(ValueError, match="not a vector of this run"):
        src.load_vector("nope")
    with pytest.raises(ValueError, match="no such file"):
        src.load_vector(str(run / "missing.safetensors"))
    bad = run / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="could not be read"):
        src.load_vector(str(bad))
    with pytest.raises(ValueError, match="no such folder"):
        Sources(run=run / "nowhere")


def test_the_default_view_is_a_users_held_out_prompt_and_the_population_vector(ex):
    s = ex.default_state()
    assert s.user in ex.sources.users() and s.prompt in ex.sources.user_prompts(s.user)
    assert s.vector == "population"
    assert s.alphas == (0.0, 4.0, 8.0) and not s.kl_budgets  # the run's own α grid
    assert ex.state("") == s and ex.state("?") == s
    bare = Explorer(ex.model, Sources(vectors_dir=ex.sources.run / "vectors"), neutral_n=0)
    assert bare.default_state().kl_budgets == DEFAULT_BUDGETS  # no grid: KL budgets


def test_the_ladder_is_kept_and_the_view_switches_alpha_without_recomputing(ex, monkeypatch):
    state = _state(ex)
    first = ex.ladder(state)
    from steerlens.explore import session

    monkeypatch.setattr(session, "run_ladder", lambda *a, **k: pytest.fail("recomputed"))
    assert ex.ladder(ExploreState.from_query(state.to_query())) is first
    views = [ex.view(first, i, "kl") for i in range(3)]
    assert [v["alpha"] for v in views] == [0.0, 4.0, 8.0]
    assert views[0]["reproduced"] is True and "reproduced" in views[0]["badge"]
    assert all(c["background"] == "transparent" for c in views[0]["steered"])  # KL 0 at α 0
    assert [c["text"] for c in views[0]["steered"]] == [c["text"] for c in views[0]["unsteered"]]
    assert len(views[2]["readouts"]) == 3 and views[2]["readouts"][2]["α"] == 8.0
    assert "tiny-random" in views[0]["provenance"] and "steerlens" in views[0]["provenance"]
    # colouring and the user shown are not part of the ladder: switching them computes nothing
    again = ExploreState.from_dict({**state.to_dict(), "colour_by": "projection", "user": None})
    assert ex.ladder(again) is first
    by_projection = ex.view(first, 2, "projection")
    for cell, token in zip(by_projection["steered"], first["rows"][2]["tokens"], strict=True):
        colour = cell["background"]
        if colour != "transparent":  # red above zero, blue below
            assert colour.startswith("rgba(228" if token["projection"] > 0 else "rgba(76")
    assert by_projection["steered"] != views[2]["steered"]


def test_the_python_and_command_exports_reproduce_the_ladder(ex):
    ladder = ex.ladder(_state(ex, chat=False))
    out = ex.exports(ladder)
    texts = [r["text"] for r in ladder["rows"]]
    scope: dict = {}
    exec(out["python"], scope)  # the exported code, run as a researcher would
    assert scope["texts"] == texts
    words = shlex.split(out["command"].splitlines()[1])
    result = CliRunner().invoke(cli, [*words[1:], "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [r["text"] for r in rows] == texts
    assert ExploreState.from_json(out["json"]) == ExploreState.from_dict(ladder["state"])
    for text in (out["python"], out["command"], out["yaml"]):
        assert text.startswith("# steerlens explore: model tiny-random")


def test_the_sweep_block_loads_as_a_sweep_config(ex, tmp_path):
    ladder = ex.ladder(_state(ex, gate="first:2"))
    path = tmp_path / "sweep.yaml"
    path.write_text(ex.exports(ladder)["yaml"])
    cfg = SweepConfig.from_file(path)
    assert cfg.alphas == [0.0, 4.0, 8.0] and cfg.gates == ["first:2"]
    assert cfg.vector_files == {"population": str(ex.sources.vectors["population"])}
    assert cfg.model == "tiny-random" and cfg.max_new_tokens == 5


@pytest.mark.parametrize("fmt", ["safetensors", "gguf", "lm-eval"])
def test_the_exported_vector_reads_back_equal(ex, tmp_path, fmt):
    state = _state(ex, layers=(3,))
    name, content = ex.export_vector(state, fmt)
    path = tmp_path / name
    path.write_bytes(content)
    want = ex.sources.load_vector("population").select([3])
    if fmt == "safetensors":
        got = sl.SteeringVector.load(path)
        assert got.metadata["explore"]["vector"] == "population"
        assert got.metadata["explore"]["model"] == "tiny-random"
    elif fmt == "gguf":
        got = sl.SteeringVector.from_gguf(path)
    else:
        got = sl.SteeringVector.from_lm_eval(path)
    assert got.layers == [3]
    torch.testing.assert_close(got.directions[3].float(), want.directions[3].float())


def test_the_condition_pane_projects_as_generation_does_and_lists_the_flips(ex, tiny_bridge):
    state = _state(ex)
    cond = ex.sources.condition()
    prompts = ex.sources.user_prompts(state.user)
    table = condition_table(tiny_bridge, cond, prompts, chat=state.chat)
    pop = ex.sources.load_vector("population")
    gen = sl.generate(
        tiny_bridge,
        prompts,
        steering=pop.conditioned(cond),
        alpha=0.0,
        max_new_tokens=1,
        chat=state.chat,
        return_tokens=True,
    )
    scale = 1e-4 * (1 + float(table["projection"].abs().max()))
    assert table["projection"].tolist() == pytest.approx(gen.projections, abs=scale)
    projections = sorted(table["projection"])
    middle = (projections[0] + projections[-1]) / 2
    pane = ex.condition(_state(ex, threshold=middle), None)
    expect = [
        p
        for p, x in zip(table["prompt"], table["projection"], strict=True)
        if (x > middle) != (x > cond.threshold)
    ]
    assert pane["flipped"] == expect and pane["threshold"] == middle
    assert pane["fires"] == sum(x > middle for x in table["projection"])
    symbols = [m for trace in pane["figure"].data for m in trace.marker.symbol]
    assert symbols.count("diamond") == len(expect) and len(symbols) == len(table)
    lines = {shape.x0 for shape in pane["figure"].layout.shapes}
    assert {middle, cond.threshold} <= lines
    assert ex.condition(state, None)["flipped"] == []  # at the fitted threshold


def test_the_user_card_has_the_vectors_cosines_and_true_weights(ex):
    user = ex.default_state().user
    card = ex.card(user)
    keys = {v["key"] for v in card["vectors"]}
    assert keys == {f"dislike-weighted/{user}", f"bradley-terry/{user}"}
    assert all(-1 <= v["cosine_to_population"] <= 1 for v in card["vectors"])
    truth = json.loads((sl.data.prism.DEMO_DIR / "ground_truth.json").read_text())
    assert card["true_weights"] == truth["users"][user]["weights"]
    assert ex.card(None) is None


def _curve(fig, name):
    return next(
        i
        for i, t in enumerate(fig["data"])
        if t.get("name") == name and "markers" in (t.get("mode") or "")
    )


def test_the_browser_has_every_report_figure_clickable_ones_included(ex, run):
    figs = result_figures(ex.sources)
    assert {"dose_response", "selectivity", "gating", "ppa"} <= set(figs)
    from steerlens.reporting.study import report_figures

    assert set(figs) == set(report_figures(run))  # the report's figures, all of them


def test_a_dose_point_gives_its_generations_and_reruns_live(ex):
    fig = result_figures(ex.sources)["dose_response"][1].to_dict()
    point = {"curveNumber": _curve(fig, "population"), "x": 4.0}
    title, frame = point_generations(ex.sources, "dose_response", fig, point)
    cells = ex.sources.cells("dose")
    report = ex.sources.report_prompts()
    chosen = cells[
        (cells["method"] == "population")
        & (cells["alpha"] == 4.0)
        & cells["prompt_id"].isin(report)
    ]
    assert title == "population at α = 4 · report prompts" and len(frame) == len(chosen) > 0
    assert set(frame["method"]) == {"population"} and set(frame["alpha"]) == {4.0}
    base = cells[cells["method"] == BASELINE].set_index("prompt_id")["generation"]
    assert frame["unsteered"].tolist() == base.reindex(chosen["prompt_id"]).tolist()
    # "rerun this cell live": the ladder's row at the cell's α is the cell's own reply
    row = frame.iloc[0].to_dict()
    state = cell_state(row, ex.sources.vector_keys(), max_new_tokens=5)
    assert 4.0 in state.alphas and state.vector == "population"
    ladder = ex.ladder(state)
    at = ladder["alphas"].index(4.0)
    assert ladder["rows"][at]["text"] == row["generation"]
    assert ladder["unsteered"]["text"] == row["unsteered"]


def test_a_personal_method_point_reruns_with_that_users_vector(ex):
    fig = result_figures(ex.sources)["dose_response"][1].to_dict()
    point = {"curveNumber": _curve(fig, "bradley-terry"), "x": 8.0}
    _, frame = point_generations(ex.sources, "dose_response", fig, point)
    row = frame.iloc[0].to_dict()
    state = cell_state(row, ex.sources.vector_keys(), max_new_tokens=5)
    assert state.vector == f"bradley-terry/{row['user']}" and state.user == row["user"]
    assert ex.ladder(state)["rows"][state.alphas.index(8.0)]["text"] == row["generation"]


def test_a_gating_point_gives_the_generations_at_that_gate(ex):
    fig = result_figures(ex.sources)["gating"][1].to_dict()
    first = _curve(fig, "first K generated tokens")
    title, frame = point_generations(ex.sources, "gating", fig, {"curveNumber": first, "x": 2})
    assert title == "population, gate first:2 · report prompts"
    assert set(frame["gate"]) == {"first:2"} and set(frame["method"]) == {"population"}
    assert set(frame["alpha"]) == {ex.sources.summary()["operating_alpha"]}
    ref = next(i for i, t in enumerate(fig["data"]) if t.get("name") == "gate: prefill")
    _, frame = point_generations(ex.sources, "gating", fig, {"curveNumber": ref, "x": 0})
    assert set(frame["gate"]) == {"prefill"}


def test_a_conditional_point_gives_its_arm_in_its_category(ex, run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    dose = pd.read_parquet(copy / "results" / "sweep" / "dose" / "cells.parquet")
    cond = dose[dose["method"] == "population"].assign(gate="condition")
    (copy / "results" / "sweep" / "conditional").mkdir(parents=True)
    cond.to_parquet(copy / "results" / "sweep" / "conditional" / "cells.parquet")
    src = Sources(run=copy)
    cats = sorted(dose["category"].unique())
    table = pd.DataFrame(
        [
            {"category": c, "alpha": a, "arm": arm, "mae_change_pct": 0.0, "n": 1}
            for c in cats
            for a in (0.0, 4.0)
            for arm in ("conditional", "unconditional")
        ]
    )
    fig = sl.plots.conditional_dose(table).to_dict()
    last = max(i for i, t in enumerate(fig["data"]) if t["name"] == "conditional")
    title, frame = point_generations(src, "conditional", fig, {"curveNumber": last, "x": 4.0})
    assert set(frame["category"]) == {cats[-1]} and set(frame["gate"]) == {"condition"}
    assert title.startswith(f"conditional at α = 4 on {cats[-1]} prompts")
    unc = next(i for i, t in enumerate(fig["data"]) if t["name"] == "unconditional")
    _, frame = point_generations(src, "conditional", fig, {"curveNumber": unc, "x": 4.0})
    assert set(frame["category"]) == {cats[0]} and set(frame["gate"]) == {"all"}


def test_a_click_on_nothing_is_a_message(ex):
    fig = result_figures(ex.sources)["dose_response"][1].to_dict()
    with pytest.raises(ValueError, match="no generations behind this point"):
        point_generations(ex.sources, "dose_response", fig, {"curveNumber": 0, "x": 123.0})
    with pytest.raises(ValueError, match="no generations behind the 'ppa' figure"):
        point_generations(ex.sources, "ppa", fig, {"curveNumber": 0, "x": 1.0})
    with pytest.raises(ValueError, match="no vector"):
        cell_state({"method": "other", "user": "u", "alpha": 1.0, "prompt": "p"}, ["population"])


def test_a_selectivity_cell_gives_the_population_generations_of_its_category(ex):
    fig = result_figures(ex.sources)["selectivity"][1].to_dict()
    cells = ex.sources.cells("dose")
    report = ex.sources.report_prompts()
    category = sorted(cells[cells["prompt_id"].isin(report)]["category"].unique())[0]
    _, frame = point_generations(
        ex.sources, "selectivity", fig, {"curveNumber": 0, "x": "α=8", "y": category}
    )
    chosen = cells[
        (cells["method"] == "population")
        & (cells["alpha"] == 8.0)
        & (cells["category"] == category)
        & cells["prompt_id"].isin(report)
    ]
    assert len(frame) == len(chosen) > 0 and set(frame["category"]) == {category}
    assert {"user", "prompt", "unsteered", "generation", "utility", "degenerate"} <= set(frame)


def test_the_cli_serves_the_run_on_localhost_and_refuses_a_missing_folder(run, monkeypatch):
    dash = pytest.importorskip("dash")
    seen: dict = {}
    monkeypatch.setattr(dash.Dash, "run", lambda self, **kw: seen.update(kw, app=self))
    result = CliRunner().invoke(cli, ["explore", "--run", str(run), "--model", "tiny-random"])
    assert result.exit_code == 0, result.output
    assert (seen["host"], seen["port"], seen["debug"]) == ("127.0.0.1", 8050, False)
    assert seen["app"].explorer.sources.run == run / "results"
    seen.clear()  # no --model: the run's own model (summary.json), not the embedded one
    result = CliRunner().invoke(cli, ["explore", "--run", str(run), "--port", "8051"])
    assert result.exit_code == 0, result.output
    assert sl.model_name(seen["app"].explorer.model) == "tiny-random" and seen["port"] == 8051
    result = CliRunner().invoke(
        cli, ["explore", "--run", str(run / "nowhere"), "-m", "tiny-random"]
    )
    assert result.exit_code == 2
    assert "no such folder" in re.sub(r"[│╭╮╰╯─\s]+", " ", result.output)
    seen.clear()  # no run: the workbench on a vector folder alone
    result = CliRunner().invoke(
        cli, ["explore", "--vectors", str(run / "results" / "vectors"), "-m", "tiny-random"]
    )
    assert result.exit_code == 0 and "population" in seen["app"].explorer.sources.vectors


def test_a_job_reports_its_stage_and_a_cancel_stops_it_there(ex, monkeypatch):
    import threading
    import time

    release = threading.Event()
    blocking_ladder(monkeypatch, release)
    state = _state(ex, alphas=[0, 1, 3])
    job_id, ladder = ex.start(state)
    assert job_id and ladder is None
    job = ex.job(job_id)
    deadline = time.monotonic() + 10
    while job.status != "stage one" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.report() == {"done": False, "status": "stage one", "error": None, "cancelled": False}
    ex.cancel(job_id)
    release.set()
    assert job.finished.wait(10)
    assert job.report()["status"] == "cancelled" and job.result is None
    assert ex.lock.acquire(blocking=False)  # the model is free again
    ex.lock.release()
    assert no_hooks_left(ex.model)
    monkeypatch.undo()  # the same state again: computed afresh, not taken from the cancel
    job_id, _ = ex.start(state)
    assert ex.job(job_id).finished.wait(30) and ex.job(job_id).result is not None
    assert ex.start(state) == ("", ex.job(job_id).result)  # now kept: at once


def test_a_failed_job_reports_its_error_and_bad_input_fails_before_starting(ex, monkeypatch):
    from steerlens.explore import session

    def broken(*a, **k):
        raise RuntimeError("the model fell over")

    monkeypatch.setattr(session, "run_ladder", broken)
    job_id, _ = ex.start(_state(ex, alphas=[0, 1, 5]))
    job = ex.job(job_id)
    assert job.finished.wait(10) and job.error == "RuntimeError: the model fell over"
    with pytest.raises(ValueError, match="no such file"):
        ex.start(_state(ex, vector="/no/such/file.safetensors"))
    with pytest.raises(ValueError, match="not known"):
        ex.job("nope")


def test_a_new_view_cancels_the_running_one_and_the_same_view_joins_it(ex, monkeypatch):
    import threading

    release = threading.Event()
    blocking_ladder(monkeypatch, release)
    first_id, _ = ex.start(_state(ex, alphas=[0, 1, 7]))
    assert ex.start(_state(ex, alphas=[0, 1, 7], colour_by="projection"))[0] == first_id
    second_id, _ = ex.start(_state(ex, alphas=[0, 2, 7]))
    assert second_id != first_id and ex.job(first_id).cancelled.is_set()
    release.set()
    assert ex.job(first_id).finished.wait(10) and ex.job(first_id).status == "cancelled"
    assert ex.job(second_id).finished.wait(30) and ex.job(second_id).result is not None


def test_the_json_export_carries_the_provenance_and_reads_back(ex):
    ladder = ex.ladder(_state(ex))
    data = json.loads(ex.exports(ladder)["json"])
    assert data["provenance"]["model"] == "tiny-random" and "steerlens" in data["provenance"]
    assert ExploreState.from_json(json.dumps(data)) == ExploreState.from_dict(ladder["state"])


def test_item_effects_name_the_history_conversations_that_drive_a_token(ex, run, tmp_path):
    import shutil

    from steerlens.explore.users import token_drivers

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    user = ex.default_state().user
    detail = {
        "user": user,
        "tokens": ["Hi", " there", "!"],
        "items": ["first conversation", "second conversation", "third conversation"],
        "item_effect": [[0.1, -0.2, 0.0], [0.3, 0.05, -0.1], [-0.2, 0.4, 0.2]],
    }
    (copy / "results" / "steerx_effects.json").write_text(json.dumps({"detail": detail}))
    card = Explorer(ex.model, Sources(run=copy), neutral_n=0).card(user)
    assert card["item_effects"] == detail
    drivers = token_drivers(card["item_effects"], 1)
    assert [d["item"] for d in drivers] == [
        "third conversation",
        "second conversation",
        "first conversation",
    ]
    assert drivers[0]["effect"] == 0.4 and len(token_drivers(detail, 0, top=1)) == 1
    with pytest.raises(ValueError, match="has 3 tokens"):
        token_drivers(detail, 3)
    other = next(u for u in ex.sources.users() if u != user)
    assert Explorer(ex.model, Sources(run=copy), neutral_n=0).card(other)["item_effects"] is None
