"""Population mean-difference (CAA) in one call: v_l = mean h_l(p + y+) - mean h_l(p + y-).

Activations are pooled over the response tokens of each (prompt, response) text, the
prompt formatted with the model's chat template exactly as ``generate`` formats it. This is
``population(pair_activations(...))``; build the table yourself to reuse it for the per-user
reducers (``steerlens.methods.personal``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from steerlens.core.models import HookedModel
from steerlens.core.vectors import SteeringVector
from steerlens.data.schema import PreferencePair
from steerlens.methods.personal import TextPair, pair_activations, population

__all__ = ["mean_difference"]


def mean_difference(
    model: HookedModel,
    pairs: Sequence[PreferencePair] | Sequence[TextPair],
    layers: Sequence[int] | None = None,
    *,
    hook: str = "hook_resid_post",
    pool: Literal["mean", "last"] | None = None,
    chat: bool | None = None,
    batch_size: int = 16,
    progress_bar: bool = True,
) -> SteeringVector:
    """The CAA vector of ``pairs`` (chosen minus rejected) at ``layers``."""
    if not pairs:
        raise ValueError("mean_difference needs at least one preference pair")
    pa = pair_activations(
        model,
        pairs,
        layers,
        hook=hook,
        pool=pool,
        chat=chat,
        batch_size=batch_size,
        progress_bar=progress_bar,
    )
    return replace(population(pa), method="caa")
