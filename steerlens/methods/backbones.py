"""The response-contrast backbones SteerX builds its vectors on, one fit function each.

Each contrasts a user's responses with the model's generic responses to the same prompts
and returns two vectors: the *all-history* one (every response token) and the *SteerX* one
(restricted to, or weighted by, the preference-driven tokens ``keep``; for ``mean-context``
the responses read with the user's description in context). Where SteerX found no evidence
(``fallback``) its vector is a copy of the all-history one. The registry
(``steerlens.methods.registry.BACKBONES``) names them; ``steerlens.steerx`` runs them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from steerlens.core.models import HookedModel, model_name
from steerlens.core.tokens import response_masks
from steerlens.core.vectors import SteeringVector
from steerlens.methods.bipo import BiPOConfig, bipo
from steerlens.methods.sae import sae_vector
from steerlens.methods.stylevector import context_vector, style_vector, style_vectors
from steerlens.run.cache import cache_activations

__all__ = ["BackboneInputs", "fit_bipo", "fit_mean", "fit_mean_context", "fit_sae"]


@dataclass
class BackboneInputs:
    """What a backbone is built from: the targets with a generic side (``prompts``,
    ``responses``, ``generic``, per response the preference-driven token mask ``keep``),
    every target (``all_prompts``, ``all_responses``: the context backbone needs no generic
    side), the user's ``description``, the steering ``layers`` and each backbone's options."""

    model: HookedModel
    prompts: list[str]
    responses: list[str]
    generic: list[str]
    keep: list[Tensor]
    layers: list[int]
    all_prompts: list[str]
    all_responses: list[str]
    description: str = ""
    batch_size: int = 8
    bipo: dict[str, Any] = field(default_factory=dict)
    sae: Any = None
    sae_top_k: int = 20
    sae_max_density: float = 0.01
    progress_bar: bool = False


Fit = tuple[SteeringVector, SteeringVector]


def fit_mean(x: BackboneInputs, fallback: bool) -> Fit:
    """StyleVector: mean of the user's minus the generic responses' activations; SteerX pools
    the user's side over the preference-driven tokens only."""
    if fallback:
        base = style_vector(x.model, x.prompts, x.responses, x.generic, x.layers)
        return base, copy.deepcopy(base)
    return style_vectors(x.model, x.prompts, x.responses, x.generic, x.layers, keep=x.keep)


def fit_mean_context(x: BackboneInputs, fallback: bool) -> Fit:
    """The all-history StyleVector; SteerX: the user's responses read with the description in
    context minus without it (``context_vector``)."""
    base = style_vector(x.model, x.prompts, x.responses, x.generic, x.layers)
    if fallback:
        return base, copy.deepcopy(base)
    vec = context_vector(x.model, x.all_prompts, x.all_responses, x.description, x.layers)
    return base, vec


@dataclass(frozen=True)
class _Pair:
    prompt: str
    chosen: str
    rejected: str

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


def fit_bipo(x: BackboneInputs, fallback: bool) -> Fit:
    """BiPO on (prompt, user's response, generic response); SteerX weights the chosen
    log-probabilities by the preference-driven tokens."""
    cfg = BiPOConfig(**{"layer": x.layers[0], **x.bipo})
    pairs = [_Pair(p, r, g) for p, r, g in zip(x.prompts, x.responses, x.generic, strict=True)]
    base = bipo(x.model, pairs, cfg, progress_bar=x.progress_bar)
    if fallback:
        return base, copy.deepcopy(base)
    weights = [k.float() for k in x.keep]
    return base, bipo(x.model, pairs, cfg, chosen_weights=weights, progress_bar=x.progress_bar)


def fit_sae(x: BackboneInputs, fallback: bool) -> Fit:
    """SAE features (``x.sae`` for the layer): positive = the preference-driven tokens'
    activations (all response tokens for the all-history vector), negative = the generic
    responses' tokens."""
    if x.sae is None:
        raise ValueError("the sae backbone needs an SAE (sae=...) for the steering layer")
    layer = x.layers[0]
    neg = _token_acts(x, x.generic, None, layer)
    pos_all = _token_acts(x, x.responses, None, layer)
    kw: dict[str, Any] = dict(
        layer=layer,
        model_name=model_name(x.model),
        top_k=x.sae_top_k,
        max_density=x.sae_max_density,
        density_acts=torch.cat([pos_all, neg]),
    )
    base, _ = sae_vector(x.sae, pos_all, neg, **kw)
    if fallback:
        return base, copy.deepcopy(base)
    vec, _ = sae_vector(x.sae, _token_acts(x, x.responses, x.keep, layer), neg, **kw)
    return base, vec


def _token_acts(
    x: BackboneInputs, texts: list[str], keep: list[Tensor] | None, layer: int
) -> Tensor:
    """Activations at ``layer`` of the responses' tokens (the kept ones), stacked."""
    ids, masks = response_masks(x.model, x.prompts, texts)
    if keep is not None:
        masks = [
            torch.cat([torch.zeros(len(m) - len(k), dtype=torch.bool), k.bool()])
            for m, k in zip(masks, keep, strict=True)
        ]
    rows = [i for i, m in enumerate(masks) if bool(m.any())]
    acts = cache_activations(
        x.model,
        [ids[i] for i in rows],
        [layer],
        pool="none",
        masks=[masks[i] for i in rows],
        batch_size=x.batch_size,
        progress_bar=False,
    )
    assert isinstance(acts, list)
    return torch.cat([a[0] for a in acts])
