from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import steerlens as sl
from steerlens.cli import app
from steerlens.methods.registry import MethodOptions

runner = CliRunner()


def test_info_tiny():
    res = runner.invoke(app, ["info", "--model", "tiny-random"])
    assert res.exit_code == 0, res.output
    assert "TransformerBridge" in res.output and "[2, 3]" in res.output and "64" in res.output


def test_generate_with_vector_file_matches_library(tmp_path):
    vec = sl.SteeringVector(
        {2: torch.randn(64, generator=torch.Generator().manual_seed(0))}, model_name="tiny-random"
    )
    path = vec.save(tmp_path / "v.safetensors")
    res = runner.invoke(
        app,
        [
            "generate",
            "--model",
            "tiny-random",
            "-p",
            "hello",
            "--vector",
            str(path),
            "--alpha",
            "0",
            "--alpha",
            "6",
            "--gate",
            "first:2",
            "--max-new-tokens",
            "6",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.strip().splitlines()]
    assert [r["alpha"] for r in rows] == [0.0, 6.0]
    model = sl.load_model("tiny-random")
    expected = sl.generate(
        model,
        ["hello", "hello"],
        steering=vec,
        alpha=[0.0, 6.0],
        gate=sl.FirstK(2),
        max_new_tokens=6,
    )
    assert [r["text"] for r in rows] == expected


def test_generate_bad_gate_and_alpha_without_vector():
    res = runner.invoke(app, ["generate", "--model", "tiny-random", "-p", "x", "--alpha", "2"])
    assert res.exit_code != 0 and "--alpha needs --vector" in res.output
    res = runner.invoke(app, ["generate", "--model", "tiny-random", "-p", "x", "--gate", "first:z"])
    assert res.exit_code != 0


def test_demo_command_quick_on_tiny(tmp_path, monkeypatch):
    import steerlens.reporting.plots

    monkeypatch.setattr(
        steerlens.reporting.plots, "_chrome_available", lambda: False
    )  # HTML is enough
    res = runner.invoke(app, ["demo", "--quick", "--model", "tiny-random", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = res.output.replace("\n", "")  # rich wraps long paths at the terminal's width
    assert "simulated data" in out and "ΔMAE" in out and "index.html" in out
    assert "SteerX (reconstructed) vs all-history" in out
    assert (tmp_path / "results" / "summary.json").exists()
    assert (tmp_path / "figures" / "dose_response.html").exists()
    assert (tmp_path / "figures" / "index.html").exists()


@pytest.mark.parametrize(
    ("flags", "png"),
    [
        (["--quick"], False),
        (["--full"], True),
        (["--quick", "--png"], True),
        (["--full", "--no-png"], False),
    ],
)
def test_demo_exports_png_figures_with_full_or_when_asked(tmp_path, monkeypatch, flags, png):
    import steerlens.experiments.demo as demo
    import steerlens.reporting.study as study

    asked: list[bool] = []
    summary = {
        "seconds": {"total": 1.0},
        "data": "demo",
        "data_is_simulated": True,
        "dose_response": [],
        "operating_alpha": 0.5,
    }
    monkeypatch.setattr(demo, "run_demo", lambda cfg: summary)
    monkeypatch.setattr(study, "write_study_report", lambda out, png: asked.append(png) or [out])
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "summary.json").write_text("{}")
    res = runner.invoke(app, ["demo", *flags, "--model", "tiny-random", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert asked == [png]


def test_vectors_command_writes_files_the_library_reproduces(tmp_path):
    from helpers import _fixture_rows, _write

    folder = _write(tmp_path / "prism", _fixture_rows())
    out = tmp_path / "vecs"
    args = ["vectors", "--model", "tiny-random", "--data", str(folder), "--out", str(out)]
    res = runner.invoke(app, [*args, "--method", "dislike", "--all-users", "--gguf"])
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} >= {
        "dislike-weighted-u1.safetensors",
        "dislike-weighted-u1.gguf",
    }
    model = sl.load_model("tiny-random")
    pa = sl.methods.pair_activations(
        model, sl.data.load_prism(folder).preference_pairs(turn0_only=True), progress_bar=False
    )
    saved = sl.SteeringVector.load(out / "dislike-weighted-u1.safetensors")
    shrink = MethodOptions().shrink  # the registry's default, as in sweeps and the demo
    want = sl.methods.dislike_weighted(pa, "u1", shrink=shrink)
    torch.testing.assert_close(saved.as_tensor(), want.as_tensor(), rtol=1e-5, atol=1e-6)
    assert saved.metadata["data"] == str(folder)
    res = runner.invoke(app, [*args, "--method", "bt", "--user", "u2", "--rank", "2"])
    assert res.exit_code == 0, res.output
    assert (out / "bradley-terry-u2.safetensors").exists()
    assert (out / "bt_coordinates.csv").exists()
    bad = runner.invoke(app, [*args, "--method", "dislike"])
    assert bad.exit_code != 0 and "--user ID or --all-users" in bad.output
    bad = runner.invoke(app, [*args, "--method", "dislike", "--user", "ghost"])
    assert bad.exit_code != 0 and "ghost" in bad.output
    res = runner.invoke(app, [*args, "--format", "lm-eval", "--alpha", "2.0"])
    assert res.exit_code == 0, res.output
    lm = torch.load(out / "population.pt", weights_only=True)
    assert set(lm) == {f"layers.{layer}" for layer in pa.layers}
    assert all(e["steering_coefficient"] == 2.0 and e["action"] == "add" for e in lm.values())
    bad = runner.invoke(app, [*args, "--format", "onnx"])
    assert bad.exit_code != 0 and "gguf or lm-eval" in bad.output
    bad = runner.invoke(app, [*args, "--method", "caa"])
    assert bad.exit_code != 0 and "unknown vector method 'caa'" in bad.output


def test_effects_command_prints_and_writes_token_effects(tmp_path):
    out = tmp_path / "eff.csv"
    res = runner.invoke(
        app,
        [
            "effects",
            "--user",
            "user001",
            "--model",
            "tiny-random",
            "--targets",
            "1",
            "--n-history",
            "2",
            "--threshold",
            "0",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    frame = pd.read_csv(out)
    assert {"token", "p_with", "p_without", "effect"} <= set(frame.columns) and len(frame) > 5
    assert (frame["effect"] - (frame["p_with"] - frame["p_without"])).abs().max() < 1e-6
    bad = runner.invoke(app, ["effects", "--user", "nobody", "--model", "tiny-random"])
    assert bad.exit_code != 0 and "nobody" in bad.output


def test_sweep_command_runs_a_config(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        "model: tiny-random\nmethods: [population]\nalphas: [0, 4]\nn_prompts: 2\n"
        "max_new_tokens: 3\ntrain_pairs: 20\n"
    )
    res = runner.invoke(app, ["sweep", str(cfg), "--out", str(tmp_path / "sw")])
    assert res.exit_code == 0, res.output
    assert len(pd.read_parquet(tmp_path / "sw" / "cells.parquet")) == 4
    (tmp_path / "bad.yaml").write_text("model: tiny-random\nmethods: [vibes]\n")
    bad = runner.invoke(app, ["sweep", str(tmp_path / "bad.yaml")])
    assert bad.exit_code != 0 and "vibes" in bad.output


def test_steerx_command_saves_vectors_and_provenance(tmp_path):
    res = runner.invoke(
        app,
        ["steerx", "--user", "user001", "--model", "tiny-random", "--out", str(tmp_path)],
    )
    assert res.exit_code == 0, res.output
    folder = tmp_path / "user001" / "mean"
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["user"] == "user001" and prov["config"]["backbone"] == "mean"
    vec = sl.SteeringVector.load(folder / "steerx.safetensors")
    assert vec.method == "steerx-mean" and "description" in vec.metadata
    bad = runner.invoke(
        app, ["steerx", "--user", "user001", "--backbone", "lora", "--model", "tiny-random"]
    )
    assert bad.exit_code != 0


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="vLLM is installed (make test-serve)"
)
def test_serve_without_vllm_says_where_it_runs(tmp_path):
    res = runner.invoke(app, ["serve", "--vectors", str(tmp_path)])
    assert res.exit_code == 2 and "vLLM is not installed here" in res.output
    assert ".venv-serve" in res.output
