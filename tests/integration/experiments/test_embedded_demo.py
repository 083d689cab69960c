from __future__ import annotations

import pytest

from steerlens.experiments.demo import DemoConfig, run_demo
from steerlens.experiments.token_effects import TokenEffectsConfig
from steerlens.reporting.study import write_study_report

SUMMARY_KEYS = [
    "model",
    "data",
    "n_prompts",
    "n_users",
    "mae_baseline",
    "mae_best",
    "best_alpha",
    "ppl_baseline",
    "mmlu_unsteered",
    "mmlu_steered",
    "ppa_personalized",
    "ppa_population",
    "ppa_toxicity_only",
    "ppa_oracle",
    "utility_gain",
    "kl_neutral",
    "ppl_neutral",
    "kl_budgets",
    "calibrated",
    "utility_per_kl",
    "token_precision",
    "token_recall",
    "token_precision_baseline",
    "attribution_spearman",
    "steerx_pair_ppa",
    "steerx_pair_minus_all_ppa",
]

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
    token_effects=TokenEffectsConfig(
        max_users=4, targets_per_user=1, patch_targets=1, patch_layers=2, history_tokens=8
    ),
    steerx_users_per_group=1,
)


@pytest.mark.integration
@pytest.mark.slow
def test_quick_demo_on_the_embedded_model(tmp_path):
    """`steerlens demo --quick` end to end on the embedded model (about 8 minutes on 2 cores)."""
    s = run_demo(DemoConfig(quick=True, out=str(tmp_path)))
    write_study_report(tmp_path)
    for key in SUMMARY_KEYS:
        assert s[key] is not None, key
    # on the simulated set personal vectors separate held-out choices better than the
    # population vector (0.76 vs 0.64 when measured; the oracle is the ceiling)
    assert s["ppa_population"] < s["ppa_personalized"] <= s["ppa_oracle"]
    assert (tmp_path / "figures" / "index.html").exists()
