"""Scores of generations: toxicity MAE against the user's preferred response, perplexity."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from steerlens._progress import progress
from steerlens.chat import Prompt, pad, response_masks
from steerlens.models import HookedModel

__all__ = ["continuation_nll", "distinct_n", "perplexity", "toxicity_abs_error"]


def toxicity_abs_error(generated: Sequence[float], preferred: Sequence[float]) -> list[float]:
    """|tox(generated) - tox(preferred response)| per row."""
    if len(generated) != len(preferred):
        raise ValueError(f"{len(generated)} generated scores but {len(preferred)} preferred scores")
    return [abs(float(g) - float(p)) for g, p in zip(generated, preferred, strict=True)]


def continuation_nll(
    model: HookedModel,
    prompts: Sequence[Prompt],
    continuations: Sequence[str],
    *,
    chat: bool = True,
    batch_size: int = 16,
    progress_bar: bool = False,
) -> list[float]:
    """Mean negative log-likelihood per token of each continuation given its prompt.

    Runs under whatever hooks are active (call it outside ``steering`` for the unsteered
    model). An empty continuation gives NaN.
    """
    out = [math.nan] * len(prompts)
    keep = [i for i, c in enumerate(continuations) if c.strip()]
    if not keep:
        return out
    ids, masks = response_masks(
        model, [prompts[i] for i in keep], [continuations[i] for i in keep], chat=chat
    )
    order = sorted(range(len(keep)), key=lambda j: -int(ids[j].numel()))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    for batch in progress(
        batches, total=len(batches), description="perplexity", enabled=progress_bar
    ):
        enc = pad(model, [ids[j] for j in batch], side="right")
        with torch.inference_mode():
            logits = model(enc.input_ids, attention_mask=enc.attention_mask).float()
        logp = logits[:, :-1].log_softmax(-1)
        target = enc.input_ids[:, 1:]
        tok_lp = logp.gather(-1, target[..., None])[..., 0].cpu()
        for row, j in enumerate(batch):
            m = masks[j][1:]  # token t is predicted at position t - 1
            n = int(m.numel())
            out[keep[j]] = float(-tok_lp[row, :n][m].mean())
    return out


def distinct_n(texts: Sequence[str], n: int = 2) -> list[float]:
    """Share of distinct word n-grams in each text (1 = no repetition; NaN if too short).

    Perplexity under the unsteered model cannot see collapse into repetition (repeated text
    is easy to predict); a falling distinct-n can.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = []
    for text in texts:
        words = text.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        out.append(len(set(grams)) / len(grams) if grams else math.nan)
    return out


def perplexity(nll: Sequence[float]) -> list[float]:
    return [math.exp(x) if not math.isnan(x) else math.nan for x in nll]
