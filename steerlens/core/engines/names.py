"""The engine names, written once: what ``engine=`` accepts across the toolkit."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["ENGINES", "PASS_ENGINES", "EngineName", "PassEngineName"]

EngineName = Literal["auto", "tl", "hf", "compiled"]
"""Generation's engines: ``"tl"`` (TransformerLens hook points), ``"hf"`` (the fast path),
``"compiled"`` (the fast path's model, decoding step compiled) and ``"auto"`` (the fastest
exact one)."""
PassEngineName = Literal["auto", "tl", "hf"]
"""The engines of one forward pass (scoring, caching, divergence, patching): the compiled
engine only decodes."""
ENGINES: tuple[str, ...] = get_args(EngineName)
PASS_ENGINES: tuple[str, ...] = get_args(PassEngineName)
