"""Full TransformerLens hook names of the residual-stream points steerlens reads and steers.

The one place that spells them: every hook, cache and check builds names with these helpers.
"""

from __future__ import annotations

HOOK_POINTS = ("hook_resid_post", "hook_resid_pre", "hook_resid_mid")

__all__ = ["HOOK_POINTS", "hook_layer", "hook_name", "resid_post", "resid_pre"]


def hook_name(layer: int, hook: str = "hook_resid_post") -> str:
    """Full TransformerLens hook name of a residual-stream point: ``blocks.{l}.{hook}``."""
    if hook not in HOOK_POINTS:
        raise ValueError(f"hook must be one of {HOOK_POINTS}, got {hook!r}")
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise ValueError(f"layer must be a non-negative int, got {layer!r}")
    return f"blocks.{layer}.{hook}"


def resid_post(layer: int) -> str:
    """``blocks.{layer}.hook_resid_post``: the output of block ``layer``."""
    return hook_name(layer, "hook_resid_post")


def resid_pre(layer: int) -> str:
    """``blocks.{layer}.hook_resid_pre``: the input of block ``layer``."""
    return hook_name(layer, "hook_resid_pre")


def hook_layer(name: str) -> int | None:
    """The block of a ``blocks.{l}.{point}`` hook name, or None for any other name."""
    parts = str(name).split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None
