"""benchmarks/gpu.py end to end on the CPU with a tiny random Llama (so the GPU check cannot
rot between the sessions that have a GPU)."""

from __future__ import annotations

import json

import torch
from helpers import load_script
from transformers import AutoModelForCausalLM


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
    # the batch-1 limit is bandwidth / weight bytes: the weights counted here from the saved
    # folder; the bandwidth is reported to 0.001 TB/s (a bit, GiB or parameter-count slip
    # is off by far more)
    hf = AutoModelForCausalLM.from_pretrained(report["model"], dtype=torch.float32)
    weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    assert report["weight_gib"] == round(weight_bytes / 2**30, 2)
    limit = report["batch1_limit_tokens_per_s"]
    assert abs(limit * weight_bytes / 1e12 - report["read_bandwidth_tb_s"]) <= 5e-4 + 1e-6
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
    assert report["compiled_engine"]["compiled_steps"] > 0  # the compiled rows compiled
    assert set(report["compile_warmup_s"]["steerlens compiled, one vector"]) == {"1", "3"}
    for r in report["rows"]:  # the share is tokens/s over the limit (both rounded to 0.1)
        if r["batch"] == 1:
            want = r["tokens_per_s"] / limit
            assert abs(r["share_of_batch1_limit"] - want) <= 0.05 * (1 + want) / limit + 5e-4
        else:
            assert r["share_of_batch1_limit"] is None
    assert [r["row"] for r in report["prefill"]] == [
        "cache_activations (mean pool, all default layers)",
        "MMLU zero-shot",
    ]
    for r in report["prefill"]:  # tokens/s over the compute limit, as above
        want = r["tokens_per_s"] / r["compute_limit_tokens_per_s"]
        tol = 0.05 * (1 + want) / r["compute_limit_tokens_per_s"] + 5e-4
        assert abs(r["share_of_limit"] - want) <= tol
