from __future__ import annotations

import json

import pandas as pd
import pytest

from steerlens.demo import DemoConfig, run_demo


def test_demo_job_on_tiny_model_writes_results_and_figures(tmp_path):
    cfg = DemoConfig(
        model="tiny-random",
        out=str(tmp_path),
        train_pairs=8,
        test_prompts=8,
        alphas=[0.0, 4.0],
        max_new_tokens=6,
    )
    summary = run_demo(cfg)
    assert summary["data_is_simulated"] is True
    assert [r["alpha"] for r in summary["by_alpha"]] == [0.0, 4.0]
    sweep = pd.read_csv(tmp_path / "results" / "sweep.csv")
    assert len(sweep) == 16 and set(sweep["alpha"]) == {0.0, 4.0}
    assert set(sweep["category"]) == {
        "benign_control",
        "context_dependent",
        "harmful_borderline",
        "safe_sensitive",
    }
    # the MAE the summary reports is the mean of |tox(gen) - tox(preferred)|
    mae0 = (
        (sweep[sweep.alpha == 0]["toxicity"] - sweep[sweep.alpha == 0]["preferred_toxicity"])
        .abs()
        .mean()
    )
    assert summary["by_alpha"][0]["mae"] == pytest.approx(mae0, abs=1e-5)
    row = summary["by_alpha"][0]
    assert row["mae_low"] <= row["mae"] <= row["mae_high"]
    assert 0 <= row["degenerate_share"] <= 1
    assert not row["distinct_2_corpus"] <= 0  # a share in (0, 1], or NaN for bigram-free text
    assert set(summary["mae_change_pct_by_category"]) == set(sweep["category"])
    for name in ("dose_response.html", "selectivity.html", "dataset_overview.html"):
        assert (tmp_path / "figures" / name).exists()
    saved = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert (
        saved["layers"] == [2, 3] and (tmp_path / "results" / "population_caa.safetensors").exists()
    )


def test_demo_config_validation():
    with pytest.raises(ValueError, match="alpha"):
        DemoConfig(alphas=[1.0, 2.0])
    assert DemoConfig(quick=True).test_prompts == 16
