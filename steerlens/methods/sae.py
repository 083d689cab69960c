"""SAE-feature steering (the FGAA recipe): encode positive and negative activations with a
sparse autoencoder, take the mean feature difference, drop dense features (firing on more
than ``max_density`` of tokens) and features that fire on BOS/template tokens, keep the
``top_k`` largest, and decode them with ``W_dec`` into one residual-stream direction.

Works with any SAE object that has ``encode(x) -> features`` and ``W_dec [d_sae, d_model]``:
sae-lens SAEs (``SAE.from_pretrained``, e.g. Llama Scope on Llama-3.1-8B, or one trained on
the embedded model) and hand-made ones alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.core.vectors import SteeringVector

__all__ = ["SAEFeatures", "SAELike", "sae_vector"]


class SAELike(Protocol):
    W_dec: Tensor

    def encode(self, x: Tensor) -> Tensor: ...


@dataclass
class SAEFeatures:
    """The kept features, their mean differences and why the others were dropped."""

    indices: list[int]
    weights: list[float]
    dense: list[int]
    template: list[int]


def sae_vector(
    sae: SAELike | Any,
    positive: Float[Tensor, "n d_model"],
    negative: Float[Tensor, "m d_model"],
    *,
    layer: int,
    model_name: str | None = None,
    top_k: int = 20,
    max_density: float = 0.01,
    density_acts: Float[Tensor, "t d_model"] | None = None,
    template_acts: Float[Tensor, "s d_model"] | None = None,
    hook: str = "hook_resid_post",
) -> tuple[SteeringVector, SAEFeatures]:
    """A steering vector from SAE features that separate ``positive`` from ``negative``.

    Args:
        positive / negative: token activations at ``layer`` (e.g. the preference-driven
            tokens of a user's responses vs the model's generic responses).
        density_acts: tokens to measure each feature's firing rate on (default: positive and
            negative together); features firing on more than ``max_density`` are dropped.
        template_acts: BOS / chat-template token activations; features that fire on any of
            them are dropped.
    """
    if positive.ndim != 2 or negative.ndim != 2:
        raise ValueError("positive and negative must be [tokens, d_model]")
    if not len(positive) or not len(negative):
        raise ValueError("positive and negative need at least one token each")
    w_dec = sae.W_dec.detach().float()
    dev, dt = w_dec.device, w_dec.dtype
    with torch.no_grad():
        enc = lambda x: sae.encode(x.to(dev, dt)).float()  # noqa: E731
        diff = enc(positive).mean(0) - enc(negative).mean(0)
        dens_src = density_acts if density_acts is not None else torch.cat([positive, negative])
        density = (enc(dens_src) > 0).float().mean(0)
        dense = torch.nonzero(density > max_density).flatten().tolist()
        template: list[int] = []
        if template_acts is not None and len(template_acts):
            template = torch.nonzero((enc(template_acts) > 0).any(0)).flatten().tolist()
    allowed = torch.ones_like(diff, dtype=torch.bool)
    allowed[dense] = False
    allowed[template] = False
    score = torch.where(allowed, diff, torch.full_like(diff, -torch.inf))
    k = min(top_k, int((score > 0).sum()))
    if k == 0:
        raise ValueError("no allowed feature is more active on the positive side")
    top = torch.topk(score, k).indices
    weights = diff[top]
    direction = (weights[:, None] * w_dec[top]).sum(0).cpu()
    feats = SAEFeatures(top.tolist(), weights.tolist(), dense, template)
    vec = SteeringVector(
        {layer: direction},
        model_name=model_name,
        hook=hook,
        method="sae",
        metadata={"features": feats.indices, "top_k": top_k, "max_density": max_density},
    )
    return vec, feats
