"""The condition pane and the user card.

``condition_table`` pools a user's prompts as the condition pools them at run time and
projects them on its direction; ``threshold_view`` says which fire at a dragged threshold and
which flip against the fitted one (``sl.plots.condition_projections`` draws it). ``user_card`` gathers a
user's vectors (norm, cosine to the population vector, a cached calibrated α), the simulated
set's true weights and the SteerX token effects of the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from steerlens.core.conditions import Condition
from steerlens.core.models import HookedModel
from steerlens.core.vectors import SteeringVector
from steerlens.run.cache import cache_activations

from .sources import Sources

__all__ = ["condition_table", "threshold_view", "token_drivers", "user_card"]


def condition_table(
    model: HookedModel, condition: Condition, prompts: Sequence[str], *, chat: bool | None = None
) -> pd.DataFrame:
    """Per prompt, its projection on the condition's direction (pooled as at run time)."""
    if not prompts:
        return pd.DataFrame(columns=["prompt", "projection"])
    acts = cache_activations(
        model,
        list(prompts),
        [condition.layer],
        hook=condition.hook,
        pool=condition.pool,
        chat=chat,
        progress_bar=False,
    )
    assert isinstance(acts, torch.Tensor)
    proj = condition.project(acts[:, 0].to(condition.direction))
    return pd.DataFrame({"prompt": list(prompts), "projection": proj.double().cpu().numpy()})


def threshold_view(table: pd.DataFrame, fitted: float, threshold: float) -> pd.DataFrame:
    """``table`` with ``fires`` at ``threshold``, ``fires_fitted`` at the fitted threshold and
    ``flipped`` where they differ."""
    out = table.copy()
    out["fires"] = out["projection"] > threshold
    out["fires_fitted"] = out["projection"] > fitted
    out["flipped"] = out["fires"] != out["fires_fitted"]
    return out


def _cosine(a: SteeringVector, b: SteeringVector) -> float | None:
    shared = sorted(set(a.layers) & set(b.layers))
    if not shared:
        return None
    cos = [
        float(
            torch.nn.functional.cosine_similarity(
                a.directions[layer].float().cpu(), b.directions[layer].float().cpu(), dim=0
            )
        )
        for layer in shared
    ]
    return round(sum(cos) / len(cos), 4)


def user_card(src: Sources, user: str) -> dict[str, Any]:
    """A user's vectors (key, method, layers, mean norm, cosine to the population vector,
    a cached calibrated α), their true weights (simulated sets) and their SteerX card."""
    population = src.load_vector("population") if "population" in src.vectors else None
    vectors = []
    for key in src.vector_keys(user):
        if key.rsplit("/", 1)[-1] != user:
            continue
        vec = src.load_vector(key)
        norms = vec.norms()
        cached = vec.metadata.get("kl_alpha") or {}
        calibrated = [
            {"budget": k, "alpha": v.get("alpha")} for k, v in cached.items() if isinstance(v, dict)
        ]
        vectors.append(
            {
                "key": key,
                "method": vec.method,
                "layers": f"{vec.layers[0]}-{vec.layers[-1]}",
                "norm": round(sum(norms.values()) / len(norms), 3),
                "cosine_to_population": None if population is None else _cosine(vec, population),
                "calibrated_alpha": calibrated[0]["alpha"] if calibrated else None,
            }
        )
    card = src.steerx_card(user)
    return {
        "user": user,
        "vectors": vectors,
        "true_weights": src.true_weights(user),
        "steerx": card,
        "item_effects": src.steerx_detail(user),
        "n_prompts": len(src.user_prompts(user)),
    }


def token_drivers(detail: dict[str, Any], index: int, top: int = 3) -> list[dict[str, Any]]:
    """The history conversations that drive token ``index`` of the detail target most: each
    item's leave-one-out effect on it (``history_effects``' item effects), largest first."""
    tokens, effects = detail["tokens"], detail["item_effect"]
    if not 0 <= index < len(tokens):
        raise ValueError(f"token {index}: the target has {len(tokens)} tokens")
    rows = [
        {"item": item, "effect": float(row[index])}
        for item, row in zip(detail["items"], effects, strict=True)
    ]
    return sorted(rows, key=lambda r: -r["effect"])[:top]
