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

__all__ = ["context_vector", "generic_responses", "style_vector", "style_vectors"]


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
    layers = list(layers) if layers is not None else default_layers(model)
    ids_u, m_u, ids_g, m_g = _sides(model, prompts, user_responses, generic)
    rows = list(range(len(prompts)))
    if keep is not None:
        rows = _kept_rows(keep, m_u)
        for i, k in enumerate(keep):
            m_u[i] = torch.cat(
                [torch.zeros(len(m_u[i]) - int(k.numel()), dtype=torch.bool), k.bool()]
            )
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
    return _vector(model, acts[:n_rows] - acts[n_rows:], layers, keep is not None)


def style_vectors(
    model: HookedModel,
    prompts: Sequence[Prompt],
    user_responses: Sequence[str],
    generic: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    keep: Sequence[Bool[Tensor, " tok"]],
    batch_size: int = 16,
    progress_bar: bool = False,
) -> tuple[SteeringVector, SteeringVector]:
    """``style_vector`` without and with ``keep`` (the all-history and SteerX vectors), from
    one pass over each response: the user's response tokens are read once and pooled both
    ways. The same vectors as two calls, to float rounding."""
    layers = list(layers) if layers is not None else default_layers(model)
    ids_u, m_u, ids_g, m_g = _sides(model, prompts, user_responses, generic)
    rows = _kept_rows(keep, m_u)
    n = len(prompts)
    acts = cache_activations(
        model,
        ids_u + ids_g,
        layers,
        pool="none",
        masks=m_u + m_g,
        batch_size=batch_size,
        progress_bar=progress_bar,
    )
    assert isinstance(acts, list)
    user = torch.stack([a.mean(1) for a in acts[:n]])  # [n, layer, d_model]
    gen = torch.stack([a.mean(1) for a in acts[n:]])
    chosen = torch.stack([acts[i][:, keep[i].bool().to(acts[i].device)].mean(1) for i in rows])
    return (
        _vector(model, user - gen, layers, False),
        _vector(model, chosen - gen[rows], layers, True),
    )


def _sides(
    model: HookedModel,
    prompts: Sequence[Prompt],
    user_responses: Sequence[str],
    generic: Sequence[str],
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """Token rows and response masks of the user's and the generic responses."""
    n = len(prompts)
    if not (n == len(user_responses) == len(generic)):
        raise ValueError(
            f"{n} prompts, {len(user_responses)} user responses, {len(generic)} generic ones"
        )
    if n == 0:
        raise ValueError("StyleVector needs at least one prompt")
    ids_u, m_u = response_masks(model, prompts, list(user_responses))
    ids_g, m_g = response_masks(model, prompts, list(generic))
    return ids_u, m_u, ids_g, m_g


def _kept_rows(keep: Sequence[Tensor], m_u: Sequence[Tensor]) -> list[int]:
    """The responses keeping a token (each mask checked against its response's length)."""
    if len(keep) != len(m_u):
        raise ValueError(f"{len(keep)} keep masks for {len(m_u)} responses")
    for i, k in enumerate(keep):
        tail = int(m_u[i].sum())
        if int(k.numel()) != tail:
            raise ValueError(f"keep mask {i} has {k.numel()} tokens, the response {tail}")
    rows = [i for i in range(len(keep)) if bool(keep[i].any())]
    if not rows:
        raise ValueError("no response keeps any token")
    return rows


def _vector(model: HookedModel, diffs: Tensor, layers: list[int], selected: bool) -> SteeringVector:
    """The mean of per-prompt differences ``[n, layer, d_model]`` as a vector."""
    diff = diffs.mean(0)
    return SteeringVector(
        {layer: diff[j] for j, layer in enumerate(layers)},
        model_name=model_name(model),
        method="stylevector-selected" if selected else "stylevector",
        metadata={"n_prompts": int(diffs.shape[0])},
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
