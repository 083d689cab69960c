from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import ESTIMATE_KEYS, SUMMARY_KEYS

import steerlens as sl
from steerlens.experiments import conditional as conditional_mod
from steerlens.experiments import demo as demo_mod
from steerlens.experiments.demo import DemoConfig, run_demo
from steerlens.experiments.splits import Split
from steerlens.experiments.steps import REGISTRY
from steerlens.experiments.steps import calibrated as calibrated_step
from steerlens.experiments.steps import job as job_mod
from steerlens.experiments.token_effects import TokenEffectsConfig
from steerlens.metrics.token_truth import text_id
from steerlens.reporting.study import write_study_report

TINY = dict(
    model="tiny-random",
    alphas=[0.0, 4.0, 8.0],
    gating_ks=[0, 2],
    n_prompts=8,
    max_users=6,
    max_new_tokens=5,
    mmlu_items=8,
    max_steer_pairs=12,
    cells_per_batch=16,
    neutral_texts=4,
    kl_texts=2,
    kl_alphas=[4.0, 8.0],
    token_effects=TokenEffectsConfig(
        max_users=4, targets_per_user=1, patch_targets=1, patch_layers=2, history_tokens=8
    ),
    steerx_users_per_group=1,
)


def _check_splits(out, s):
    """Every tuned quantity has disjoint, non-empty selection and report ids in
    results/splits.json (and its second unit, users, disjoint too), and a selection entry."""
    splits = json.loads((out / "results" / "splits.json").read_text())
    units = {
        "operating_alpha": "prompt",
        "token_estimator": "text",
        "kl_alpha": "text",
        "condition_threshold": "prompt",
        "conditional_equal_kl_alpha": "text",
    }
    assert set(splits) == set(units)
    for quantity, unit in units.items():
        q = splits[quantity]
        assert q["unit"] == unit and q["select"] and q["report"], quantity
        assert not set(q["select"]) & set(q["report"]), quantity
        if "users" in q:
            assert not set(q["users"]["select"]) & set(q["users"]["report"]), quantity
        sel = s["selection"][quantity]
        assert (sel["n_select"], sel["n_report"]) == (len(q["select"]), len(q["report"]))
    assert s["selection"]["operating_alpha"]["chosen"] == s["operating_alpha"]
    _check_text_disjoint(out, splits)
    # the condition's threshold is chosen on the operating α's selection prompts
    assert splits["condition_threshold"]["select"] == splits["operating_alpha"]["select"]


def _check_text_disjoint(out, splits):
    """No split's sides share a text: the held-out prompts' texts (through prompts.jsonl),
    the token targets' prompts and the neutral texts (ids are text hashes)."""

    prompts = [json.loads(line) for line in (out / "results" / "prompts.jsonl").open()]
    text_of = {p["prompt_id"]: text_id(p["prompt"]) for p in prompts}
    for quantity, q in splits.items():
        if q["unit"] == "prompt":
            sides = [{text_of[i] for i in q[k]} for k in ("select", "report")]
            assert sides[0] and not sides[0] & sides[1], quantity
            assert q["texts"] == {
                k: sorted(v) for k, v in zip(("select", "report"), sides, strict=True)
            }
        else:  # text ids already
            assert not set(q["select"]) & set(q["report"]), quantity
        if "texts" in q:
            assert not set(q["texts"]["select"]) & set(q["texts"]["report"]), quantity


def test_alpha_split_is_disjoint_in_users_and_texts_even_when_texts_are_shared():
    """Rows whose user and text disagree are on neither side: two users answering the same
    prompt text never end up on opposite sides with it."""
    from steerlens.experiments.splits import agreed_side
    from steerlens.experiments.sweep import SweepPrompt

    texts = [f"prompt text {i}" for i in range(12)]
    prompts = [
        SweepPrompt(f"{u}-{i}", t, u, "benign_control", "fine")
        for u in (f"user{k:03d}" for k in range(10))
        for i, t in enumerate(texts)
    ]
    job = SimpleNamespace(need=lambda name: prompts, cfg=DemoConfig(model="tiny-random"))
    split = job_mod._alpha_split(job)  # type: ignore[arg-type]
    by_id = {p.prompt_id: p for p in prompts}
    for side in ("select", "report"):
        assert all(
            agreed_side(by_id[i].user_id, by_id[i].prompt) == side for i in getattr(split, side)
        )
    sel_texts = {by_id[i].prompt for i in split.select}
    assert sel_texts and not sel_texts & {by_id[i].prompt for i in split.report}
    assert not {by_id[i].user_id for i in split.select} & {by_id[i].user_id for i in split.report}


def _check_conditional(out, s):
    """The conditional step: its numbers recomputed from the sweeps' cells; a row the
    condition left unsteered generated exactly the unsteered text, a steered row exactly the
    unconditional one; the decisions are the saved condition's rule."""
    results = out / "results"
    dose = pd.read_parquet(results / "sweep" / "dose" / "cells.parquet")
    cond = pd.read_parquet(results / "sweep" / "conditional" / "cells.parquet")
    report = json.loads((results / "splits.json").read_text())["operating_alpha"]["report"]
    assert set(cond["prompt_id"]) == set(report) and (cond["gate"] == "condition").all()
    saved = sl.Condition.load(results / "vectors" / "conditions" / "condition.safetensors")
    assert saved.threshold == pytest.approx(s["condition"]["threshold"])
    assert (cond["steered"] == (cond["projection"] > saved.threshold)).all()
    a = s["conditional_alphas"]["operating"]
    assert a == s["operating_alpha"]
    # each method's equal-KL α: the search's choice on the selection half of the texts
    search = pd.read_csv(results / "conditional_kl_search.csv")
    chosen = search[search["chosen"]].set_index("method")["alpha"].to_dict()
    assert s["conditional_alphas"]["equal_kl"] == pytest.approx(chosen)
    alphas = s["conditional_alphas"]
    assert alphas["equal_kl_selection_texts"] >= 8 and alphas["equal_kl_report_texts"] >= 8
    for m, alpha_kl in chosen.items():
        part = search[(search["method"] == m) & (search["arm"] == "conditional")]
        target = search[(search["method"] == m) & (search["arm"] == "unconditional")]["kl"]
        assert (part[part["alpha"] <= alpha_kl]["kl"] <= float(target.iloc[0]) + 1e-9).all()
        run = part[part["admissible"]]
        assert alphas["equal_kl_capped"][m] == (alpha_kl == run["alpha"].max())
        # inside the swept, non-degenerate range (the operating α always searched)
        assert run["alpha"].max() <= max(alphas["equal_kl_limit"][m], a) <= 8.0
        assert part[~part["admissible"]]["kl"].isna().all()
        # the held-out ratio decides whether "at equal KL" is kept
        rows = pd.read_csv(results / "conditional_neutral_kl.csv")
        rows = rows[rows["method"] == m].groupby("arm")["kl"].mean()
        ratio = rows["conditional_equal_kl"] / rows["unconditional"]
        assert alphas["equal_kl_heldout_ratio"][m] == pytest.approx(ratio, abs=1e-3)
        assert alphas["equal_kl_matched"][m] == (0.9 <= ratio <= 1.1)
        # each arm's degenerate share and the report prompts whose two arms differ
        arms = s["conditional_arms"][m]["operating"]
        c = cond[(cond["method"] == m) & (cond["alpha"] == a)].set_index("prompt_id")
        u = dose[(dose["method"] == m) & (dose["alpha"] == a)].set_index("prompt_id").loc[c.index]
        assert arms["prompts"] == len(c)
        assert arms["prompts_differing"] == int((c["generation"] != u["generation"]).sum())
        assert arms["degenerate_share"]["conditional"] == pytest.approx(c["degenerate"].mean())
        assert s["conditional_arms"][m]["equal_kl"]["alpha"] == alpha_kl
    base = dose[dose["method"] == "none"].set_index("prompt_id")
    for m in ("population", "dislike-weighted", "bradley-terry"):
        c = cond[(cond["method"] == m) & (cond["alpha"] == a)].set_index("prompt_id")
        u = dose[(dose["method"] == m) & (dose["alpha"] == a)].set_index("prompt_id").loc[c.index]
        ref = np.where(c["steered"], u["generation"], base.loc[c.index, "generation"])
        assert (c["generation"].to_numpy() == ref).all(), m
        e = s["conditional"][m]
        assert e["mae"]["difference"]["mean"] == pytest.approx(
            (c["abs_error"] - u["abs_error"]).mean(), abs=1e-5
        )
        assert e["steered_share"]["conditional"]["mean"] == pytest.approx(c["steered"].mean())
        assert e["mae"]["difference"]["n"] == c["user"].nunique()
    share = s["conditional_steered_share"]["report_prompts"]
    assert share == s["conditional"]["population"]["steered_share"]["conditional"]
    kl = pd.read_csv(results / "conditional_neutral_kl.csv")
    off = kl[(kl["arm"] == "conditional") & ~kl["steered"]]
    # an unsteered text has no side effect (up to its batch's padding, in the last bits)
    assert (off["kl"].abs() <= 1e-6).all()
    for m in ("population", "dislike-weighted", "bradley-terry"):
        rows = kl[kl["method"] == m].pivot_table(
            index=["text", "vector"], columns="arm", values="kl"
        )
        assert s["conditional"][m]["neutral_kl"]["difference"]["mean"] == pytest.approx(
            (rows["conditional"] - rows["unconditional"]).mean(), abs=1e-5
        )
    assert set(s["conditional_by_category"]) == set(cond["category"])


def _check_mmlu(out, s):
    """MMLU at the operating α, the largest swept α and each KL budget's α: each row paired
    with unsteered, the chance rate beside it, in the summary, results/mmlu.csv and the page."""
    from steerlens.reporting.markdown import summary_markdown

    rows = s["mmlu_by_alpha"]
    assert s["mmlu_chance"] == 0.25 and all(r["chance"] == 0.25 for r in rows)
    assert [r["role"] for r in rows[:3]] == ["unsteered", "operating α", "largest swept α"]
    assert rows[1]["alpha"] == s["operating_alpha"] and rows[2]["alpha"] == 8.0
    budgets = {r["kl_budget"]: r["alpha"] for r in rows if r["kl_budget"] is not None}
    assert sorted(budgets) == s["kl_budgets"] and set(budgets.values()) == {4.0, 8.0}
    assert rows[0]["minus_unsteered"] is None
    assert s["mmlu_steered_minus_unsteered"] == rows[1]["minus_unsteered"]
    table = pd.read_csv(out / "results" / "mmlu.csv")
    assert len(table) == len(rows) and (table["chance"] == 0.25).all()
    for r, (_, t) in zip(rows[1:], table.iloc[1:].iterrows(), strict=True):
        assert r["accuracy"]["mean"] == pytest.approx(t["mean"])
        diff = r["minus_unsteered"]
        assert set(diff) >= {"mean", "interval", "n", "unit"} and diff["n"] == s["mmlu_items"]
        assert diff["mean"] == pytest.approx(t["mean"] - table["mean"].iloc[0], abs=1e-6)
    page = summary_markdown(s)
    assert "Chance on these 4-choice items: 0.25" in page and "(largest swept)" in page


def _check_utility_shares(out, s):
    """Every utility number has its arm's degenerate-or-empty share beside it (both arms' for
    a difference), recomputed from the sweep's cells; collapsed outputs never gain."""
    results = out / "results"
    dose = pd.read_parquet(results / "sweep" / "dose" / "cells.parquet")
    report = json.loads((results / "splits.json").read_text())["operating_alpha"]["report"]
    at = dose[dose["prompt_id"].isin(report) & (dose["alpha"] == s["operating_alpha"])]
    flag = lambda rows: float((rows["degenerate"] | rows["empty"]).mean())  # noqa: E731
    for m, entry in s["utility_gain_all"].items():
        share = entry["degenerate_share"]
        if "−" in m:
            method = m.split(" − ")[0]
            assert set(share) == {method, "population"}, m
            assert share[method] == pytest.approx(flag(at[at["method"] == method]), abs=1e-4)
        else:
            assert share == pytest.approx(flag(at[at["method"] == m]), abs=1e-4), m
        for g, e in s["utility_gain"][m].items():
            assert "degenerate_share" in e, (m, g)
    # the floor: a degenerate row's gain over its unsteered text is never positive
    base = dose[dose["method"] == "none"].set_index("prompt_id")["utility"]
    rows = dose[dose["method"] != "none"]
    gains = sl.metrics.summaries.utility_gains(rows, base)
    assert (gains[sl.metrics.summaries.degenerate_flags(rows)] <= 0).all()
    upk = s["utility_per_kl"]
    for m, row in upk["minus_population"].items():
        for e in row.values():
            assert set(e["degenerate_share"]) == {m, "population"}
    for kind in ("calibrated", "fixed_alpha"):
        for row in upk[kind].values():
            assert all(0 <= e["degenerate_share"] <= 1 for e in row.values())
    for m, entry in s["conditional"].items():
        for key in ("utility_gain", "utility_gain_equal_kl"):
            if key in entry:
                arms = entry[key]
                assert set(arms["difference"]["degenerate_share"]) == {
                    "conditional",
                    "unconditional",
                }, m
                assert 0 <= arms["conditional"]["degenerate_share"] <= 1, m
    util = [c["claim"] for c in s["headline"] if "utility" in c["claim"]]
    assert util and all("degenerate or empty outputs" in c for c in util)
    assert all("keyword-density" in c["claim"].lower() for c in s["headline"] if c["claim"] in util)
    assert not any("Ground-truth utility" in c for c in util)


def _every_estimate_has_n(node, path="summary"):
    """Every estimate anywhere in the summary (a dict with a mean and an interval) carries its
    n and unit, and has no interval below 5 units."""
    if isinstance(node, dict):
        if "mean" in node and "interval" in node:
            assert "n" in node and "unit" in node, path
            if node["n"] < 5:
                assert node["interval"] is None, path
        for k, v in node.items():
            _every_estimate_has_n(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _every_estimate_has_n(v, f"{path}[{i}]")


def test_demo_job_on_tiny_model_writes_results_figures_and_report(tmp_path, monkeypatch):
    # the random model's toxicity hardly moves under steering, so no selection prompt is
    # "helped": label every other one, so that the conditional step runs its whole course
    monkeypatch.setattr(
        conditional_mod,
        "selection_labels",
        lambda dose, select, alpha, method="population": (
            {p: i % 2 == 0 for i, p in enumerate(sorted(select))},
            "every other prompt (test)",
        ),
    )
    cfg = DemoConfig(
        **{**TINY, "neutral_texts": 16},  # the conditional step: 8 texts a side
        out=str(tmp_path),
        steerx_backbones=["mean", "mean-context", "bipo"],  # (SAE: test_analyses, own SAE)
    )
    s = run_demo(cfg)
    write_study_report(tmp_path)
    for key in SUMMARY_KEYS:
        assert s[key] is not None, key
    steps = json.loads((tmp_path / "results" / "steps.json").read_text())
    for name, entry in steps.items():  # every step writes only the keys it declares
        assert entry["keys"] and all(REGISTRY[name].writes_key(k) for k in entry["keys"]), name
    for key in ESTIMATE_KEYS:  # every estimate carries its n; no interval below 5 units
        e = s[key]
        assert set(e) >= {"mean", "interval", "n", "unit"}, key
        assert (e["interval"] is None) == (e["n"] < 5 or e["mean"] is None), key
    assert all(c["n"] >= 1 and set(c) >= {"claim", "interval", "unit"} for c in s["headline"])
    assert s["data_is_simulated"] is True and s["n_prompts"] == 8
    methods = {"population", "dislike-weighted", "bradley-terry"}
    assert set(s["utility_gain"]) == methods | {
        f"{m} − population" for m in methods - {"population"}
    }
    _check_splits(tmp_path, s)
    _check_conditional(tmp_path, s)
    _check_utility_shares(tmp_path, s)
    _check_mmlu(tmp_path, s)
    steps = json.loads((tmp_path / "results" / "steps.json").read_text())
    assert list(steps) == list(demo_mod.STEPS)
    assert all(v["status"] == "done" for v in steps.values())
    # side effects: one entry per method and α; α 0 is the unsteered model (KL 0)
    side_rows = pd.read_csv(tmp_path / "results" / "side_effects_rows.csv")
    assert set(s["kl_neutral"]) == methods
    for m in methods:
        assert set(s["kl_neutral"][m]) == {"0", "4", "8"}
        assert s["kl_neutral"][m]["0"]["mean"] == 0.0
        assert 0 < s["kl_neutral"][m]["4"]["mean"] < s["kl_neutral"][m]["8"]["mean"]
        # the perplexity pools every row's tokens; 4 texts: too few for an interval
        part = side_rows[(side_rows["method"] == m) & (side_rows["alpha"] == 4.0)]
        ppl = s["ppl_neutral"][m]["4"]
        assert ppl["mean"] == pytest.approx(np.exp(part["nll"].sum() / part["n_tokens"].sum()))
        # one vector varies over texts; users' vectors over users (then texts)
        one = m == "population"
        n = cfg.neutral_texts if one else part["user"].nunique()
        assert (ppl["n"], ppl["unit"]) == (n, "text" if one else "user")
        assert (ppl["interval"] is None) == (n < 5)
    # the calibrated sweep: budgets are the population's KL at the grid's α, on the texts the
    # calibration uses (the first kl_texts of the neutral set)
    rows = pd.read_csv(tmp_path / "results" / "side_effects_rows.csv")
    pop = rows[(rows["method"] == "population") & (rows["text_id"] < cfg.kl_texts)]
    pop_kl = pop.groupby("alpha")["kl"].mean()
    assert s["kl_budgets"] == sorted({float(f"{k:.2g}") for k in pop_kl})
    assert pop_kl.index.tolist() == [4.0, 8.0]
    cal = pd.read_parquet(tmp_path / "results" / "sweep" / "calibrated" / "cells.parquet")
    steered = cal[cal["method"] != "none"]
    assert set(steered["kl_budget"]) == set(s["kl_budgets"])
    per_user = steered[steered["method"] == "dislike-weighted"].groupby("user")["alpha"].first()
    assert per_user.nunique() > 1  # each user their own α
    assert set(s["utility_per_kl"]["calibrated"]) == methods
    # the KL each calibrated vector reaches on held-out texts, recomputed from its rows
    held = pd.read_csv(tmp_path / "results" / "kl_heldout_rows.csv")
    n_held = min(cfg.kl_texts, cfg.neutral_texts - cfg.kl_texts)  # the texts after kl_texts
    assert set(held["text_id"]) == set(range(cfg.kl_texts, cfg.kl_texts + n_held))
    report_ids = json.loads((tmp_path / "results" / "splits.json").read_text())["kl_alpha"]
    neutral = job_mod._neutral(SimpleNamespace(cfg=cfg))  # type: ignore[arg-type]
    assert {text_id(neutral[i]) for i in held["text_id"]} == set(report_ids["report"])
    for m, row in s["kl_heldout"].items():
        for b, e in row.items():
            part = held[(held["method"] == m) & (held["kl_budget"] == float(b))]
            assert e["mean"] == pytest.approx(part["kl"].mean(), abs=1e-5)
            assert e["ratio_to_budget"] == pytest.approx(part["kl"].mean() / float(b), abs=1e-3)
            # one vector for everyone varies over texts; per-user vectors over users
            units = part["text_id"] if m == "population" else part["user"]
            assert (e["n"], e["unit"]) == (
                units.nunique(),
                "text" if m == "population" else "user",
            )
    un = s["calibration_unreached"]
    assert un["count"] == len(un["entries"])
    assert set(s["utility_per_kl"]["minus_population"]) == methods - {"population"}
    assert s["token_effects_targets"] >= 2 and s["token_precision"]["truth"] == "completed"
    assert s["token_precision_planted"]["truth"] == "planted"
    # the token numbers are the report side's alone, with the rule picked on the other side
    tokens = pd.read_csv(tmp_path / "results" / "steerx_tokens.csv")
    est, th = s["token_estimator"].rsplit(" > ", 1)
    rep = tokens[tokens["split"] == "report"]
    picked = rep[rep[est] > float(th)]
    assert s["token_precision"]["mean"] == pytest.approx(picked["planted"].mean(), abs=1e-5)
    assert s["token_precision"]["n"] == rep["user"].nunique()
    _every_estimate_has_n(s)
    # the headline numbers are the sweep's cells, recomputed here
    dose = pd.read_parquet(tmp_path / "results" / "sweep" / "dose" / "cells.parquet")
    assert len(dose) == 8 * (1 + 3 * 2) and set(dose["method"]) == {
        "none",
        "population",
        "dislike-weighted",
        "bradley-terry",
    }
    splits = json.loads((tmp_path / "results" / "splits.json").read_text())
    select, report = (splits["operating_alpha"][k] for k in ("select", "report"))
    # the operating α: the population vector's lowest MAE on the selection prompts alone
    pop = dose[(dose["method"] == "population") & dose["prompt_id"].isin(select)]
    assert s["operating_alpha"] == pop.groupby("alpha")["abs_error"].mean().idxmin()
    # and its numbers are the report prompts' alone
    rep = dose[dose["prompt_id"].isin(report)]
    base = rep[rep["method"] == "none"]
    assert s["mae_baseline"]["mean"] == pytest.approx(base["abs_error"].mean(), abs=1e-5)
    best = rep[(rep["method"] == "population") & (rep["alpha"] == s["operating_alpha"])]
    assert s["mae_best"]["mean"] == pytest.approx(best["abs_error"].mean(), abs=1e-5)
    assert s["mae_best"]["n"] == best["user"].nunique()
    gating = pd.read_parquet(tmp_path / "results" / "sweep" / "gating" / "cells.parquet")
    assert set(gating["gate"]) == {"first:0", "first:2", "prefill", "generated"}
    assert (gating["alpha"] == s["operating_alpha"]).all()
    assert set(gating["prompt_id"]) == set(report)  # gated at the operating α: report only
    assert [g["gate"] for g in s["gating"]] == ["prefill", "first:0", "first:2", "generated", "all"]
    for name in (
        "dose_response",
        "selectivity",
        "gating",
        "ppa",
        "ppa_steering",
        "mmlu",
        "users_bt",
        "utility_by_group",
        "dataset_overview",
        "calibrated",
        "conditional",
        "steerx_pr",
        "steerx_tokens",
        "steerx_patching",
        "index",
    ):
        assert (tmp_path / "figures" / f"{name}.html").exists(), name
    page = (tmp_path / "figures" / "index.html").read_text()
    assert "not real PRISM" in page and "gen-data" in page
    assert "Keyword-density utility gain" in page and "Ground-truth utility" not in page

    def strict(token: str) -> None:
        raise AssertionError(f"summary.json holds {token}, which JSON.parse rejects")

    saved = json.loads((tmp_path / "results" / "summary.json").read_text(), parse_constant=strict)
    assert saved["layers"] == [2, 3] and saved["operating_alpha"] == s["operating_alpha"]
    assert (tmp_path / "results" / "vectors" / "population.safetensors").exists()
    assert len(list((tmp_path / "results" / "vectors" / "bradley-terry").glob("*"))) == 6
    # SteerX vs all-history: its keys join the summary, its figures the page
    for key in ("steerx_ppa", "allhistory_ppa", "steerx_ppa_under_steering"):
        assert set(saved[key]) == {"mean", "mean-context", "bipo", "pairs"}, key
    assert set(saved["steerx_utility_gain"]) == {"mean", "mean-context", "bipo"}
    assert set(saved["description_hit_rate_by_mode"]) == {"spans", "model"}
    assert saved["mae_baseline"] == s["mae_baseline"]  # the demo's own keys are kept
    assert set(s["seconds"]) >= {*demo_mod.STEPS, "load model", "total"}
    assert "SteerX vs all-history (reconstructed)" in page
    assert 'id="headline"' in page and "Side effect of the population vector" in page
    assert "pairs" in pd.read_csv(tmp_path / "results" / "steerx_compare.csv")["backbone"].values
    assert (tmp_path / "figures" / "steerx_vs_allhistory_ppa_under_steering.html").exists()
    assert list((tmp_path / "figures").glob("steerx_user_*.html"))


def test_a_failed_step_keeps_the_earlier_results_and_the_report_shows_them(tmp_path, monkeypatch):
    def broken(job):
        raise RuntimeError("out of memory")

    monkeypatch.setitem(REGISTRY, "gating", replace(REGISTRY["gating"], run=broken))
    small = {**TINY, "n_prompts": 4, "alphas": [0.0, 4.0], "kl_alphas": [4.0], "max_users": 4}
    cfg = DemoConfig(**small, out=str(tmp_path), steps=["vectors", "dose", "gating", "mmlu"])
    with pytest.raises(RuntimeError, match="out of memory"):
        run_demo(cfg)
    steps = json.loads((tmp_path / "results" / "steps.json").read_text())
    assert [steps[k]["status"] for k in ("vectors", "dose", "gating")] == ["done", "done", "failed"]
    assert "out of memory" in steps["gating"]["error"] and "mmlu" not in steps
    files = write_study_report(tmp_path)  # from disk: what the finished steps wrote
    page = (tmp_path / "figures" / "index.html").read_text()
    assert "Partial run: steps [&#x27;gating&#x27;, &#x27;mmlu&#x27;] did not finish" in page
    assert (tmp_path / "figures" / "dose_response.html") in files
    assert not (tmp_path / "figures" / "gating.html").exists()
    # the same study again, the failed step alone: its inputs come from results/
    monkeypatch.undo()
    again = run_demo(DemoConfig(**small, out=str(tmp_path), steps=["gating"]))
    steps = json.loads((tmp_path / "results" / "steps.json").read_text())
    assert [steps[k]["status"] for k in ("vectors", "dose", "gating")] == ["done"] * 3
    assert again["operating_alpha"] == 4.0 and again["gating"][0]["gate"] == "prefill"
    write_study_report(tmp_path)
    assert (tmp_path / "figures" / "gating.html").exists()
    # another study in the same folder: nothing of the first one is kept or reported
    other = run_demo(
        DemoConfig(**{**small, "run": {"seed": 1}}, out=str(tmp_path), steps=["vectors"])
    )
    assert "operating_alpha" not in other and "gating" not in other
    write_study_report(tmp_path)
    assert "Gating at the operating" not in (tmp_path / "figures" / "index.html").read_text()
    # a step asked for without the one it depends on says so
    with pytest.raises(RuntimeError, match="needs 'vectors'"):
        run_demo(DemoConfig(**small, out=str(tmp_path / "b"), steps=["dose"]))


def _numbers(summary: dict) -> dict:
    """A summary's values but the run's own facts (times, code, config's step lists)."""
    skip = {"seconds", "code", "config"}
    return {k: v for k, v in summary.items() if k not in skip}


def test_a_rerun_skips_finished_steps_and_reruns_only_what_a_change_reaches(tmp_path, monkeypatch):
    calls: list[str] = []

    def spy(name, fn):
        def step(job):
            calls.append(name)
            return fn(job)

        return step

    for name, step in list(REGISTRY.items()):
        monkeypatch.setitem(REGISTRY, name, replace(step, run=spy(name, step.run)))
    small = {**TINY, "n_prompts": 4, "alphas": [0.0, 4.0], "kl_alphas": [4.0], "max_users": 4}
    steps = ["vectors", "dose", "gating"]
    ref = run_demo(DemoConfig(**small, out=str(tmp_path / "ref"), steps=steps))
    out = str(tmp_path / "run")

    # killed in its last step (an in-process failure): the rerun runs that step alone
    def killed(job):
        raise RuntimeError("killed")

    with monkeypatch.context() as m:
        m.setitem(REGISTRY, "gating", replace(REGISTRY["gating"], run=killed))
        with pytest.raises(RuntimeError, match="killed"):
            run_demo(DemoConfig(**small, out=out, steps=steps))
    calls.clear()
    again = run_demo(DemoConfig(**small, out=out, steps=steps))
    assert calls == ["gating"]
    assert _numbers(again) == _numbers(ref)  # the same numbers as an uninterrupted run
    entries = json.loads((tmp_path / "run" / "results" / "steps.json").read_text())
    assert all(entries[s]["status"] == "done" and entries[s]["fingerprint"] for s in steps)
    assert (
        "dose_response.csv" in entries["dose"]["files"]
        and "operating_alpha" in entries["dose"]["keys"]
    )
    # nothing changed: nothing runs
    calls.clear()
    assert _numbers(run_demo(DemoConfig(**small, out=out, steps=steps))) == _numbers(ref)
    assert calls == []
    # a field one step reads reruns that step only; one the sweep reads, it and its dependents
    calls.clear()
    run_demo(DemoConfig(**{**small, "gating_ks": [0]}, out=out, steps=steps))
    assert calls == ["gating"]
    calls.clear()
    wider = {**small, "alphas": [0.0, 8.0], "kl_alphas": [8.0]}  # (kl_alphas: not read here)
    run_demo(DemoConfig(**wider, out=out, steps=steps))
    assert calls == ["dose", "gating"]
    # asked for by name (steerlens study --steps / --from): rerun though finished
    calls.clear()
    run_demo(DemoConfig(**wider, out=out, steps=steps, force=["dose"]))
    assert calls == ["dose"]
    # a file a finished step wrote is gone: that step runs again
    (tmp_path / "run" / "results" / "gating.csv").unlink()
    calls.clear()
    run_demo(DemoConfig(**wider, out=out, steps=steps))
    assert calls == ["gating"]
    # a change that reaches steps not run now leaves them stale: their keys leave the summary
    changed = run_demo(DemoConfig(**{**wider, "held_out": 0.5}, out=out, steps=["vectors"]))
    entries = json.loads((tmp_path / "run" / "results" / "steps.json").read_text())
    assert [entries[s]["status"] for s in steps] == ["done", "stale", "stale"]
    assert "operating_alpha" not in changed and "gating" not in changed
    assert changed["selection"]["operating_alpha"]  # a shared key: never one step's to drop
    # ... and a step that needs a stale one refuses to read its results
    with pytest.raises(RuntimeError, match=r"needs 'dose'.*stale"):
        run_demo(DemoConfig(**{**wider, "held_out": 0.5}, out=out, steps=["gating"]))
    # a failed step's entry does not make a changed study wipe the folder
    with monkeypatch.context() as m:
        m.setitem(REGISTRY, "dose", replace(REGISTRY["dose"], run=killed))
        with pytest.raises(RuntimeError, match="killed"):
            run_demo(DemoConfig(**{**wider, "held_out": 0.5}, out=out, steps=["dose"]))
    run_demo(DemoConfig(**{**wider, "held_out": 0.4}, out=out, steps=["vectors"]))
    assert (tmp_path / "run" / "results" / "dose_response.csv").exists()


def test_demo_config_validation():
    with pytest.raises(ValueError, match="alpha"):
        DemoConfig(alphas=[1.0, 2.0])
    with pytest.raises(ValueError, match="population"):
        DemoConfig(methods=["dislike-weighted"])
    with pytest.raises(ValueError, match="unknown"):
        DemoConfig(methods=["population", "vibes"])
    q = DemoConfig(quick=True)
    assert q.n_prompts == 24 and q.max_users == 16 and not q.steer_ppa
    # the preset fills what the caller left unset, never what they set (even to a default)
    mine = DemoConfig(quick=True, alphas=[0.0, 0.5, 1.0, 1.5], n_prompts=48, steer_ppa=True)
    assert (mine.alphas, mine.n_prompts, mine.steer_ppa) == ([0.0, 0.5, 1.0, 1.5], 48, True)
    assert mine.max_users == 16 and mine.gating_ks == q.gating_ks
    assert DemoConfig("smollm2-135m-instruct", "demo", ".", True).n_prompts == 24  # positional
    assert q.steerx and q.steerx_backbones == ["mean"] and q.kl_alphas == [0.5]
    with pytest.raises(ValueError, match="steerx_backbones"):
        DemoConfig(steerx_backbones=["lora"])
    with pytest.raises(ValueError, match="unknown steps"):
        DemoConfig(steps=["vectors", "plots"])
    with pytest.raises(ValueError, match="kl_texts"):
        DemoConfig(neutral_texts=4, kl_texts=8)
    with pytest.raises(ValueError, match="kl_texts"):
        DemoConfig(neutral_texts=8, kl_texts=8)  # no texts left to report the KL on
    with pytest.raises(ValueError, match="kl_alphas"):
        DemoConfig(kl_alphas=[0.3])
    # the conditional step's equal-KL α: >= 8 neutral texts a side, in the quick preset too
    assert q.neutral_texts >= 16 and DemoConfig().neutral_texts >= 16
    with pytest.raises(ValueError, match="neutral_texts >= 16"):
        DemoConfig(neutral_texts=8, kl_texts=4)
    assert DemoConfig(neutral_texts=8, kl_texts=4, steps=["mmlu"]).neutral_texts == 8
    assert "steerx" not in DemoConfig(steerx=False).steps
    assert q.token_effects.smoke and q.token_effects.max_users == 16
    assert q.side_effect_texts == 8
    with pytest.raises(ValueError, match="side_effect_texts"):
        DemoConfig(side_effect_texts=4)  # fewer than the KL calibration's texts
    # what the numbers depend on: not the device, the output folder or the steps run
    same = DemoConfig(run={"device": "cpu"}, out="elsewhere", steps=["mmlu"], cells_per_batch=8)
    assert demo_mod.study_key(same) == demo_mod.study_key(DemoConfig())
    assert demo_mod.study_key(DemoConfig(run={"seed": 1})) != demo_mod.study_key(DemoConfig())
    wide = DemoConfig(run={"generation_batch_size": 16})
    assert demo_mod.study_key(wide) != demo_mod.study_key(DemoConfig())
    # a folder made before the sections were nested keeps its key (these two keys were
    # computed by the 2026-12-05 code, d8bdb8e); other method options make another study
    b = ["mean", "mean-context", "bipo"]
    assert demo_mod.study_key(DemoConfig(steerx_backbones=b)) == "5e824fe4664c"
    # (the quick preset has since changed: that key with the old preset's values)
    old_quick = DemoConfig(
        quick=True,
        steerx_backbones=b,
        n_prompts=16,
        neutral_texts=8,
        side_effect_texts=None,
        kl_alphas=[0.5, 1.0],
        token_effects=TokenEffectsConfig(
            targets_per_user=2,
            max_users=10,
            patch_targets=1,
            patch_layers=3,
            history_tokens=12,
            smoke=True,
        ),
        steps=["vectors"],
        steerx_max_targets=8,
    )
    assert demo_mod.study_key(old_quick) == "2ded97ba1234"
    other = DemoConfig(steerx_backbones=b, options={"shrink": 0.0})  # type: ignore[arg-type]
    assert demo_mod.study_key(other) != "5e824fe4664c"
    # one run section (seed, device, batch size), nested; from a JSON/YAML mapping too
    nested = DemoConfig(run={"seed": 3, "batch_size": 4, "device": "cpu"})
    assert (nested.run.seed, nested.run.batch_size, nested.run.device) == (3, 4, "cpu")
    with pytest.raises(ValueError, match="batch_size"):
        DemoConfig(run={"batch_size": 0})
    with pytest.raises(ValueError, match="device"):
        DemoConfig(run={"device": "gpu"})


def test_an_unreachable_budget_is_listed_and_never_swept(tmp_path, monkeypatch):
    real = calibrated_step._budgets

    def with_unreachable(job):
        return {**real(job), 1e4: 4.0}  # 10^4 nats per token: beyond any steering

    monkeypatch.setattr(calibrated_step, "_budgets", with_unreachable)
    small = {**TINY, "n_prompts": 4, "alphas": [0.0, 4.0], "kl_alphas": [4.0], "max_users": 4}
    steps = ["vectors", "dose", "side_effects", "calibrated"]
    s = run_demo(DemoConfig(**small, out=str(tmp_path), steps=steps))
    un = s["calibration_unreached"]
    prompts = pd.read_json(tmp_path / "results" / "prompts.jsonl", lines=True)
    users = sorted(prompts["user_id"].unique())
    # every vector misses it: one population vector and each swept user's two personal ones
    assert un["count"] == 1 + 2 * len(users) == len(un["entries"])
    assert {e["budget"] for e in un["entries"]} == {1e4}
    assert all(e["kl_reached"] < 1e4 for e in un["entries"])
    assert "population:*" in un["users"]
    cells = pd.read_parquet(tmp_path / "results" / "sweep" / "calibrated" / "cells.parquet")
    steered = cells[cells["method"] != "none"]
    assert 1e4 not in set(steered["kl_budget"])  # not swept at max_alpha
    assert set(steered["kl_budget"]) == set(s["kl_budgets"]) - {1e4}
    assert all("10000" not in row for row in s["kl_heldout"].values())
    assert s["kl_budgets"][-1] == 1e4


def test_conditional_labels_and_the_skip_when_nothing_separates():
    """Labels from the selection prompts: a category helped on average labels its prompts;
    one class everywhere skips the step with its reason (on the page too)."""
    rows = []
    for pid, cat, base, steered in (
        ("a", "x", 0.5, 0.1),
        ("b", "x", 0.5, 0.6),  # x's mean falls: both x prompts are True
        ("c", "y", 0.2, 0.4),
        ("d", "y", 0.2, 0.2),
    ):
        rows.append(
            {
                "method": "none",
                "alpha": 0.0,
                "gate": "all",
                "prompt_id": pid,
                "category": cat,
                "abs_error": base,
                "user": "u",
            }
        )
        rows.append(
            {
                "method": "population",
                "alpha": 1.0,
                "gate": "all",
                "prompt_id": pid,
                "category": cat,
                "abs_error": steered,
                "user": "u",
            }
        )
    dose = pd.DataFrame(rows)
    labels, rule = conditional_mod.selection_labels(dose, ["a", "b", "c", "d"], 1.0)
    assert labels == {"a": True, "b": True, "c": False, "d": False} and "category" in rule
    labels, rule = conditional_mod.selection_labels(dose, ["a", "b"], 1.0)  # x only: per prompt
    assert labels == {"a": True, "b": False} and "own" in rule
    flat = dose.assign(abs_error=0.3)
    out = conditional_mod.run_conditional(
        None, dose=flat, prompts=[], split=Split(["a", "b", "c", "d"], ["e"], "prompt"), vectors={}, methods=[], alphas=[], alpha=1.0,
        neutral=[], fit_pool={}, results=None, settings=None, measure=None,
    )  # fmt: skip
    assert "skipped" in out["conditional"] and out["conditional_steered_share"] is None
    from steerlens.reporting.markdown import summary_markdown

    assert "conditional step was skipped" in summary_markdown({"conditional": out["conditional"]})
