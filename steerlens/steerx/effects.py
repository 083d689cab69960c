"""Token-level causal effects of a user's history on their own text (SteerX, reconstructed).

For each token ``y_t`` of a target text (a user's chosen response to prompt ``x``)::

    CE_t = P(y_t | history, x, y_<t) - P(y_t | counterfactual, x, y_<t)

with the history as treatment (the user's other conversations, as chat messages placed
before ``x``) and the counterfactual as control: no history (the NextQuill estimator, the
default), another user's history of the same length (a placebo that cancels the generic
effect of having *any* history), or the user's own history shuffled or truncated. The
log-ratio ``log P_with - log P_without`` is returned beside it.

The SteerX body text was not available; this follows the same group's NextQuill estimator
(tokens with CE_t > 0.05 are "preference-driven") and is a reconstruction.

Finer attributions: ``item_effects`` (leave-one-out over the history's conversations, one
batched call) and ``history_token_effects`` (ablate each single history token: remove it, or
replace its embedding with the mean embedding). Everything runs through the one batching
loop (``steerlens.run.scoring.ids_logprobs``), batched and exact.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens.core.engines import PassEngineName
from steerlens.core.hooks import current_rows
from steerlens.core.models import HookedModel
from steerlens.core.tokens import content_masks, encode_prompts
from steerlens.run.scoring import ids_logprobs

__all__ = [
    "HistoryTokenEffects",
    "ItemEffects",
    "TokenEffects",
    "batch_history_effects",
    "history_effects",
    "history_items",
    "history_token_effects",
    "item_effects",
    "shuffled_history",
    "target_tokens",
]

Message = dict[str, str]
Measure = Literal["effect", "log_ratio"]


@dataclass
class TokenEffects:
    """Per token of a target text: P with the history, P with the counterfactual, and CE."""

    text: str
    ids: Int[Tensor, " tok"]
    tokens: list[str]
    offsets: list[tuple[int, int]]  # character spans in ``text``
    logp_with: Float[Tensor, " tok"]
    logp_without: Float[Tensor, " tok"]
    method: str = "history-ablation"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def p_with(self) -> Tensor:
        return self.logp_with.exp()

    @property
    def p_without(self) -> Tensor:
        return self.logp_without.exp()

    @property
    def effect(self) -> Tensor:
        """CE_t = P_with - P_without (NextQuill)."""
        return self.p_with - self.p_without

    @property
    def log_ratio(self) -> Tensor:
        return self.logp_with - self.logp_without

    def __len__(self) -> int:
        return int(self.ids.numel())

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "token": self.tokens,
                "start": [a for a, _ in self.offsets],
                "end": [b for _, b in self.offsets],
                "p_with": self.p_with.numpy(),
                "p_without": self.p_without.numpy(),
                "effect": self.effect.numpy(),
                "log_ratio": self.log_ratio.numpy(),
            }
        )

    def select(
        self, threshold: float = 0.05, top_k: int | None = None, measure: Measure = "effect"
    ) -> list[int]:
        """Indices of the preference-driven tokens: ``measure > threshold`` (NextQuill: CE_t
        > 0.05), the ``top_k`` largest of them if given, in text order."""
        if measure not in ("effect", "log_ratio"):
            raise ValueError(f"measure must be 'effect' or 'log_ratio', got {measure!r}")
        values = (self.effect if measure == "effect" else self.log_ratio).numpy()
        keep = [i for i in np.argsort(-values, kind="stable") if values[i] > threshold]
        if top_k is not None:
            keep = keep[:top_k]
        return sorted(int(i) for i in keep)

    def spans(self, indices: Sequence[int]) -> list[tuple[int, int]]:
        """Character spans of the given tokens, adjacent ones merged."""
        out: list[tuple[int, int]] = []
        for i in sorted(indices):
            a, b = self.offsets[i]
            if out and a <= out[-1][1] + 1:
                out[-1] = (out[-1][0], max(b, out[-1][1]))
            else:
                out.append((a, b))
        return out


def _tok(model: HookedModel) -> Any:
    tok = model.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer")
    return tok


def target_tokens(model: HookedModel, text: str) -> tuple[Tensor, list[str], list[tuple[int, int]]]:
    """Token ids, token strings and character offsets of a target text (no special tokens)."""
    if not text:
        raise ValueError("the target text is empty")
    tok = _tok(model)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    tokens = [text[a:b] for a, b in offsets]
    return ids, tokens, offsets


def _context(model: HookedModel, history: Sequence[Message], prompt: str) -> Tensor:
    for m in history:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"history must be chat messages with role and content, got {m!r}")
    return encode_prompts(model, [[*history, {"role": "user", "content": prompt}]])[0]


def history_items(history: Sequence[Message]) -> list[list[Message]]:
    """The history's conversations: a new item starts at every user message."""
    items: list[list[Message]] = []
    for m in history:
        if m["role"] == "user" or not items:
            items.append([])
        items[-1].append(m)
    return items


def shuffled_history(history: Sequence[Message], seed: int = 0) -> list[Message]:
    """The same conversations in another order (a counterfactual that keeps the content)."""
    items = history_items(history)
    random.Random(seed).shuffle(items)
    return [m for it in items for m in it]


@dataclass(frozen=True)
class _Query:
    prompt: str
    response: str
    history: Sequence[Message]
    counterfactual: Sequence[Message]


def batch_history_effects(
    model: HookedModel,
    queries: Sequence[tuple[str, str, Sequence[Message], Sequence[Message] | None]],
    *,
    batch_size: int = 8,
    progress_bar: bool = False,
    engine: PassEngineName = "auto",
) -> list[TokenEffects]:
    """``history_effects`` for many ``(prompt, response, history, counterfactual)`` at once
    (counterfactual ``None`` = no history): one batched scoring call for all of them, each
    distinct (context, response) scored once (two counterfactuals of one target share its
    with-history pass)."""
    qs = [_Query(p, r, h, c or []) for p, r, h, c in queries]
    pairs: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    heads: list[Tensor] = []
    tails: list[Tensor] = []
    where: list[int] = []  # per query and side (with, without): its scored pair
    meta = []
    for q in qs:
        ids, tokens, offsets = target_tokens(model, q.response)
        for head in (
            _context(model, q.history, q.prompt),
            _context(model, q.counterfactual, q.prompt),
        ):
            key = (tuple(head.tolist()), tuple(ids.tolist()))
            if key not in pairs:
                pairs[key] = len(heads)
                heads.append(head)
                tails.append(ids)
            where.append(pairs[key])
        meta.append((ids, tokens, offsets))
    scored = ids_logprobs(
        model, heads, tails, batch_size=batch_size, progress_bar=progress_bar, engine=engine
    )
    lps = [scored[i] for i in where]
    out = []
    for k, (q, (ids, tokens, offsets)) in enumerate(zip(qs, meta, strict=True)):
        out.append(
            TokenEffects(
                q.response,
                ids,
                tokens,
                offsets,
                lps[2 * k],
                lps[2 * k + 1],
                metadata={
                    "prompt": q.prompt,
                    "history_items": len(history_items(q.history)),
                    "counterfactual_items": len(history_items(q.counterfactual)),
                },
            )
        )
    return out


def history_effects(
    model: HookedModel,
    *,
    prompt: str,
    response: str,
    history: Sequence[Message],
    counterfactual: Sequence[Message] | None = None,
    batch_size: int = 8,
    engine: PassEngineName = "auto",
) -> TokenEffects:
    """Causal effect of ``history`` on every token of ``response`` to ``prompt``.

    Args:
        history: chat messages (the user's other conversations) placed before ``prompt``.
        counterfactual: the control history; ``None`` (default) = no history. Another user's
            history of the same length is a placebo; ``shuffled_history(history)`` or
            ``history[:k]`` keep (part of) the user's own content.
    """
    return batch_history_effects(
        model, [(prompt, response, history, counterfactual)], batch_size=batch_size, engine=engine
    )[0]


@dataclass
class ItemEffects:
    """Leave-one-out over the history's items: ``logp[i, t]`` is log p(y_t) without item i."""

    target: TokenEffects  # full history vs no history
    items: list[list[Message]]
    logp_without_item: Float[Tensor, "item tok"]

    @property
    def effect(self) -> Tensor:
        """P(y_t | full history) - P(y_t | history without item i): [item, tok]."""
        return self.target.p_with[None, :] - self.logp_without_item.exp()

    @property
    def log_ratio(self) -> Tensor:
        return self.target.logp_with[None, :] - self.logp_without_item


def item_effects(
    model: HookedModel,
    *,
    prompt: str,
    response: str,
    history: Sequence[Message],
    batch_size: int = 8,
    engine: PassEngineName = "auto",
    target: TokenEffects | None = None,
) -> ItemEffects:
    """Which past conversation drives each target token: the full history, no history and the
    history without each single item, in one batched call. ``target``: this response's
    full-history vs no-history effects, when the caller has them (``history_effects``): only
    the leave-one-out contexts run."""
    items = history_items(history)
    if not items:
        raise ValueError("item ablation needs a non-empty history")
    ids, tokens, offsets = target_tokens(model, response)
    _check_target(target, ids, prompt)
    contexts = [] if target is not None else [list(history), []]
    contexts += [[m for j, it in enumerate(items) if j != i for m in it] for i in range(len(items))]
    heads = [_context(model, c, prompt) for c in contexts]
    lps = ids_logprobs(model, heads, [ids] * len(heads), batch_size=batch_size, engine=engine)
    if target is None:
        target = TokenEffects(response, ids, tokens, offsets, lps[0], lps[1], "history-ablation")
        lps = lps[2:]
    return ItemEffects(target, items, torch.stack(lps))


def _check_target(target: TokenEffects | None, ids: Tensor, prompt: str) -> None:
    """A caller's ``target`` effects must be of the response (and, where they record it, the
    prompt) being ablated."""
    if target is None:
        return
    if not torch.equal(target.ids.cpu(), ids.cpu()):
        raise ValueError("target holds the effects of another response (its tokens differ)")
    if target.metadata.get("prompt", prompt) != prompt:
        raise ValueError("target holds the effects of this response to another prompt")


def _history_span(with_ids: Tensor, without_ids: Tensor) -> tuple[int, int]:
    """[a, b): the positions of ``with_ids`` that the history added (common prefix/suffix)."""
    n, m = int(with_ids.numel()), int(without_ids.numel())
    a = 0
    while a < min(n, m) and with_ids[a] == without_ids[a]:
        a += 1
    s = 0
    while s < min(n, m) - a and with_ids[n - 1 - s] == without_ids[m - 1 - s]:
        s += 1
    return a, n - s


@dataclass
class HistoryTokenEffects:
    """Effect of ablating each single history token on each target token."""

    target: TokenEffects
    positions: list[int]  # positions (in the with-history context) that were ablated
    history_tokens: list[str]
    logp_ablated: Float[Tensor, "hist tok"]
    mode: str

    @property
    def effect(self) -> Tensor:
        """P(y_t | history) - P(y_t | history with token j ablated): [hist, tok]."""
        return self.target.p_with[None, :] - self.logp_ablated.exp()

    @property
    def log_ratio(self) -> Tensor:
        return self.target.logp_with[None, :] - self.logp_ablated

    def total(self) -> Tensor:
        """Per history token: the summed change of log p over the target (its importance)."""
        return self.log_ratio.sum(-1)


def mean_embedding(model: HookedModel) -> Tensor:
    """The mean of the token-embedding matrix (the 'mean' ablation value)."""
    w = model.W_E if hasattr(model, "W_E") else model.embed.W_E
    return w.detach().float().mean(0)


def history_token_effects(
    model: HookedModel,
    *,
    prompt: str,
    response: str,
    history: Sequence[Message],
    mode: Literal["remove", "mean"] = "remove",
    max_tokens: int | None = None,
    batch_size: int = 8,
    target: TokenEffects | None = None,
) -> HistoryTokenEffects:
    """Ablate each content token of the history, one at a time, and score the target.

    Modes: ``"remove"`` deletes the token from the context (positions after it shift by
    one); ``"mean"`` keeps every position and replaces the token's embedding with the mean
    embedding (``hook_embed``, on the TransformerLens path). Special tokens and the chat
    template's own tokens (role names, separators) are not ablated; ``max_tokens`` keeps the
    first N history tokens (for long histories). ``target``: this response's full-history vs
    no-history effects, when the caller has them (``history_effects``): not run again.
    """
    if mode not in ("remove", "mean"):
        raise ValueError(f"mode must be 'remove' or 'mean', got {mode!r}")
    ids, tokens, offsets = target_tokens(model, response)
    with_ctx = _context(model, history, prompt)
    without_ctx = _context(model, [], prompt)
    a, b = _history_span(with_ctx, without_ctx)
    # the messages' own text only: no special tokens, no role names or separators
    content = content_masks(model, [[*history, {"role": "user", "content": prompt}]], [with_ctx])[0]
    positions = [p for p in range(a, b) if bool(content[p])]
    if max_tokens is not None:
        positions = positions[:max_tokens]
    if not positions:
        raise ValueError("the history adds no content tokens to ablate")
    _check_target(target, ids, prompt)
    if target is None:
        base = ids_logprobs(model, [with_ctx, without_ctx], [ids, ids], batch_size=batch_size)
        target = TokenEffects(response, ids, tokens, offsets, base[0], base[1], "history-ablation")
    if mode == "remove":
        heads = [torch.cat([with_ctx[:p], with_ctx[p + 1 :]]) for p in positions]
        lps = ids_logprobs(model, heads, [ids] * len(heads), batch_size=batch_size)
    else:
        mean = mean_embedding(model)
        where = torch.tensor(positions)

        def replace(embed: Tensor, *, hook: Any) -> Tensor:
            ctx = current_rows()
            if ctx is None or embed.shape[1] == 1:
                return embed
            embed = embed.clone()
            for r, j in enumerate(ctx.rows.tolist()):
                embed[r, int(where[j])] = mean.to(embed.dtype)
            return embed

        with model.hooks(fwd_hooks=[("hook_embed", replace)]):
            lps = ids_logprobs(
                model,
                [with_ctx] * len(positions),
                [ids] * len(positions),
                batch_size=batch_size,
                engine="tl",
            )
    names = [_tok(model).decode([int(with_ctx[p])]) for p in positions]
    return HistoryTokenEffects(target, positions, names, torch.stack(lps), mode)
