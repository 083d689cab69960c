"""StyleVector (Zhang et al., ACL 2025): a user's vector is the mean difference between the
activations on the user's own responses and on the model's generic responses to the same
prompts — the "all-history" mean-difference backbone.

``style_vector(model, prompts, user_responses, generic_responses, layers)`` pools each
response's tokens (mean over the response, read at ``hook_resid_post``) and averages the
per-prompt differences. ``keep`` restricts the user's side to chosen token positions (SteerX's
variant: only the preference-driven tokens of the user's responses are pooled).

``context_vector(model, prompts, responses, context, layers)`` is SteerX's other variant: the
same responses read with the user's description in context (as the system message) and
without it; the mean difference is what the description adds to the residual stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool
from torch import Tensor

from steerlens.core.models import HookedModel, default_layers, model_name
from steerlens.core.tokens import Prompt, response_masks
from steerlens.core.vectors import SteeringVector
from steerlens.run.cache import cache_activations
from steerlens.run.generation import generate

__all__ = ["context_vector", "generic_responses", "style_vector"]


def generic_responses(
    model: HookedModel,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress_bar: bool = True,
) -> list[str]:
    """The model's own unsteered greedy responses (the generic side of StyleVector)."""
    out = generate(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress_bar=progress_bar,
    )
    return list(out)  # type: ignore[arg-type]


def style_vector(
    model: HookedModel,
    prompts: Sequence[Prompt],
    user_responses: Sequence[str],
    generic: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    keep: Sequence[Bool[Tensor, " tok"]] | None = None,
    batch_size: int = 16,
    progress_bar: bool = False,
) -> SteeringVector:
    """Mean over prompts of pooled h(prompt + user's response) − pooled h(prompt + generic).

    Args:
        keep: per user response, a mask over its tokens (``tokenize(..., add_special_tokens=
            False)`` of the response): pool only those on the user's side. A response with
            no kept token is left out (its prompt's generic side too).
    """
    n = len(prompts)
    if not (n == len(user_responses) == len(generic)):
        raise ValueError(
            f"{n} prompts, {len(user_responses)} user responses, {len(generic)} generic ones"
        )
    if n == 0:
        raise ValueError("StyleVector needs at least one prompt")
    layers = list(layers) if layers is not None else default_layers(model)
    ids_u, m_u = response_masks(model, prompts, list(user_responses))
    ids_g, m_g = response_masks(model, prompts, list(generic))
    rows = list(range(n))
    if keep is not None:
        if len(keep) != n:
            raise ValueError(f"{len(keep)} keep masks for {n} responses")
        for i, k in enumerate(keep):
            tail = int(m_u[i].sum())
            if int(k.numel()) != tail:
                raise ValueError(f"keep mask {i} has {k.numel()} tokens, the response {tail}")
            m_u[i] = torch.cat([torch.zeros(len(m_u[i]) - tail, dtype=torch.bool), k.bool()])
        rows = [i for i in rows if bool(keep[i].any())]
        if not rows:
            raise ValueError("no response keeps any token")
    ids = [ids_u[i] for i in rows] + [ids_g[i] for i in rows]
    masks = [m_u[i] for i in rows] + [m_g[i] for i in rows]
    acts = cache_activations(
        model,
        ids,
        layers,
        pool="mean",
        masks=masks,
        batch_size=batch_size,
        progress_bar=progress_bar,
    )
    assert isinstance(acts, Tensor)
    n_rows = len(rows)
    diff = (acts[:n_rows] - acts[n_rows:]).mean(0)  # [layer, d_model]
    return SteeringVector(
        {layer: diff[j] for j, layer in enumerate(layers)},
        model_name=model_name(model),
        method="stylevector" if keep is None else "stylevector-selected",
        metadata={"n_prompts": n_rows},
    )


def context_vector(
    model: HookedModel,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    context: str,
    layers: Sequence[int] | None = None,
    *,
    batch_size: int = 16,
    progress_bar: bool = False,
) -> SteeringVector:
    """Mean over prompts of pooled h(response | ``context`` as the system message, prompt)
    − pooled h(response | prompt): the same response tokens on both sides, so only what the
    model read before them differs. Without a system message the chat template's default
    context applies (SmolLM2's names the assistant; Llama-3's has none)."""
    n = len(prompts)
    if n != len(responses):
        raise ValueError(f"{n} prompts but {len(responses)} responses")
    if n == 0:
        raise ValueError("the context variant needs at least one prompt")
    if not context.strip():
        raise ValueError("the context (a description) is empty")
    layers = list(layers) if layers is not None else default_layers(model)
    ids_c, m_c = response_masks(model, prompts, list(responses), system=context)
    ids_0, m_0 = response_masks(model, prompts, list(responses))
    acts = cache_activations(
        model,
        ids_c + ids_0,
        layers,
        pool="mean",
        masks=m_c + m_0,
        batch_size=batch_size,
        progress_bar=progress_bar,
    )
    assert isinstance(acts, Tensor)
    diff = (acts[:n] - acts[n:]).mean(0)  # [layer, d_model]
    return SteeringVector(
        {layer: diff[j] for j, layer in enumerate(layers)},
        model_name=model_name(model),
        method="stylevector-context",
        metadata={"n_prompts": n, "context": context},
    )
