from __future__ import annotations

import pandas as pd
import pytest
from helpers import load_script

import steerlens as sl


def _load(name: str):
    return load_script("analyses", name)


def test_dataset_overview_script(tmp_path):
    mod = _load("dataset_overview")
    report = mod.overview("demo", tmp_path / "fig", tmp_path / "tab")
    assert (tmp_path / "fig" / "dataset_overview.html").exists()
    users = pd.read_csv(tmp_path / "tab" / "dataset_users.csv")
    assert len(users) >= 48 and set(users["group"]) == {"majority", "more_caution", "less_caution"}
    assert set(report["style_means"]) == {"direct", "cautious", "refusal", "casual_edgy"}
    assert set(report["pairs_by_category"]) == {
        "benign_control",
        "context_dependent",
        "harmful_borderline",
        "safe_sensitive",
    }


def test_personalization_script_on_the_tiny_model(tmp_path):
    from steerlens.experiments.personalization import PersonalizationConfig
    from steerlens.methods.options import MethodOptions

    mod = _load("personalization")
    cfg = PersonalizationConfig(
        max_users=4,
        options=MethodOptions(rank=2),
        steer_alpha=2.0,
        max_steer_pairs=8,
        n_boot=50,
        utility_alpha=2.0,
        utility_prompts_per_user=1,
        utility_tokens=4,
    )
    report = mod.run("tiny-random", "demo", tmp_path, cfg, progress_bar=False)
    table = pd.read_csv(tmp_path / "results" / "personalization.csv")
    methods = set(table["method"])
    assert {"population", "toxicity-only", "chance", "oracle"} <= methods
    assert {"personalized (Bradley-Terry)", "personalized (dislike-weighted)"} <= methods
    assert set(table["measure"]) == {
        "ppa_projection",
        "ppa_projection_paired",
        "ppa_under_steering",
        "utility_gain",
    }
    groups = pd.read_csv(tmp_path / "results" / "utility_by_group.csv")
    assert set(groups["method"]) == {
        "personalized (Bradley-Terry)",
        "personalized (dislike-weighted)",
        "population",
    }
    # every utility number beside its degenerate-or-empty share
    util = table[table["measure"] == "utility_gain"]
    assert util["degenerate_share"].between(0, 1).all()
    assert groups["degenerate_share"].between(0, 1).all()
    # chance is the constant 0.5; a paired row is the difference of the two methods' means
    # (the same test users); every vector method's projection PPA has a real interval
    chance = table[table["method"] == "chance"].iloc[0]
    assert (chance["mean"], chance["low"], chance["high"], chance["n"]) == (0.5, 0.5, 0.5, 0)
    ppa = table[table["measure"] == "ppa_projection"].set_index("method")
    paired = table[table["measure"] == "ppa_projection_paired"].set_index("method")["mean"]
    for name in ("dislike-weighted", "Bradley-Terry"):
        gap = ppa.loc[f"personalized ({name})", "mean"] - ppa.loc["population", "mean"]
        assert paired[f"{name} − population"] == pytest.approx(gap)
        assert ppa.loc[f"personalized ({name})", "low"] < ppa.loc[f"personalized ({name})", "high"]
    assert ppa.loc["population", "low"] < ppa.loc["population", "high"]
    assert (tmp_path / "figures" / "ppa.html").exists()
    assert (tmp_path / "figures" / "users_bt.html").exists()
    coords = pd.read_csv(tmp_path / "results" / "users_bt.csv", index_col=0)
    assert len(coords) == 4 and "group" in coords
    assert report["simulated"] is True and report["n_test_pairs"] > 0


def test_mmlu_script_on_the_tiny_model(tmp_path):
    mod = _load("mmlu")
    vec = __import__("steerlens").SteeringVector(
        {2: __import__("torch").ones(64)}, model_name="tiny-random"
    )
    vec.save(tmp_path / "v.safetensors")
    report = mod.run(
        "tiny-random",
        "demo",
        tmp_path,
        vector=str(tmp_path / "v.safetensors"),
        alphas=(1.0,),
        n_items=8,
    )
    assert [r["condition"] for r in report["rows"]] == ["unsteered", "steered α=1 (all)"]
    assert report["n_items"] == 8 and (tmp_path / "figures" / "mmlu.html").exists()


def test_sweep_analyses_share_the_dose_sweep_and_gate(tmp_path, monkeypatch):
    import steerlens.reporting.plots
    from steerlens.experiments.config import RunSection

    monkeypatch.setattr(steerlens.reporting.plots, "_chrome_available", lambda: False)
    opts = dict(
        n_prompts=4,
        max_new_tokens=4,
        run=RunSection(batch_size=8),
        train_pairs=40,
        progress_bar=False,
    )
    dose = _load("dose_response").run(
        "tiny-random",
        "demo",
        tmp_path,
        methods=["population", "dislike-weighted"],
        alphas=[0.0, 4.0],
        **opts,
    )
    assert {r["method"] for r in dose["rows"]} == {"population", "dislike-weighted"}
    parts = sorted((tmp_path / "results" / "sweep" / "dose" / "parts").glob("*.jsonl"))
    stamps = [p.stat().st_mtime_ns for p in parts]
    sel = _load("selectivity").run(
        "tiny-random",
        "demo",
        tmp_path,
        methods=["population", "dislike-weighted"],
        alphas=[0.0, 4.0],
        **opts,
    )
    assert [p.stat().st_mtime_ns for p in parts] == stamps  # resumed: nothing regenerated
    assert set(sel["tables"]) == {"population", "dislike-weighted"}
    gate = _load("prefill_gating").run(
        "tiny-random", "demo", tmp_path, alpha=4.0, ks=(0, 2), **opts
    )
    assert [r["gate"] for r in gate["rows"]] == [
        "prefill",
        "first:0",
        "first:2",
        "generated",
        "all",
    ]
    for name in ("dose_response", "selectivity_population", "gating"):
        assert (tmp_path / "figures" / f"{name}.html").exists()


def test_steerx_effects_script_on_the_tiny_model(tmp_path, monkeypatch):
    import json

    import steerlens.reporting.plots

    monkeypatch.setattr(steerlens.reporting.plots, "_chrome_available", lambda: False)
    report = _load("steerx_effects").run(
        "tiny-random",
        "demo",
        tmp_path,
        max_users=3,
        targets_per_user=1,
        patch_targets=1,
        patch_layers=2,
        history_tokens=8,
        progress_bar=False,
    )
    assert report["n_targets"] == 3
    assert 0 < report["planted"]["planted_share"] < report["completed"]["planted_share"] < 1
    assert set(report["attribution_spearman"]) == {"steps=1", "steps=8"}
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    for key in (
        "token_precision",
        "token_recall",
        "token_precision_baseline",
        "token_recall_baseline",
        "attribution_spearman",
    ):
        assert key in summary
    for name in (
        "steerx_pr",
        "steerx_tokens",
        "steerx_items",
        "steerx_history_tokens",
        "steerx_patching",
    ):
        assert (tmp_path / "figures" / f"{name}.html").exists()


def test_steerx_compare_script_on_the_tiny_model(tmp_path, monkeypatch):
    import json

    import torch

    import steerlens.reporting.plots
    from steerlens.experiments.steerx_study import SteerXStudyConfig

    monkeypatch.setattr(steerlens.reporting.plots, "_chrome_available", lambda: False)

    class RandomSAE:
        W_dec = torch.randn(96, 64, generator=torch.Generator().manual_seed(0))

        def encode(self, x):
            return torch.relu(x @ self.W_dec.T)

    cfg = SteerXStudyConfig(
        backbones=["mean", "mean-context", "bipo", "sae"],  # the sae one with the SAE given
        users_per_group=1,
        max_targets=2,
        n_history=2,
        prompts_per_user=1,
        max_new_tokens=3,
        alphas=[0.0, 4.0],
        report_alpha=4.0,
        threshold=0.0,
        bipo={"epochs": 1, "lr": 0.05},
        sae_max_density=1.0,
    )
    report = _load("steerx_compare").run(
        "tiny-random", "demo", tmp_path, cfg, sae=RandomSAE(), progress_bar=False
    )
    table = pd.read_csv(tmp_path / "results" / "steerx_compare.csv")
    backbones = {"mean", "mean-context", "bipo", "sae"}
    for backbone in backbones:
        part = table[table["backbone"] == backbone]
        assert {
            "ppa_projection",
            "ppa_projection_paired",
            "ppa_under_steering@4",
            "ppa_under_steering@4_paired",
            "mae_change_pct@4",
            "utility_gain@4",
        } <= set(part["measure"])
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    for key in ("steerx_ppa", "allhistory_ppa", "steerx_ppa_under_steering"):
        assert set(summary[key]) == {*backbones, "pairs"}  # the pair-based backbone too
    pairs = table[table["backbone"] == "pairs"]
    assert set(pairs["measure"]) == {
        "ppa_projection",
        "ppa_projection_paired",
        "ppa_under_steering@4",
        "ppa_under_steering@4_paired",
    }
    assert summary["steerx_pair_ppa"] == summary["steerx_ppa"]["pairs"]
    by_mode = summary["description_hit_rate_by_mode"]
    assert (
        set(by_mode) == {"spans", "model"} and by_mode["spans"] == summary["description_hit_rate"]
    )
    descriptions = pd.read_csv(tmp_path / "results" / "steerx_descriptions.csv")
    # the hit rate is the share of users (one row each, first backbone) whose description hit
    first = descriptions[descriptions["backbone"] == cfg.backbones[0]]
    assert first["user"].is_unique and len(first) == 3
    for mode in ("spans", "model"):
        assert by_mode[mode] == pytest.approx(first[f"hit_{mode}"].astype(float).mean())
    assert descriptions["description_model"].str.startswith("The user prefers").all()
    assert (descriptions["description"] == descriptions["description_spans"]).all()
    assert len(report["cards"]) == 3  # one user card per simulated group
    for user in report["cards"]:
        page = tmp_path / "figures" / f"steerx_user_{user}.html"
        assert "SteerX user card" in page.read_text()
    assert (tmp_path / "results" / "steerx" / "vectors" / "bipo").is_dir()


def test_steerx_study_leaves_out_a_user_without_generic_responses(tmp_path, monkeypatch):
    import steerlens.experiments.steerx_study as study_mod
    from steerlens.experiments.steerx_study import SteerXStudyConfig, steerx_study

    model = sl.load_model("tiny-random")
    ds = sl.data.load_prism("demo")
    cfg = SteerXStudyConfig(
        backbones=["mean"],
        users_per_group=1,
        max_targets=2,
        n_history=2,
        prompts_per_user=1,
        max_new_tokens=2,
        alphas=[0.0, 4.0],
        report_alpha=4.0,
        threshold=0.0,
        steer_ppa=False,
    )
    real = study_mod.generic_responses
    blank = {"n": 0}  # the first n targets (the first user's, in the study's order) stop at once

    def generic(model, prompts, **kw):
        out = real(model, prompts, **kw)
        return ["" if i < blank["n"] else g for i, g in enumerate(out)]

    monkeypatch.setattr(study_mod, "generic_responses", generic)
    full = steerx_study(model, ds, cfg, out=tmp_path / "a", progress_bar=False)
    users = list(full["results"]["mean"])
    blank["n"] = len(full["results"]["mean"][users[0]].targets)
    part = steerx_study(model, ds, cfg, out=tmp_path / "b", progress_bar=False)
    assert list(part["results"]["mean"]) == users[1:]
    assert set(part["users"]["user"]) == set(users[1:])
    blank["n"] = 10**6
    with pytest.raises(ValueError, match="every user's generic responses are empty"):
        steerx_study(model, ds, cfg, out=tmp_path / "c", progress_bar=False)
