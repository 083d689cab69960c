"""The TransformerLens path: the model's own hook points, every hook on them firing."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from torch import Tensor

from steerlens.core.decoding import Steps, hf_steps, tl_steps
from steerlens.core.hook_names import hook_name
from steerlens.core.hooks import HookFn, HookPair
from steerlens.core.models import is_bridge

from .base import Engine

__all__ = ["TLEngine"]


class TLEngine(Engine):
    """Runs the model itself: a researcher's own TransformerLens or PyTorch hooks fire."""

    name = "tl"

    def hooks(self, pairs: Sequence[HookPair]) -> AbstractContextManager[None]:
        return self.model.hooks(fwd_hooks=list(pairs))  # type: ignore[arg-type, no-any-return]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(input_ids, attention_mask=attention_mask)  # type: ignore[no-any-return]

    def capture(
        self, input_ids: Tensor, attention_mask: Tensor, layers: Sequence[int], hook: str
    ) -> list[Tensor]:
        names = [hook_name(layer, hook) for layer in layers]
        captured: dict[str, Tensor] = {}

        def grab(name: str) -> HookFn:
            def hook_fn(resid: Tensor, *, hook: Any) -> None:
                captured[name] = resid.detach()

            return hook_fn

        stop = max(layers) + 1
        self.model.run_with_hooks(
            input_ids,
            fwd_hooks=[(n, grab(n)) for n in dict.fromkeys(names)],  # type: ignore[misc]
            attention_mask=attention_mask,
            stop_at_layer=stop if stop < self.model.cfg.n_layers else None,
            return_type=None,
        )
        return [captured[n] for n in names]

    def steps(self, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int) -> Steps:
        """A bridge decodes through its HF model, whose wrapped modules fire the hooks (one
        position a step); a HookedTransformer through its own KV cache."""
        if is_bridge(self.model):
            return hf_steps(self.model.original_model, input_ids, attention_mask)
        return tl_steps(self.model, input_ids, attention_mask)

    def hooked(self) -> bool:
        return any(hp.fwd_hooks for hp in self.model.hook_dict.values())
