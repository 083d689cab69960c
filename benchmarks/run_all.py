"""Speed of steerlens against plain ``transformers`` on the same machine, in one run.

Prints ratios (>1 means steerlens is faster) and writes ``results/bench.json``:

1. steered batched greedy generation (fast path and TransformerLens-hook path) vs
   ``transformers`` ``generate`` unsteered (batch 16, 32 new tokens);
2. a 6-point alpha sweep in one batched pass vs 6 separate passes, against the speed-up
   plain ``transformers`` gets from the same batching (the machine's limit);
3. ``cache_activations`` vs a ``transformers`` forward with ``output_hidden_states=True``.

Usage: ``python benchmarks/run_all.py [--model NAME] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

import steerlens as sl

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


def plain_hf(name: str):
    if name == "smollm2-135m-instruct":
        from steerlens._embedded import load_embedded_hf

        return load_embedded_hf(attn_implementation="sdpa")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(name).eval(), AutoTokenizer.from_pretrained(name)


def hf_generate(hf, tok, prompts: list[str], new_tokens: int) -> None:
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    enc = tok(
        texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    )
    with torch.inference_mode():
        hf.generate(
            **enc,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id or tok.eos_token_id,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="results/bench.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = sl.load_model(args.model)
    hf, tok = plain_hf(args.model)
    layers = sl.default_layers(model)
    g = torch.Generator().manual_seed(0)
    vec = sl.SteeringVector(
        {lyr: 0.5 * torch.randn(model.cfg.d_model, generator=g) for lyr in layers},
        model_name=sl.model_name(model),
    )
    new = 32
    kw = dict(max_new_tokens=new, stop_at_eos=False, batch_size=16, progress_bar=False)
    rows = []

    gen = compare(
        {
            "hf": lambda: hf_generate(hf, tok, PROMPTS, new),
            "fast": lambda: sl.generate(model, PROMPTS, steering=vec, alpha=4.0, engine="hf", **kw),
            "tl": lambda: sl.generate(model, PROMPTS, steering=vec, alpha=4.0, engine="tl", **kw),
        },
        args.repeats,
    )
    rows.append(
        ("steered generation, fast path (default) vs HF unsteered", gen["hf"] / gen["fast"], 1.0)
    )
    rows.append(("steered generation, TL hooks vs HF unsteered", gen["hf"] / gen["tl"], None))

    alphas = [0.0, 1.0, 2.0, 4.0, 6.0, 8.0]
    base = PROMPTS[:4]
    sweep = [p for p in base for _ in alphas]
    sweep_alpha = [a for _ in base for a in alphas]
    kw_sweep = dict(
        max_new_tokens=new, stop_at_eos=False, batch_size=len(sweep), progress_bar=False
    )
    sw = compare(
        {
            "one": lambda: sl.generate(model, sweep, steering=vec, alpha=sweep_alpha, **kw_sweep),
            "six": lambda: [sl.generate(model, base, steering=vec, alpha=a, **kw) for a in alphas],
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

    texts = [p + " " + p for p in PROMPTS] * 4

    def hf_hidden() -> None:
        enc = tok(texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            hf(**enc, output_hidden_states=True)

    ca = compare(
        {
            "hf": hf_hidden,
            "sl": lambda: sl.cache_activations(
                model, texts, layers, pool="mean", batch_size=len(texts), progress_bar=False
            ),
        },
        args.repeats,
    )
    rows.append(("cache_activations vs HF forward(output_hidden_states)", ca["hf"] / ca["sl"], 1.5))

    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"\nsteerlens benchmarks · {args.model} · {machine} · {date.today()}")
    print(f"{'comparison':64s} {'ratio':>7s} {'target':>7s}")
    for name, ratio, target in rows:
        print(f"{name:64s} {ratio:7.2f} {('>= ' + format(target, 'g')) if target else '':>7s}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "model": args.model,
                "machine": machine,
                "date": str(date.today()),
                "seconds": {"generation": gen, "sweep": sw, "cache": ca},
                "ratios": [{"comparison": n, "ratio": r, "target": t} for n, r, t in rows],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
