"""benchmarks/gpu.py end to end on the CPU with a tiny random Llama (so the GPU check cannot
rot between the sessions that have a GPU)."""

from __future__ import annotations

import json

from helpers import load_script


def _load(name: str):
    return load_script("benchmarks", name)


def test_gpu_script_runs_end_to_end_on_a_tiny_model(tmp_path):
    gpu = _load("gpu")
    out = tmp_path / "gpu.json"
    report = gpu.main(
        [
            "--tiny",
            "--device",
            "cpu",
            "--batches",
            "1",
            "3",
            "--new-tokens",
            "4",
            "--repeats",
            "1",
            "--prefill-texts",
            "4",
            "--bandwidth-gib",
            "0.05",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == report
    assert report["read_bandwidth_tb_s"] > 0 and report["batch1_limit_tokens_per_s"] > 0
    rows = {(r["batch"], r["row"]) for r in report["rows"]}
    for batch in (1, 3):
        for row in (
            "steerlens compiled, a vector and α per row",
            "steerlens compiled, one vector",
            "steerlens fast path, one vector",
            "steerlens fast path, a vector and α per row",
            "transformers eager",
            "transformers static cache + torch.compile (CPU: not compiled)",
        ):
            assert (batch, row) in rows
    assert all(r["tokens_per_s"] > 0 for r in report["rows"])
    assert report["compiled_engine"]["compiled_steps"] > 0  # the compiled rows compiled
    assert set(report["compile_warmup_s"]["steerlens compiled, one vector"]) == {"1", "3"}
    assert all(r["share_of_batch1_limit"] is not None for r in report["rows"] if r["batch"] == 1)
    assert [r["row"] for r in report["prefill"]] == [
        "cache_activations (mean pool, all default layers)",
        "MMLU zero-shot",
    ]
    assert all(r["share_of_limit"] > 0 for r in report["prefill"])
