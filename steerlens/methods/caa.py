"""Population mean-difference (CAA): v_l = mean h_l(p + y+) - mean h_l(p + y-).

Activations are pooled over the response tokens of each (prompt, response) text, the
prompt formatted with the model's chat template exactly as ``generate`` formats it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from steerlens.cache import cache_activations
from steerlens.chat import Prompt, response_masks
from steerlens.data.schema import PreferencePair
from steerlens.models import HookedModel, default_layers, model_name
from steerlens.vectors import SteeringVector

__all__ = ["mean_difference"]


def mean_difference(
    model: HookedModel,
    pairs: Sequence[PreferencePair],
    layers: Sequence[int] | None = None,
    *,
    hook: str = "hook_resid_post",
    pool: str = "mean",
    chat: bool | None = None,
    batch_size: int = 16,
    progress_bar: bool = True,
) -> SteeringVector:
    """The CAA vector of ``pairs`` (chosen minus rejected) at ``layers``."""
    if not pairs:
        raise ValueError("mean_difference needs at least one preference pair")
    layer_list = list(default_layers(model) if layers is None else layers)
    prompts: list[Prompt] = [p.messages() if p.history else p.prompt for p in pairs]
    ids_pos, masks_pos = response_masks(model, prompts, [p.chosen for p in pairs], chat=chat)
    ids_neg, masks_neg = response_masks(model, prompts, [p.rejected for p in pairs], chat=chat)
    acts = cache_activations(
        model,
        ids_pos + ids_neg,
        layer_list,
        hook=hook,
        pool=pool,  # type: ignore[arg-type]
        masks=masks_pos + masks_neg,
        batch_size=batch_size,
        progress_bar=progress_bar,
    )
    assert isinstance(acts, Tensor)
    n = len(pairs)
    diff = acts[:n].mean(0) - acts[n:].mean(0)
    return SteeringVector.from_tensor(
        diff,
        layer_list,
        model_name=model_name(model),
        hook=hook,
        method="caa",
        metadata={"n_pairs": n, "pool": pool, "users": sorted({p.user_id for p in pairs})[:50]},
    )
