"""Binding a plain ``transformers`` model to a bridge's own tensors, and the hook points such a
model reaches: shared by the eager fast path (``hf``) and the compiled engine
(``compiled``), so neither imports the other's internals."""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["FAST_HOOKS", "bind_twin", "decoder_layers", "hook_point"]

FAST_HOOKS = ("hook_resid_post", "hook_resid_pre")


def bind_twin(hf: Any) -> Any:
    """A plain copy of ``hf``'s module tree whose parameters and buffers are ``hf``'s own."""
    config = copy.deepcopy(hf.config)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        twin = type(hf)(config)
    strip = "._original_component"
    params = {n.replace(strip, ""): p for n, p in hf.named_parameters(remove_duplicate=False)}
    buffers = {n.replace(strip, ""): b for n, b in hf.named_buffers(remove_duplicate=False)}
    for name, _ in list(twin.named_parameters(remove_duplicate=False)):
        if name not in params:
            raise ValueError(f"cannot bind the fast path: the bridge has no parameter {name}")
        _set(twin, name, params[name])
    for name, _ in list(twin.named_buffers(remove_duplicate=False)):
        if name not in buffers:
            raise ValueError(f"cannot bind the fast path: the bridge has no buffer {name}")
        _set(twin, name, buffers[name])
    if "lm_head.bias" in params and twin.lm_head.bias is None:  # centred unembedding's bias
        twin.lm_head.bias = params["lm_head.bias"]
    return twin.eval()


def _set(root: Any, dotted: str, value: Any) -> None:
    *path, leaf = dotted.split(".")
    mod = root
    for part in path:
        mod = getattr(mod, part)
    if isinstance(value, torch.nn.Parameter):
        mod._parameters[leaf] = value
    else:
        mod._buffers[leaf] = value


def decoder_layers(twin: Any) -> Any:
    """The decoder layers of an HF causal LM (``model.layers``), where the hooks go."""
    layers = getattr(getattr(twin, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(twin).__name__}: no model.layers to hook (decoder-only HF models)")
    return layers


def hook_point(name: str) -> tuple[int, str]:
    """``blocks.L.hook_resid_post`` / ``hook_resid_pre`` as (L, point); other names refused."""
    parts = str(name).split(".")
    if len(parts) != 3 or parts[0] != "blocks" or parts[2] not in FAST_HOOKS:
        raise ValueError(f"the fast path reaches blocks.L.{{{', '.join(FAST_HOOKS)}}}, not {name}")
    return int(parts[1]), parts[2]
