"""SteerX's token selection on the pair-based backbone (the dislike-weighted vector).

The dislike-weighted vector of a user is Σ gapᵢ (h(chosenᵢ) − h(rejectedᵢ)) / Σ gapᵢ over the
user's preference pairs, each response's activations averaged over all its tokens. The
selected variant averages the chosen response over the tokens SteerX's estimator selects in
it (the tokens whose probability the user's history raises by more than the threshold) and
keeps the rejected response over all its tokens, so the only difference between the two
vectors is which chosen tokens are pooled; ``pair_vectors`` builds both from the same pairs,
the comparison that tells whether token selection helps the method that already works.

A pair whose chosen response has no selected token is pooled over all its tokens (counted
in the vector's metadata as ``fallback_pairs``). Reconstruction: SteerX's body text was not
available; the selection follows NextQuill's estimator (``steerlens.steerx.effects``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from steerlens.core.models import HookedModel, model_name
from steerlens.core.tokens import encode_prompts, response_masks
from steerlens.core.vectors import SteeringVector
from steerlens.data.schema import PreferencePair
from steerlens.run.cache import cache_activations
from steerlens.steerx.effects import Measure, TokenEffects

__all__ = ["pair_vectors"]


def pair_vectors(
    model: HookedModel,
    pairs: Sequence[PreferencePair],
    effects: Mapping[tuple[str, str], TokenEffects],
    layers: Sequence[int],
    *,
    threshold: float = 0.05,
    measure: Measure = "effect",
    hook: str = "hook_resid_post",
    batch_size: int = 16,
    progress_bar: bool = False,
) -> dict[Literal["selected", "all"], SteeringVector]:
    """One user's dislike-weighted vector pooled over SteerX-selected chosen tokens
    (``"selected"``) and over all tokens (``"all"``), from the same pairs.

    Args:
        pairs: the user's training pairs (one user).
        effects: ``(prompt, chosen) -> TokenEffects`` of the user's history on that chosen
            response; pairs without an entry are left out of both vectors.
    """
    users = {p.user_id for p in pairs}
    if len(users) != 1:
        raise ValueError(f"pair_vectors takes one user's pairs, got users {sorted(users)}")
    used = [p for p in pairs if (p.prompt, p.chosen) in effects]
    if not used:
        raise ValueError("none of the pairs' chosen responses has token effects")
    gaps = torch.tensor([float(p.score_gap) for p in used])
    if (gaps < 0).any() or float(gaps.sum()) == 0:
        raise ValueError("score gaps must be >= 0 and not all zero")
    prompts = [p.messages() if p.history else p.prompt for p in used]
    heads = encode_prompts(model, prompts)
    chosen_ids, chosen_all, chosen_sel = [], [], []
    fallback = 0
    for head, p in zip(heads, used, strict=True):
        e = effects[(p.prompt, p.chosen)]
        sel = torch.zeros(len(e), dtype=torch.bool)
        sel[e.select(threshold, measure=measure)] = True
        if not sel.any():
            sel[:] = True
            fallback += 1
        none = torch.zeros_like(head, dtype=torch.bool)
        chosen_ids.append(torch.cat([head, e.ids]))
        chosen_all.append(torch.cat([none, torch.ones(len(e), dtype=torch.bool)]))
        chosen_sel.append(torch.cat([none, sel]))
    rej_ids, rej_masks = response_masks(model, prompts, [p.rejected for p in used])
    n = len(used)
    acts = cache_activations(
        model,
        chosen_ids + chosen_ids + rej_ids,
        list(layers),
        hook=hook,
        pool="mean",
        masks=chosen_sel + chosen_all + rej_masks,
        batch_size=batch_size,
        progress_bar=progress_bar,
    )
    assert isinstance(acts, torch.Tensor)
    h_sel, h_all, h_rej = acts[:n], acts[n : 2 * n], acts[2 * n :]
    w = (gaps / gaps.sum()).view(-1, 1, 1)
    meta = {
        "users": sorted(users),
        "n_pairs": n,
        "threshold": threshold,
        "measure": measure,
        "reconstruction": "SteerX selection (NextQuill estimator) on dislike-weighted pairs",
    }
    out: dict[Literal["selected", "all"], SteeringVector] = {}
    for name, chosen in (("selected", h_sel), ("all", h_all)):
        out[name] = SteeringVector.from_tensor(  # type: ignore[index]
            (w * (chosen - h_rej)).sum(0),
            list(layers),
            model_name=model_name(model),
            hook=hook,
            method=f"steerx_pairs_{name}",
            metadata={
                **meta,
                "tokens": name,
                "fallback_pairs": fallback if name == "selected" else 0,
            },
        )
    return out
