"""What every engine offers: a forward pass under hooks, the residual stream at chosen hook
points, and KV-cached decoding steps.

An engine is one way of running a hooked model: through its TransformerLens hook points
(``tl``), on the plain HF model that shares its weights (``hf``, the fast path), or that
model's compiled static-cache step (``compiled``). ``resolve_engine`` picks one; callers run
it and never ask which it is. Every engine runs the same ``(hook_name, fn)`` pairs (built by
``steering_hooks``), so a gate, a per-row α and a per-row vector mean the same on each.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import ClassVar

from jaxtyping import Float, Int
from torch import Tensor

from steerlens.core.decoding import Steps
from steerlens.core.hooks import HookPair
from steerlens.core.models import HookedModel

__all__ = ["Engine"]


class Engine(ABC):
    """One way of running ``model`` (see the module docstring)."""

    name: ClassVar[str]
    bound: bool = True
    """Whether the logits are the model's own (False for a HookedTransformer's HF copy, whose
    unembedding is not centred: its logits differ from the model's by a constant per row)."""

    def __init__(self, model: HookedModel) -> None:
        self.model = model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model.cfg.model_name!r})"

    @abstractmethod
    def hooks(self, pairs: Sequence[HookPair]) -> AbstractContextManager[None]:
        """A context in which ``pairs`` (and the open ``sl.steering()`` blocks) act on this
        engine's passes; every one is removed on exit, after an error too."""

    @abstractmethod
    def forward(
        self, input_ids: Int[Tensor, "batch pos"], attention_mask: Tensor | None = None
    ) -> Float[Tensor, "batch pos vocab"]:
        """The logits of every position."""

    def logits_at(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Tensor,
        positions: Sequence[Sequence[int]],
    ) -> list[Float[Tensor, "n vocab"]]:
        """Per row, the logits at its ``positions`` (batch columns)."""
        logits = self.forward(input_ids, attention_mask)
        return [logits[row, list(pos)] for row, pos in enumerate(positions)]

    def can_start_at(self, layer: int) -> bool:
        """Whether ``forward_from(..., layer)`` runs on this engine (off unless an engine
        says so)."""
        return False

    def forward_from(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        attention_mask: Tensor,
        layer: int,
    ) -> Float[Tensor, "batch pos vocab"]:
        """The logits of a pass that starts at block ``layer`` from ``resid`` (its input,
        ``blocks.{layer}.hook_resid_pre`` of the same right-padded tokens), the blocks below
        skipped: rows whose lower blocks are the same as another pass's (one text, steered
        from ``layer`` on) do not compute them again. Only where ``can_start_at(layer)``."""
        raise NotImplementedError(f"{self.name} runs whole passes only")

    def logits_from(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        attention_mask: Tensor,
        layer: int,
        positions: Sequence[Sequence[int]],
    ) -> list[Float[Tensor, "n vocab"]]:
        """``forward_from``'s logits at each row's ``positions`` only (an engine may skip the
        unembedding elsewhere). Only where ``can_start_at(layer)``."""
        logits = self.forward_from(resid, attention_mask, layer)
        return [logits[row, list(pos)] for row, pos in enumerate(positions)]

    def can_share_prefix(self) -> bool:
        """Whether ``logits_after`` and ``capture_after`` run on this engine (off unless an
        engine says so)."""
        return False

    def logits_after(
        self,
        prefix_ids: Int[Tensor, "prefix pos"],
        prefix_mask: Tensor,
        owner: Sequence[int],
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Tensor,
        positions: Sequence[Sequence[int]],
    ) -> list[Float[Tensor, "n vocab"]]:
        """Per row, the logits at its ``positions`` (columns of ``input_ids``) of the pass over
        ``prefix_ids[owner[row]]`` (its real tokens; right-padded) followed by ``input_ids[row]``
        (right-padded): each distinct prefix (a chat template and a user's history, a prompt
        scored under several continuations) runs once for all the rows that continue it.
        Without hooks only (a hook would see the prefix rows and the continuation rows as two
        batches); only where ``can_share_prefix()``."""
        raise NotImplementedError(f"{self.name} runs whole passes only")

    def can_resume(self, layer: int = 0) -> bool:
        """Whether ``logits_resumed`` runs on this engine from ``layer`` (off unless an
        engine says so)."""
        return False

    def logits_resumed(
        self,
        ids: Int[Tensor, " pos"],
        cuts: Sequence[int],
        input_ids: Int[Tensor, "batch width"],
        attention_mask: Tensor,
        positions: Sequence[Sequence[int]],
        layer: int = 0,
        resid: Float[Tensor, "batch width d_model"] | None = None,
    ) -> list[Float[Tensor, "n vocab"]]:
        """Per row, the logits at its ``positions`` (columns of ``input_ids``) of the pass over
        ``ids[:cuts[row]]`` followed by ``input_ids[row]`` (right-padded), where ``ids`` runs
        once without hooks and each row, under the open hooks, runs only its own columns (a
        run patched at one position is the unpatched run before it), from decoder layer
        ``layer`` on with ``resid`` entering it. Only where ``can_resume(layer)``."""
        raise NotImplementedError(f"{self.name} runs whole passes only")

    def capture_after(
        self,
        prefix_ids: Int[Tensor, "prefix pos"],
        prefix_mask: Tensor,
        owner: Sequence[int],
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Tensor,
        layers: Sequence[int],
        hook: str,
    ) -> list[Float[Tensor, "batch pos d_model"]]:
        """``capture`` of the rows' own tokens (columns of ``input_ids``) in the pass over
        ``prefix_ids[owner[row]]`` followed by ``input_ids[row]``, as ``logits_after`` runs
        it: each distinct prefix (a prompt before several responses) runs once. Without hooks
        only; only where ``can_share_prefix()``."""
        raise NotImplementedError(f"{self.name} runs whole passes only")

    @abstractmethod
    def capture(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Tensor,
        layers: Sequence[int],
        hook: str,
    ) -> list[Float[Tensor, "batch pos d_model"]]:
        """``blocks.{l}.{hook}`` for each of ``layers``, as the hooks left it; the pass stops
        after the last layer needed."""

    @abstractmethod
    def steps(
        self, input_ids: Int[Tensor, "batch pos"], attention_mask: Tensor, max_new_tokens: int
    ) -> Steps:
        """A KV-cached decoding step function for this (left-padded) batch."""

    @abstractmethod
    def hooked(self) -> bool:
        """Whether any hook acts on this engine's passes (beyond a call's own)."""
