"""The GPU check in one command: steered decoding speed against plain ``transformers`` and
against the memory-bandwidth limit, on a random-init Llama-3.1-8B-shaped model.

1. writes the model (``benchmarks/random_llama.py``; 7.38B parameters, bf16) unless
   ``--model`` names a folder;
2. measures the device's read bandwidth (a large tensor reduced, median of 5), so one decoding
   step at batch 1 cannot beat ``weight bytes / bandwidth``: the limit in tokens/s;
3. greedy generation of ``--new-tokens`` tokens at each batch size, interleaved, medians of
   ``--repeats``: steerlens' compiled engine and its eager fast path, each with one vector
   and with a vector and α per row, plain
   ``transformers`` eager, and plain ``transformers`` with a static KV cache, which on CUDA
   its ``generate`` compiles with ``torch.compile`` (what a speed-minded user runs; the
   warm-up, compilation included, is reported apart);
4. peak CUDA memory of each row (one copy of the weights plus what the call allocated; the
   plain model and steerlens' are both resident) against the weights plus the KV cache;
5. prefill-heavy work (activation caching, zero-shot MMLU; batches packed by the device's
   token budget) in tokens/s against the compute limit, ``matmul FLOP/s / (2 x parameters)``;
6. prints the table (tokens/s, the share of the batch-1 limit) and writes ``--out`` (JSON);
7. with ``--vllm`` where vLLM is installed (its GPU build pins its own torch: a venv of its
   own with ``steerlens[serve]``): ``benchmarks/serve.py``'s rows on the same model and
   batches, vLLM steered per request vs unsteered, vs steerlens' ``hf`` engine and plain
   ``transformers``. The worker runs eager (no CUDA graphs): the graph-friendly route, a
   custom op reading fixed per-token buffers, is the follow-up (CONTRIBUTING.md).

It stops starting new rows once ``--budget-s`` seconds have passed (default 420: the whole
check fits an 8-minute call). ``--tiny`` runs it end to end on a small random model (a test
runs it on the CPU, so the script cannot rot).

Usage: python benchmarks/gpu.py [--model DIR] [--batches 1 16 64] [--new-tokens 128]
       [--repeats 3] [--out results/gpu.json] [--tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import random_llama

import steerlens as sl
from steerlens.core.engines.compiled import clear_caches, engine_stats

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def read_bandwidth(device: str, gib: float) -> float:
    """Bytes per second the device reads (a ``gib`` GiB tensor summed, median of 5)."""
    n = int(gib * 2**30 / 2)
    x = torch.ones(n, dtype=torch.bfloat16, device=device)
    x.sum()
    times = []
    for _ in range(5):
        _sync(device)
        t = time.perf_counter()
        x.sum(dtype=torch.float32)
        _sync(device)
        times.append(time.perf_counter() - t)
    del x
    return 2 * n / statistics.median(times)


def matmul_rate(device: str, n: int) -> float:
    """FLOP/s of an ``n x n`` matrix multiply in the run's dtype (median of 5)."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(5):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def prefill_rows(model: Any, n_params: int, flops: float, args: argparse.Namespace) -> list[dict]:
    """Prefill-heavy work (activation caching, MMLU) in tokens/s against the compute limit,
    ``flops / (2 x parameters)`` tokens/s; batches packed by the device's token budget."""
    texts = [(PROMPT + " ") * (1 + i % 8) for i in range(args.prefill_texts)]
    ids = sl.tokens.tokenize(model, texts)
    n_tok = sum(int(x.numel()) for x in ids)
    limit = flops / (2 * n_params)
    layers = sl.default_layers(model)
    items = sl.data.load_mmlu(n=args.prefill_texts, seed=0)
    from steerlens.metrics.mmlu import mmlu_prompt

    mmlu_tok = sum(
        int(x.numel()) for x in sl.tokens.tokenize(model, [mmlu_prompt(i) for i in items])
    )
    rows = []
    for name, fn, tokens in (
        (
            "cache_activations (mean pool, all default layers)",
            lambda: sl.cache_activations(
                model, ids, layers, pool="mean", batch_size=256, progress_bar=False
            ),
            n_tok,
        ),
        (
            "MMLU zero-shot",
            lambda: sl.evaluation.mmlu_accuracy(model, items, batch_size=256),
            mmlu_tok,
        ),
    ):
        fn()  # warm-up
        seconds = statistics.median(_timed(fn, args.device) for _ in range(args.repeats))
        rows.append(
            {
                "row": name,
                "tokens": tokens,
                "tokens_per_s": round(tokens / seconds, 1),
                "compute_limit_tokens_per_s": round(limit, 1),
                "share_of_limit": round(tokens / seconds / limit, 3),
            }
        )
    return rows


def _timed(fn: Callable[[], Any], device: str) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def _hf_inputs(tok: Any, batch: int, device: str) -> dict[str, torch.Tensor]:
    text = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    enc = tok([text] * batch, return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(device) for k, v in enc.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    folder = args.model
    if folder is None:
        folder = str(Path(tempfile.mkdtemp()) / "llama-random")
        size = (
            [
                "--layers",
                "2",
                "--hidden",
                "64",
                "--intermediate",
                "128",
                "--heads",
                "4",
                "--kv-heads",
                "2",
                "--dtype",
                "float32",
            ]
            if args.tiny
            else []
        )
        random_llama.main([folder, "--device", device, *size])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    model = sl.load_model(folder, device=device, dtype=str(dtype).split(".")[-1])
    weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    loaded = torch.cuda.memory_allocated() if device.startswith("cuda") else 0  # both models
    bandwidth = read_bandwidth(device, args.bandwidth_gib)
    limit = bandwidth / weight_bytes  # tokens/s at batch 1: every step reads every weight
    layers = sl.default_layers(model)
    g = torch.Generator().manual_seed(0)
    d = model.cfg.d_model

    def vec(scale: float = 1.0) -> sl.SteeringVector:
        return sl.SteeringVector(
            {layer: scale * torch.randn(d, generator=g) for layer in layers},
            model_name=sl.model_name(model),
        )

    one = vec()
    cfg = model.cfg
    kv_per_token = 2 * cfg.n_layers * (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
    kv_per_token *= cfg.d_head * torch.finfo(dtype).bits // 8
    rows: list[dict[str, Any]] = []
    compiled: dict[str, Any] = {}
    for batch in args.batches:
        if time.perf_counter() - t0 > args.budget_s:
            break
        users = [vec() for _ in range(batch)]
        alphas = [0.5 + 0.1 * (i % 5) for i in range(batch)]
        enc = _hf_inputs(tok, batch, device)
        n_prompt = int(enc["input_ids"].shape[1])

        def hf_gen(static: bool, enc: dict[str, torch.Tensor] = enc) -> None:
            with torch.inference_mode():
                hf.generate(
                    **enc,
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id or tok.eos_token_id,
                    **({"cache_implementation": "static"} if static else {}),
                )

        def steer(
            per_row: bool,
            engine: str = "hf",
            batch: int = batch,
            users: list = users,
            alphas: list = alphas,
        ) -> None:
            sl.generate(
                model,
                [PROMPT] * batch,
                steering=users if per_row else one,
                alpha=alphas if per_row else 0.5,
                max_new_tokens=args.new_tokens,
                batch_size=batch,
                stop_at_eos=False,
                progress_bar=False,
                engine=engine,  # type: ignore[arg-type]
            )

        # on CUDA, generate() compiles the decoding step itself once the cache is static
        # (transformers' auto-compile); on a CPU the row is the static cache alone
        static = "transformers static cache + torch.compile" + (
            "" if device.startswith("cuda") else " (CPU: not compiled)"
        )
        fns = {
            "steerlens compiled, a vector and α per row": lambda: steer(True, "compiled"),
            "steerlens compiled, one vector": lambda: steer(False, "compiled"),
            "steerlens fast path, a vector and α per row": lambda: steer(True),
            "steerlens fast path, one vector": lambda: steer(False),
            "transformers eager": lambda: hf_gen(False),
            static: lambda: hf_gen(True),
        }
        # warm-ups (the compiled rows' include their compile time, reported apart)
        for name, fn in fns.items():
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            warm = _timed(fn, device)
            if name == static or "compiled" in name:
                compiled.setdefault(name, {})[str(batch)] = round(warm, 1)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.repeats):
            for name, fn in fns.items():  # interleaved
                times[name].append(_timed(fn, device))
        peaks: dict[str, float] = {}
        for name, fn in fns.items() if device.startswith("cuda") else ():
            # one more run each, with no static cache left from another row: both models are
            # resident, so one copy of the weights + what this call added over the models
            clear_caches()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            fn()
            extra = torch.cuda.max_memory_allocated() - loaded
            peaks[name] = (weight_bytes + extra) / 2**30
        kv = kv_per_token * batch * (n_prompt + args.new_tokens)
        for name, ts in times.items():
            tps = batch * args.new_tokens / statistics.median(ts)
            rows.append(
                {
                    "batch": batch,
                    "row": name,
                    "tokens_per_s": round(tps, 1),
                    "share_of_batch1_limit": round(tps / limit, 3) if batch == 1 else None,
                    "peak_gib": round(peaks[name], 2) if name in peaks else None,
                    "weights_plus_kv_gib": round((weight_bytes + kv) / 2**30, 2),
                }
            )
    flops = matmul_rate(device, 8192 if device.startswith("cuda") else 1024)
    n_params = sum(p.numel() for p in hf.parameters())
    prefill = (
        prefill_rows(model, n_params, flops, args)
        if time.perf_counter() - t0 < args.budget_s
        else []
    )
    report = {
        "date": str(date.today()),
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "versions": {p: version(p) for p in ("torch", "transformers", "transformer-lens")},
        "model": folder,
        "parameters_b": round(sum(p.numel() for p in hf.parameters()) / 1e9, 3),
        "weight_gib": round(weight_bytes / 2**30, 2),
        "read_bandwidth_tb_s": round(bandwidth / 1e12, 3),
        "batch1_limit_tokens_per_s": round(limit, 1),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "compile_warmup_s": compiled,
        "rows": rows,
        "matmul_tflops": round(flops / 1e12, 2),
        "prefill": prefill,
        "seconds": round(time.perf_counter() - t0, 1),
        "compiled_engine": dataclasses.asdict(engine_stats()),
    }
    return report


def vllm_rows(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """``benchmarks/serve.py`` on ``model`` (a folder), or why not."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "vLLM is not installed in this environment"}
    sys.path.insert(0, str(Path(__file__).parent))
    import serve

    ns = argparse.Namespace(
        model=model, batches=args.batches, new_tokens=args.new_tokens, repeats=args.repeats
    )
    report = serve.run(ns)
    report["ratios"] = [{"batch": b, "what": w, "ratio": r} for b, w, r in serve.ratios(report)]
    for r in report["ratios"]:
        print(f"vllm {r['batch']:5d}  {r['what']:40s} {r['ratio']:6.2f}x")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="an HF folder (default: write the random 8B-shaped model)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bandwidth-gib", type=float, default=4.0)
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--prefill-texts", type=int, default=512, help="texts / MMLU items")
    ap.add_argument("--out", default="results/gpu.json")
    ap.add_argument("--tiny", action="store_true", help="a small random model (dry run)")
    ap.add_argument("--vllm", action="store_true", help="add benchmarks/serve.py's rows")
    args = ap.parse_args(argv)
    report = run(args)
    if args.vllm:
        report["vllm"] = vllm_rows(str(report["model"]), args)
    print(
        f"\n{report['device']} · {report['parameters_b']}B parameters · read "
        f"{report['read_bandwidth_tb_s']} TB/s · batch-1 limit "
        f"{report['batch1_limit_tokens_per_s']} tokens/s · {report['versions']}"
    )
    print(f"{'batch':>5s}  {'row':46s} {'tokens/s':>9s} {'of limit':>8s} {'peak GiB':>8s}")
    for r in report["rows"]:
        share = "" if r["share_of_batch1_limit"] is None else f"{r['share_of_batch1_limit']:.2f}"
        peak = "" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        print(f"{r['batch']:5d}  {r['row']:46s} {r['tokens_per_s']:9.1f} {share:>8s} {peak:>8s}")
    print(f"\nprefill (matmul {report['matmul_tflops']} TFLOP/s; limit = that / 2 x parameters)")
    for r in report["prefill"]:
        print(
            f"  {r['row']:52s} {r['tokens_per_s']:10.0f} tokens/s  {r['share_of_limit']:.2f} of limit"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
