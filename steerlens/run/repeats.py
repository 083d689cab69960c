"""Identical rows run once: each row's first copy, and the results spread back to every row."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from steerlens.core.engines import Engine
from steerlens.core.engines.hf import foreign_hooks
from steerlens.core.hooks import active_steering
from steerlens.core.models import HookedModel

__all__ = ["first_copies", "merges_rows", "spread"]


def merges_rows(model: HookedModel, eng: Engine) -> bool:
    """Whether identical rows may run once: no hook of any kind (a steering block, a
    TransformerLens hook, a plain PyTorch hook such as a recorder) would see the rows."""
    return not active_steering(model) and not eng.hooked() and foreign_hooks(model) is None


def first_copies(*columns: Sequence[Tensor] | None) -> list[int]:
    """Per row, the first row whose tensors are the same in every column (a ``None`` column
    is left out): e.g. token ids and masks, or a prompt's and its continuation's ids."""
    used = [c for c in columns if c is not None]
    seen: dict[tuple[tuple[bytes, ...], ...], int] = {}
    rows = len(used[0]) if used else 0
    return [
        seen.setdefault(
            tuple((tuple(c[i].shape), c[i].cpu().numpy().tobytes()) for c in used),  # type: ignore[misc]
            i,
        )
        for i in range(rows)
    ]


def spread(owner: Sequence[int], compute: Callable[[list[int]], Sequence[Tensor]]) -> list[Tensor]:
    """``compute`` on the distinct rows (``owner``: ``first_copies``), then each row its first
    copy's result: the first copy itself, a later one a clone (rows never alias)."""
    unique = sorted(set(owner))
    got = compute(unique)
    at = {i: k for k, i in enumerate(unique)}
    return [got[at[o]] if o == i else got[at[o]].clone() for i, o in enumerate(owner)]
