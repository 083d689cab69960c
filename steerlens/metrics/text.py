"""Scores of generations: toxicity MAE against the user's preferred response, perplexity."""

from __future__ import annotations

import math
from collections.abc import Sequence

from steerlens.core.models import HookedModel
from steerlens.core.tokens import Prompt
from steerlens.run.scoring import continuation_logprobs

__all__ = [
    "continuation_nll",
    "corpus_distinct_n",
    "degenerate",
    "distinct_n",
    "perplexity",
    "toxicity_abs_error",
]


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
    chat: bool | None = None,
    batch_size: int = 16,
    progress_bar: bool = False,
) -> list[float]:
    """Mean negative log-likelihood per token of each continuation given its prompt.

    Runs under whatever hooks are active (call it outside ``steering`` for the unsteered
    model). An empty or whitespace-only continuation gives NaN.
    """
    texts = [c if c.strip() else "" for c in continuations]
    lps = continuation_logprobs(
        model, prompts, texts, chat=chat, batch_size=batch_size, progress_bar=progress_bar
    )
    return [float(-lp.mean()) if lp.numel() else math.nan for lp in lps]


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


def corpus_distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct word n-grams over all texts / all n-grams (NaN if none): low when the model
    says the same thing to every prompt, which per-text distinct-n cannot see."""
    grams = [
        tuple(words[i : i + n])
        for t in texts
        for words in [t.split()]
        for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else math.nan


def degenerate(texts: Sequence[str], *, min_distinct_2: float = 0.5) -> list[bool]:
    """Per text: empty (nothing but whitespace) or collapsed into repetition (per-text
    distinct-2 below ``min_distinct_2``)."""
    d2 = distinct_n(texts, 2)
    return [
        not t.strip() or (not math.isnan(d) and d < min_distinct_2)
        for t, d in zip(texts, d2, strict=True)
    ]


def perplexity(nll: Sequence[float]) -> list[float]:
    return [math.exp(x) if not math.isnan(x) else math.nan for x in nll]
