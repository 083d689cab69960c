"""lm-evaluation-harness steering files (its ``steered`` model's ``steer_path=...pt``).

The file is a ``torch.save``-d dict ``{hookpoint: {"action": "add", "steering_vector":
Tensor[d_model], "steering_coefficient": float, "bias": None, "head_index": None}}``;
lm-evaluation-harness adds ``coefficient * vector`` to the output of the module named
``hookpoint`` inside ``model.base_model`` at every position. For decoder-only HF models the
output of ``layers.{l}`` is steerlens' ``blocks.{l}.hook_resid_post``; ``blocks.{l}.hook_resid_pre``
is the output of ``layers.{l-1}`` (``embed_tokens`` for ``l = 0``).

Reading never unpickles arbitrary objects: ``torch.load(weights_only=True)``, then every
entry is checked to be tensors, numbers, strings or None of the expected shape.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["hookpoint", "read_steer_file", "write_steer_file"]

_LAYER = re.compile(r"^layers\.(\d+)$")


def hookpoint(layer: int, hook: str) -> str:
    """lm-evaluation-harness's module name for steerlens' ``blocks.{layer}.{hook}``."""
    if hook == "hook_resid_post":
        return f"layers.{layer}"
    if hook == "hook_resid_pre":
        return f"layers.{layer - 1}" if layer > 0 else "embed_tokens"
    raise ValueError(
        f"lm-evaluation-harness steers module outputs: {hook} is not one (use "
        "hook_resid_post or hook_resid_pre)"
    )


def write_steer_file(
    path: str | Path, directions: dict[int, Tensor], hook: str, alpha: float
) -> Path:
    """Write ``{hookpoint: {...}}`` for each layer's direction with coefficient ``alpha``."""
    out = Path(path)
    if out.suffix not in (".pt", ".pth"):
        raise ValueError(f"lm-evaluation-harness reads .pt or .pth steering files, not {out.name}")
    config = {
        hookpoint(layer, hook): {
            "action": "add",
            "steering_vector": vec.detach().float().cpu().contiguous(),
            "steering_coefficient": float(alpha),
            "bias": None,
            "head_index": None,
        }
        for layer, vec in directions.items()
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(config, out)
    return out


def read_steer_file(path: str | Path) -> dict[int, Tensor]:
    """``{layer: coefficient * vector}`` at ``hook_resid_post`` from an ``add`` steering file."""
    src = Path(path)
    try:
        config = torch.load(src, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as e:
        raise ValueError(
            f"{src}: not a steering file of tensors and numbers (refused to unpickle: {e})"
        ) from None
    if not isinstance(config, dict) or not config:
        raise ValueError(f"{src}: expected a non-empty dict of hookpoints")
    out: dict[int, Tensor] = {}
    for name, entry in config.items():
        layer = _layer_of(src, name)
        vec, coef = _entry(src, name, entry)
        if layer in out:
            raise ValueError(f"{src}: two entries steer the output of block {layer}")
        out[layer] = vec.float() * coef
    return dict(sorted(out.items()))


def _layer_of(src: Path, name: Any) -> int:
    m = _LAYER.match(str(name))
    if not isinstance(name, str) or m is None:
        raise ValueError(
            f"{src}: hookpoint {name!r} is not a decoder layer output ('layers.N'); steerlens "
            "imports residual-stream steering only"
        )
    return int(m.group(1))


def _entry(src: Path, name: str, entry: Any) -> tuple[Tensor, float]:
    if not isinstance(entry, dict):
        raise ValueError(f"{src}: {name}: expected a dict, got {type(entry).__name__}")
    action = entry.get("action", "add")
    if action != "add":
        raise ValueError(
            f"{src}: {name}: only the 'add' action is a steering vector, not {action!r}"
        )
    vec = entry.get("steering_vector")
    if not isinstance(vec, Tensor) or vec.ndim != 1:
        raise ValueError(f"{src}: {name}: steering_vector must be a 1-D tensor")
    coef = entry.get("steering_coefficient", 1.0)
    if isinstance(coef, Tensor) and coef.numel() == 1:
        coef = float(coef)
    if not isinstance(coef, int | float) or isinstance(coef, bool):
        raise ValueError(f"{src}: {name}: steering_coefficient must be a number")
    if entry.get("bias") is not None or entry.get("head_index") is not None:
        raise ValueError(f"{src}: {name}: a bias or head_index is not a residual steering vector")
    return vec, float(coef)
