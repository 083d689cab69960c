from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

import steerlens as sl
from steerlens.cli import app

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


def test_demo_command_quick_on_tiny(tmp_path):
    res = runner.invoke(app, ["demo", "--quick", "--model", "tiny-random", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "simulated data" in res.output and "distinct-2" in res.output
    assert (tmp_path / "results" / "summary.json").exists()
    assert (tmp_path / "figures" / "dose_response.html").exists()


def test_vectors_command_writes_files_the_library_reproduces(tmp_path):
    from test_data import _fixture_rows, _write

    folder = _write(tmp_path / "prism", _fixture_rows())
    out = tmp_path / "vecs"
    args = ["vectors", "--model", "tiny-random", "--data", str(folder), "--out", str(out)]
    res = runner.invoke(app, [*args, "--method", "dislike", "--all-users", "--gguf"])
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} >= {"dislike-u1.safetensors", "dislike-u1.gguf"}
    model = sl.load_model("tiny-random")
    pa = sl.methods.pair_activations(
        model, sl.data.load_prism(folder).preference_pairs(turn0_only=True), progress_bar=False
    )
    saved = sl.SteeringVector.load(out / "dislike-u1.safetensors")
    torch.testing.assert_close(
        saved.as_tensor(), sl.methods.dislike_weighted(pa, "u1").as_tensor(), rtol=1e-5, atol=1e-6
    )
    assert saved.metadata["data"] == str(folder)
    res = runner.invoke(app, [*args, "--method", "bt", "--user", "u2", "--rank", "2"])
    assert res.exit_code == 0, res.output
    assert (out / "bt-u2.safetensors").exists() and (out / "bt_coordinates.csv").exists()
    bad = runner.invoke(app, [*args, "--method", "dislike"])
    assert bad.exit_code != 0 and "--user ID or --all-users" in bad.output
    bad = runner.invoke(app, [*args, "--method", "dislike", "--user", "ghost"])
    assert bad.exit_code != 0 and "ghost" in bad.output
