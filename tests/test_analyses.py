from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "analyses" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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
    from steerlens.evaluation.personalization import PersonalizationConfig

    mod = _load("personalization")
    cfg = PersonalizationConfig(
        max_users=4,
        rank=2,
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
    assert ((table["low"] <= table["mean"]) & (table["mean"] <= table["high"])).all()
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
