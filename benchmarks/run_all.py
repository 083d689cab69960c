"""Speed of steerlens against plain ``transformers`` on the same machine, in one run.

Prints ratios (>1 means steerlens is faster) and writes ``results/bench.json``:

1. steered batched greedy generation (fast path and TransformerLens-hook path) vs
   ``transformers`` ``generate`` unsteered (batch 16, 32 new tokens); and with α per row at
   batch 1 and 16, the compiled engine vs the eager fast path, ``transformers`` eager, and
   ``transformers`` with a static cache and ``torch.compile`` (``CompileConfig``, forced on a
   CPU);
2. a 6-point alpha sweep in one batched pass vs 6 separate passes, against the speed-up
   plain ``transformers`` gets from the same batching (the machine's limit); and the
   personalised sweep (48 users x 3 alphas, 32 new tokens, every row its user's vector) as
   one per-row-vector job and as a loop over users, against plain ``transformers`` batched
   generation of the same 144 rows;
3. ``cache_activations`` vs a ``transformers`` forward with ``output_hidden_states=True``;
4. start-up (``benchmarks/startup.py``): ``import steerlens`` and the CLI's ``--help`` against
   ``import torch, transformers``, each in fresh processes;
5. the process's peak memory (one fresh process each): plain ``transformers``, steerlens on
   the TransformerLens path, and steerlens on the fast path, as multiples of the weights of
   one copy of the model;
6. serving (``benchmarks/serve.py``, run in ``.venv-serve`` where it exists): vLLM steered per
   request vs unsteered, vs steerlens' ``hf`` engine and vs plain ``transformers``.

The model is loaded **by name** — by default the embedded model's ordinary HF folder (its
path), through the same code as a hub name such as ``meta-llama/Llama-3.1-8B-Instruct``,
not the embedded shortcut — so the fast path measured is the one every model gets.

Usage: ``python benchmarks/run_all.py [--model NAME_OR_FOLDER] [--repeats 5] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

import steerlens as sl
from steerlens.core import engines

sys.path.insert(0, str(Path(__file__).parent))
from startup import startup_part

PROMPTS = [
    "What is the capital of Australia?",
    "How do I boil an egg?",
    "Write a poem about rain.",
    "Should I rent or buy a house?",
    "Explain photosynthesis simply.",
    "How do vaccines work?",
    "Give me three tips for sleeping better.",
    "What is a prime number?",
    "How do bees make honey?",
    "Is social media bad for teenagers?",
    "Summarise Cinderella in two sentences.",
    "What should I pack for a hike?",
    "How does a refrigerator work?",
    "Why is the sky blue?",
    "Tell me a fact about octopuses.",
    "How can I support a friend with anxiety?",
]


PARTS = (
    "startup",
    "generation",
    "compiled",
    "sweep",
    "personalised",
    "cache",
    "mmlu",
    "memory",
    "serve",
)


def serve_rows(model: str) -> list[tuple[str, float, float | None]]:
    """``benchmarks/serve.py`` in the serve environment (``.venv-serve``, ``make test-serve``):
    its batch-32 ratios, or none (said) where that environment is absent."""
    py = Path(__file__).resolve().parents[1] / ".venv-serve" / "bin" / "python"
    if not py.exists():
        print("serve part skipped: no .venv-serve (make test-serve builds it)")
        return []
    out = Path("results/bench_serve.json")
    script = str(Path(__file__).with_name("serve.py"))
    subprocess.run([str(py), script, "--model", model, "--out", str(out)], check=True)
    report = json.loads(out.read_text())
    targets = {"vllm steered / vllm unsteered": 0.9}
    return [
        (f"serve, batch {r['batch']}: {r['what']}", r["ratio"], targets.get(r["what"]))
        for r in report["ratios"]
        if r["batch"] == max(x["batch"] for x in report["ratios"])
    ]


def compare(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, runs interleaved (a b c a b c ...) after a warm-up.

    Interleaving makes slow drifts of a shared machine hit every contender alike.
    """
    for fn in fns.values():
        fn()
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            runs[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in runs.items()}


def resolve_name(name: str) -> str:
    """The embedded model's HF folder (created on its first load) for the default name."""
    if name != "smollm2-135m-instruct":
        return name
    from steerlens.core._embedded import _cache_dir, load_embedded_hf

    load_embedded_hf()  # writes the folder once
    return str(_cache_dir())


def plain_hf(name: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="sdpa")
    return hf.to(device).eval(), AutoTokenizer.from_pretrained(name)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_probe(name: str, mode: str, device: str) -> dict[str, float]:
    """Load, generate steered (or plain), and report memory; run in a fresh process."""
    import resource

    before = _rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if mode == "plain":
        hf, tok = plain_hf(name, device, dtype)
        weights = sum(p.numel() * p.element_size() for p in hf.parameters()) / 2**20
        hf_generate(hf, tok, PROMPTS, 32)
    else:
        model = sl.load_model(name, device=device, dtype=dtype)
        weights = (
            sum(
                p.numel() * p.element_size()
                for p in {id(p): p for p in model.original_model.parameters()}.values()
            )
            / 2**20
        )
        vec = sl.SteeringVector(
            {lyr: torch.ones(model.cfg.d_model) for lyr in sl.default_layers(model)},
            model_name=sl.model_name(model),
        )
        sl.generate(
            model,
            PROMPTS,
            steering=vec,
            alpha=0.5,
            engine=mode,
            max_new_tokens=32,
            stop_at_eos=False,
            progress_bar=False,
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "weights_mb": weights,
        "rss_before_mb": before,
        "peak_rss_mb": peak,
        "rss_after_mb": _rss_mb(),
    }
    if device.startswith("cuda"):
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def memory_rows(name: str, device: str) -> tuple[list[tuple[str, float, float | None]], dict]:
    import subprocess
    import sys

    probes = {}
    for mode in ("plain", "tl", "hf"):
        cmd = [
            sys.executable,
            __file__,
            "--model",
            name,
            "--device",
            device,
            "--memory-probe",
            mode,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"memory probe {mode!r} failed:\n{res.stderr[-4000:]}")
        probes[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    weights = probes["plain"]["weights_mb"]
    rows: list[tuple[str, float, float | None]] = []
    labels = {
        "plain": "plain transformers",
        "tl": "steerlens TL hooks",
        "hf": "steerlens fast path",
    }
    if device.startswith("cuda"):
        for mode, label in labels.items():
            rows.append(
                (
                    f"CUDA peak memory / weights: {label}",
                    probes[mode]["cuda_peak_mb"] / weights,
                    1.1 if mode == "hf" else None,
                )
            )
        extra = probes["hf"]["cuda_peak_mb"] - probes["tl"]["cuda_peak_mb"]
    else:
        for mode, label in labels.items():
            p = probes[mode]
            rows.append(
                (
                    f"peak RSS / weights: {label}",
                    (p["peak_rss_mb"] - p["rss_before_mb"]) / weights,
                    1.1 if mode == "hf" else None,
                )
            )
            rows.append(
                (
                    f"resident after generating / weights: {label}",
                    (p["rss_after_mb"] - p["rss_before_mb"]) / weights,
                    None,
                )
            )
        extra = (probes["hf"]["rss_after_mb"] - probes["hf"]["rss_before_mb"]) - (
            probes["tl"]["rss_after_mb"] - probes["tl"]["rss_before_mb"]
        )
    rows.append(("fast path's extra memory / weights (no second copy)", extra / weights, 0.1))
    return rows, probes


def hf_generate(hf, tok, prompts: list[str], new_tokens: int, batch: int | None = None) -> None:
    if batch is not None:  # plain transformers' batched generation, ``batch`` rows at a time
        for i in range(0, len(prompts), batch):
            hf_generate(hf, tok, prompts[i : i + batch], new_tokens)
        return
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    enc = tok(
        texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    ).to(hf.device)
    with torch.inference_mode():
        hf.generate(
            **enc,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id or tok.eos_token_id,
        )


def compiled_part(
    model: sl.HookedModel,
    hf,
    tok,
    vec: sl.SteeringVector,
    kw: dict,
    args: argparse.Namespace,
) -> dict[str, dict[str, float]]:
    """Steered generation with α per row (32 new tokens) at batch 1 and 16 on the compiled
    engine and on the eager fast path, against plain ``transformers`` eager and with a static
    cache compiled by its own ``generate`` (``CompileConfig``; forced on a CPU, where
    transformers does not compile by default). Compilation is in the warm-up, reported apart."""
    from transformers import CompileConfig

    from steerlens.core.engines.compiled import engine_stats

    new = kw["max_new_tokens"]
    static = CompileConfig(fullgraph=True, dynamic=False)
    static._compile_all_devices = True
    results = {}
    for batch in (1, 16):
        prompts = PROMPTS[:batch]
        alphas = [0.25 * (i % 8) for i in range(batch)]

        def ours(engine: str, prompts: list[str] = prompts, alphas: list[float] = alphas) -> None:
            sl.generate(model, prompts, steering=vec, alpha=alphas, engine=engine, **kw)

        def hf_static(prompts: list[str] = prompts) -> None:
            hf.generation_config.cache_implementation = "static"
            hf.generation_config.compile_config = static
            try:
                hf_generate(hf, tok, prompts, new)
            finally:
                hf.generation_config.cache_implementation = None
                hf.generation_config.compile_config = None

        warm = {}
        for name, fn in (("compiled", lambda: ours("compiled")), ("hf_static", hf_static)):
            t = time.perf_counter()
            fn()
            warm[name] = time.perf_counter() - t
        out = compare(
            {
                "compiled": lambda: ours("compiled"),
                "fast": lambda: ours("hf"),
                "hf": lambda p=prompts: hf_generate(hf, tok, p, new),
                "hf_static": hf_static,
            },
            args.repeats,
        )
        out["compiled_warmup"] = warm["compiled"]
        out["hf_static_warmup"] = warm["hf_static"]
        results[str(batch)] = out
    results["graphs"] = {"n": engine_stats().graphs}
    return results


def mmlu_part(model: sl.HookedModel, name: str, args: argparse.Namespace) -> dict[str, float]:
    """Zero-shot MMLU on ``--mmlu-items`` items: steerlens (one pass an item, packed batches,
    the unembedding only where scored) against plain HF (one full forward an item, as a
    careful user writes it) and, where installed, lm-evaluation-harness's ``hf`` model
    (its loglikelihood requests, 4 an item). Once each (they take minutes); the answers of
    all three are checked to agree."""
    from steerlens.metrics.mmlu import mmlu_prompt

    items = sl.data.load_mmlu(n=args.mmlu_items, seed=0)
    hf, tok = plain_hf(name, args.device, torch.float32 if args.device == "cpu" else torch.bfloat16)
    letters = [tok(f" {x}", add_special_tokens=False)["input_ids"][-1] for x in "ABCD"]
    out: dict[str, float] = {}
    t = time.perf_counter()
    ours = sl.evaluation.mmlu_accuracy(model, items, batch_size=16)
    out["sl"] = time.perf_counter() - t
    t = time.perf_counter()
    preds = []
    with torch.inference_mode():
        for it in items:
            enc = tok(mmlu_prompt(it), return_tensors="pt").to(args.device)
            logits = hf(**enc).logits[0, -1]  # " A".." D" are one token each here
            preds.append(int(logits[letters].argmax()))
    out["hf_loop"] = time.perf_counter() - t
    out["agree_hf"] = sum(a == b for a, b in zip(preds, ours.predictions, strict=True)) / len(items)
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return out
    lm = HFLM(pretrained=name, device=args.device, batch_size=1, dtype="float32")
    reqs = [
        Instance(request_type="loglikelihood", doc={}, arguments=(mmlu_prompt(it), f" {x}"), idx=j)
        for it in items
        for j, x in enumerate("ABCD")
    ]
    t = time.perf_counter()
    lps = torch.tensor([lp for lp, _ in lm.loglikelihood(reqs, disable_tqdm=True)]).view(-1, 4)
    out["lm_eval"] = time.perf_counter() - t
    out["agree_lm_eval"] = float((lps.argmax(-1) == torch.tensor(ours.predictions)).float().mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="results/bench.json")
    ap.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="which comparisons to run (default: all)",
    )
    ap.add_argument("--mmlu-items", type=int, default=570, help="MMLU part: items (10 a subject)")
    ap.add_argument("--memory-probe", choices=["plain", "tl", "hf"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    name = resolve_name(args.model)
    if args.memory_probe:
        print(json.dumps(memory_probe(name, args.memory_probe, args.device)))
        return
    parts = set(args.parts)
    # first, while this process holds no model: fresh processes for import and CLI start-up
    start_sec, start_rows = startup_part(args.repeats) if "startup" in parts else ({}, [])
    mem_rows, probes = memory_rows(name, args.device) if "memory" in parts else ([], {})
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = sl.load_model(name, device=args.device, dtype=dtype)
    hf, tok = plain_hf(name, args.device, dtype)
    layers = sl.default_layers(model)
    g = torch.Generator().manual_seed(0)
    vec = sl.SteeringVector(
        {lyr: 0.5 * torch.randn(model.cfg.d_model, generator=g) for lyr in layers},
        model_name=sl.model_name(model),
    )
    new = 32
    kw = dict(max_new_tokens=new, stop_at_eos=False, batch_size=16, progress_bar=False)
    rows = list(start_rows)

    gen: dict[str, float] = {}
    if "generation" in parts:
        gen = compare(
            {
                "hf": lambda: hf_generate(hf, tok, PROMPTS, new),
                "fast": lambda: sl.generate(
                    model, PROMPTS, steering=vec, alpha=4.0, engine="hf", **kw
                ),
                "tl": lambda: sl.generate(
                    model, PROMPTS, steering=vec, alpha=4.0, engine="tl", **kw
                ),
            },
            args.repeats,
        )
        assert engines.fast_path_blocker(model) is None  # auto takes the fast path here
        rows.append(
            (
                "steered generation, fast path (default) vs HF unsteered",
                gen["hf"] / gen["fast"],
                1.0,
            )
        )
        rows.append(("steered generation, TL hooks vs HF unsteered", gen["hf"] / gen["tl"], None))

    comp: dict[str, dict[str, float]] = {}
    if "compiled" in parts:
        comp = compiled_part(model, hf, tok, vec, kw, args)
        for b in ("1", "16"):
            c = comp[b]
            rows.append(
                (f"batch {b}, α per row: compiled vs HF eager", c["hf"] / c["compiled"], None)
            )
            rows.append(
                (
                    f"batch {b}, α per row: compiled vs HF static + compile",
                    c["hf_static"] / c["compiled"],
                    1.0,
                )
            )
            rows.append(
                (
                    f"batch {b}, α per row: compiled vs eager fast path",
                    c["fast"] / c["compiled"],
                    None,
                )
            )

    sw: dict[str, float] = {}
    if "sweep" in parts:
        alphas = [0.0, 1.0, 2.0, 4.0, 6.0, 8.0]
        base = PROMPTS[:4]
        sweep = [p for p in base for _ in alphas]
        sweep_alpha = [a for _ in base for a in alphas]
        kw_sweep = dict(
            max_new_tokens=new, stop_at_eos=False, batch_size=len(sweep), progress_bar=False
        )
        sw = compare(
            {
                "one": lambda: sl.generate(
                    model, sweep, steering=vec, alpha=sweep_alpha, **kw_sweep
                ),
                "six": lambda: [
                    sl.generate(model, base, steering=vec, alpha=a, **kw) for a in alphas
                ],
                "hf_one": lambda: hf_generate(hf, tok, sweep, new),
                "hf_six": lambda: [hf_generate(hf, tok, base, new) for _ in alphas],
            },
            args.repeats,
        )
        ours, limit = sw["six"] / sw["one"], sw["hf_six"] / sw["hf_one"]
        rows.append(
            (
                f"6-point alpha sweep batched: speed-up {ours:.2f}x / HF's {limit:.2f}x",
                ours / limit,
                0.9,
            )
        )

    per: dict[str, float] = {}
    if "personalised" in parts:
        # the personalised sweep: 48 users x 3 alphas, each row its user's vector, as one per-row
        # job vs a loop over users, against plain transformers generating the same 144 rows in
        # batches of the same size (the batching limit)
        users = [f"user{i:03d}" for i in range(48)]
        user_vecs = {
            u: sl.SteeringVector(
                {lyr: 0.5 * torch.randn(model.cfg.d_model, generator=g) for lyr in layers},
                model_name=sl.model_name(model),
            )
            for u in users
        }
        p_alphas = [1.0, 2.0, 4.0]
        p_rows = [(PROMPTS[i % len(PROMPTS)], u, a) for i, u in enumerate(users) for a in p_alphas]
        p_prompts = [p for p, _, _ in p_rows]
        per = compare(
            {
                "hf": lambda: hf_generate(hf, tok, p_prompts, new, batch=16),
                "per_row": lambda: sl.generate(
                    model,
                    p_prompts,
                    steering=[user_vecs[u] for _, u, _ in p_rows],
                    alpha=[a for _, _, a in p_rows],
                    **kw,
                ),
                "loop": lambda: [
                    sl.generate(
                        model,
                        [PROMPTS[i % len(PROMPTS)]] * len(p_alphas),
                        steering=user_vecs[u],
                        alpha=p_alphas,
                        **kw,
                    )
                    for i, u in enumerate(users)
                ],
            },
            max(1, min(args.repeats, 3)),
        )
        rows.append(
            (
                "personalised sweep 48 users x 3 α, per-row job vs HF batched",
                per["hf"] / per["per_row"],
                0.9,
            )
        )
        rows.append(
            ("personalised sweep, loop over users vs HF batched", per["hf"] / per["loop"], None)
        )

    ca: dict[str, float] = {}
    if "cache" in parts:
        # distinct texts: steerlens caches identical inputs once, which would flatter the ratio
        texts = [f"{p} {q}" for p in PROMPTS for q in PROMPTS[:4]]

        def hf_hidden() -> None:
            enc = tok(texts, return_tensors="pt", padding=True).to(args.device)
            with torch.inference_mode():
                hf(**enc, output_hidden_states=True)

        ca = compare(
            {
                "hf": hf_hidden,
                "sl": lambda: sl.cache_activations(
                    model,
                    texts,
                    layers,
                    pool="mean",
                    chat=False,
                    batch_size=len(texts),
                    progress_bar=False,
                ),
            },
            args.repeats,
        )
        rows.append(
            ("cache_activations vs HF forward(output_hidden_states)", ca["hf"] / ca["sl"], 1.5)
        )
        # issue 16's configuration: layers 15-20 of 30, last token, 16 texts of ~84 tokens
        long = [(" ".join(PROMPTS) * 3)[: 400 + i] for i in range(16)]

        def hf_long() -> None:
            enc = tok(long, return_tensors="pt", padding=True).to(args.device)
            with torch.inference_mode():
                hf(**enc, output_hidden_states=True)

        mid = [lyr for lyr in range(15, 21) if lyr < model.cfg.n_layers] or layers
        ca16 = compare(
            {
                "hf": hf_long,
                "sl": lambda: sl.cache_activations(
                    model, long, mid, pool="last", chat=False, batch_size=16, progress_bar=False
                ),
            },
            args.repeats,
        )
        ca.update({f"{k} (16 x 84 tokens, layers 15-20, last)": v for k, v in ca16.items()})
        rows.append(
            (
                "cache_activations 16 x 84 tokens, layers 15-20, last token vs HF",
                ca16["hf"] / ca16["sl"],
                1.6,
            )
        )
    mm: dict[str, float] = {}
    if "mmlu" in parts:
        mm = mmlu_part(model, name, args)
        if "lm_eval" in mm:
            rows.append(
                (
                    "MMLU zero-shot vs lm-evaluation-harness loglikelihood",
                    mm["lm_eval"] / mm["sl"],
                    3.0,
                )
            )
        rows.append(
            ("MMLU zero-shot vs plain HF, one forward an item", mm["hf_loop"] / mm["sl"], None)
        )
    rows += mem_rows
    if "serve" in parts:
        del model, hf  # the serve part loads its own copies in another environment
        rows += serve_rows(args.model)

    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if args.device.startswith("cuda"):
        machine += f", {torch.cuda.get_device_name()} (bf16)"
    print(
        f"\nsteerlens benchmarks · {args.model} loaded by name ({name}) · {machine} · {date.today()}"
    )
    print(f"{'comparison':64s} {'ratio':>7s} {'target':>7s}")
    for label, ratio, target in rows:
        goal = ("<= " if "memory" in label else ">= ") + format(target, "g") if target else ""
        print(f"{label:64s} {ratio:7.2f} {goal:>7s}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "model": args.model,
                "loaded_as": name,
                "memory_mb": probes,
                "machine": machine,
                "date": str(date.today()),
                "seconds": {
                    "startup": start_sec,
                    "generation": gen,
                    "compiled": comp,
                    "sweep": sw,
                    "personalised_sweep": per,
                    "cache": ca,
                    "mmlu": mm,
                },
                "ratios": [{"comparison": n, "ratio": r, "target": t} for n, r, t in rows],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
