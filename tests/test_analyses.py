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
