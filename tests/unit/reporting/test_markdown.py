"""Result pages generated from results/summary.json (``steerlens report --markdown``)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from steerlens.cli import app
from steerlens.reporting.markdown import summary_markdown

SUMMARY = {
    "model": "smollm2-135m-instruct",
    "data": "demo",
    "data_is_simulated": True,
    "config": {"quick": True},
    "layers": [15, 16],
    "n_prompts": 16,
    "n_users": 12,
    "n_train_pairs": 670,
    "n_test_pairs": 279,
    "mae_baseline": {"mean": 0.15324, "interval": [0.02473, 0.303], "n": 6, "unit": "user"},
    "operating_alpha": 0.5,
    "selection": {
        "operating_alpha": {"chosen": 0.5, "n_select": 9, "n_report": 7, "unit": "prompt"}
    },
    "ppa_personalized_method": "personalized (dislike-weighted)",
    "ppa_personalized": {"mean": 0.76184, "interval": [0.70762, 0.81886], "n": 16, "unit": "user"},
    "ppa_oracle_minus_personalized": {"mean": 0.08, "interval": None, "n": 3, "unit": "user"},
    "dose_response": [
        {"method": "population", "alpha": 0.5, "mae": 0.149, "mae_low": 0.0235, "mae_high": 0.297}
    ],
    "mae_change_pct_by_category": {"benign_control": {"0.5": -27.742, "1": -56.05}},
    "mae_change_pct_by_category_n": {"benign_control": 2},
    "utility_gain": {
        "population": {
            "majority": {"mean": 0.0666, "interval": [-0.1, 0.2], "n": 6, "unit": "user"}
        }
    },
    "steerx_ppa": {"mean": {"mean": 0.5767, "interval": [0.48, 0.6667], "n": 6, "unit": "user"}},
    "allhistory_ppa": {
        "mean": {"mean": 0.5633, "interval": [0.44, 0.6667], "n": 6, "unit": "user"}
    },
    "steerx_minus_allhistory_ppa": {
        "mean": {"mean": 0.0133, "interval": [0.0, 0.04], "n": 6, "unit": "user"}
    },
}


def test_the_page_states_model_data_and_estimates_with_intervals():
    page = summary_markdown(SUMMARY)
    assert "not Llama-3.1-8B" in page and "simulated PRISM-format set, not real PRISM" in page
    assert "| PPA, personalized (dislike-weighted) | 0.762 [0.708, 0.819] (n = 16) |" in page
    assert "| toxicity MAE, unsteered (report prompts) | 0.153 [0.0247, 0.303] (n = 6) |" in page
    # an interval withheld below 5 units says so instead
    assert "| PPA, oracle − personalised (paired) | 0.08 (n = 3 users: n too small) |" in page
    assert "| benign_control | 2 | -27.7 | -56 |" in page  # α columns in numeric order
    assert "Point estimates of 2 comparisons (categories × α)" in page
    assert "| population | 0.0666 [-0.1, 0.2] (n = 6) |" in page
    assert (
        "| mean | 0.577 [0.48, 0.667] (n = 6) | 0.563 [0.44, 0.667] (n = 6) "
        "| 0.0133 [0, 0.04] (n = 6) |" in page
    )
    assert "reconstruction" in page
    assert "`operating_alpha` = 0.5 (selection 9 / report 7 prompts" in page
    assert "MMLU, steered |" not in page  # a key the run did not write: no row, no error
    # the headline words follow the paired interval: n = 3 gives no direction
    assert "minus personalised, paired by user: no difference detected (n = 3 users)" in page


def test_report_command_writes_the_pages_and_refuses_a_missing_summary(tmp_path):
    runner = CliRunner()
    results = tmp_path / "results"
    args = ["report", "--run", str(tmp_path), "--out", str(tmp_path / "docs")]
    for flags in ([], ["--markdown"]):
        missing = runner.invoke(app, [*args, *flags])
        assert missing.exit_code != 0 and "run `steerlens demo`" in missing.output
    results.mkdir()
    (results / "summary.json").write_text(json.dumps(SUMMARY))
    res = runner.invoke(app, [*args, "--markdown"])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "docs" / "demo.md").read_text()
    assert page == summary_markdown(SUMMARY, source=str(results / "summary.json"))
    # the HTML page from the same files: a summary alone gives the headline, no figures
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    html = (tmp_path / "figures" / "index.html").read_text()
    assert 'id="headline"' in html and "n = 3 users: n too small for an interval" in html


def test_every_utility_number_stands_beside_its_degenerate_share():
    diff = {"mean": -0.2, "interval": [-0.4, -0.05], "n": 6, "unit": "user"}
    s = {
        **SUMMARY,
        "utility_gain": {
            "population": {
                "majority": {**diff, "mean": 0.07, "degenerate_share": 0.05},
            },
            "dislike-weighted − population": {
                "majority": {
                    **diff,
                    "degenerate_share": {"dislike-weighted": 0.1, "population": 0.05},
                },
            },
        },
        "calibrated": [
            {
                "method": "population",
                "kl_budget": 0.1,
                "alpha": 2.0,
                "delta_pct": -5.0,
                "delta_low": -9.0,
                "delta_high": -1.0,
                "utility_gain": 0.1,
                "utility_low": 0.0,
                "utility_high": 0.2,
                "n": 6,
                "degenerate_share": 0.25,
            }
        ],
    }
    page = summary_markdown(s)
    assert "## Keyword-density utility gain per user group (simulated users)" in page
    assert "Ground-truth utility" not in page
    assert "| population | 0.07 [-0.4, -0.05] (n = 6); degenerate 0.05 |" in page
    assert "(n = 6); degenerate dislike-weighted 0.1, population 0.05 |" in page
    assert "| keyword-density utility gain | degenerate share |" in page
    assert "| 0.1 [0, 0.2] | 0.25 |" in page


def test_the_page_names_the_code_it_came_from():
    """A study records its code (version, commit, uncommitted changes) and the page says it
    beside the machine and the time per step."""
    import steerlens as sl
    from steerlens.experiments.demo import code_provenance

    code = code_provenance()
    assert code["steerlens"] == sl.__version__
    s = {**SUMMARY, "seconds": {"vectors": 1.0}, "machine": "a CPU", "code": code}
    page = summary_markdown(s)
    line = next(x for x in page.splitlines() if x.startswith("Code: steerlens"))
    if code["commit"]:  # a git work tree (the test suite's checkout)
        assert f"commit {code['commit']}" in line
        assert ("uncommitted" in line) == bool(code["dirty"])
    s["code"] = {"steerlens": "0.1.0", "commit": "abc1234", "dirty": False}
    assert "Code: steerlens 0.1.0, commit abc1234." in summary_markdown(s)
    assert "earlier run" not in summary_markdown(s)
    s["code"]["earlier"] = {"vectors": "f4e8dfe", "dose": "f4e8dfe", "mmlu": "not recorded"}
    assert (
        "Steps kept from an earlier run (their inputs unchanged), on other code: vectors, "
        "dose (commit f4e8dfe); mmlu (commit not recorded)." in summary_markdown(s)
    )


def test_a_resumed_step_keeps_the_commit_it_ran_on(monkeypatch):
    from steerlens.experiments import demo

    now = {"steerlens": "0.1.0", "commit": "bbb2222", "dirty": False}
    monkeypatch.setattr(demo, "code_provenance", lambda: dict(now))
    status = {
        "vectors": {"status": "done", "code": {"commit": "aaa1111", "dirty": False}},
        "dose": {"status": "done", "code": {"commit": "bbb2222", "dirty": False}},
        "mmlu": {"status": "done"},  # recorded before steps named their code
        "gating": {"status": "stale"},
    }
    code = demo._code(status, ["vectors", "dose", "mmlu", "gating"])
    assert code["commit"] == "bbb2222"
    assert code["earlier"] == {"vectors": "aaa1111", "mmlu": "not recorded"}
    assert "earlier" not in demo._code(status, ["dose"])
