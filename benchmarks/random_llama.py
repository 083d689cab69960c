"""Write a random-init, Llama-3.1-8B-shaped model as an ordinary HF folder (no download).

For measuring the GPU path (bf16 memory and speed at the real layer sizes) where the real
weights cannot be fetched: d_model 4096, d_mlp 14336, 32 heads with 8 KV heads, RoPE
θ 500000, and the embedded SmolLM2 tokenizer (vocabulary 49152 instead of 128256, so the
model has 7.38B parameters instead of 8.03B). The weights are random: its text is noise, and
only speed and memory measured on it mean anything.

Usage::

    python benchmarks/random_llama.py /tmp/llama8b-random [--layers 32] [--tokenizer DIR]
    python benchmarks/run_all.py --model /tmp/llama8b-random --device cuda
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096, help="d_model (a smaller one: dry runs)")
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--tokenizer", help="a tokenizer folder (default: the embedded model's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if args.tokenizer is None:
        from steerlens.core._embedded import _cache_dir, load_embedded_hf

        load_embedded_hf()  # writes the embedded model's folder once
        args.tokenizer = str(_cache_dir())
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        tie_word_embeddings=False,
    )
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(cfg).to(getattr(torch, args.dtype))
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    print(
        f"{args.out}: {n / 1e9:.3f}B parameters, {args.layers} layers, {args.dtype}, "
        f"written in {time.perf_counter() - start:.0f} s"
    )
    return args.out


if __name__ == "__main__":
    main()
