"""What a sweep measures on each generation (toxicity error, perplexity, degeneration,
ground-truth utility)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from steerlens.core.models import HookedModel
from steerlens.experiments.sweep.grid import SweepPrompt
from steerlens.metrics.preference import ground_truth_utility
from steerlens.metrics.text import (
    degenerate,
    distinct_n,
    perplexity,
    toxicity_abs_error,
)
from steerlens.metrics.toxicity import ToxicityScorer, get_scorer
from steerlens.run.generation import Generation
from steerlens.run.scoring import continuation_logprobs

Measure = Callable[[HookedModel, list["SweepPrompt"], Generation], dict[str, list[Any]]]


def standard_measures(
    ground_truth: Mapping[str, Any] | None = None,
    scorer: ToxicityScorer | None = None,
    *,
    batch_size: int = 16,
    chat: bool | None = None,
) -> Measure:
    """Toxicity and its absolute error against the preferred response, perplexity of the
    generated ids in their context under the unsteered model, distinct-2, empty/degenerate
    flags, and (simulated sets) the user's ground-truth utility."""

    def measure(
        model: HookedModel, rows: list[SweepPrompt], gen: Generation
    ) -> dict[str, list[Any]]:
        sc = scorer or get_scorer()
        texts = gen.texts
        out: dict[str, list[Any]] = {"toxicity": sc(texts)}
        if all(r.preferred is not None for r in rows):
            pref = sc([r.preferred or "" for r in rows])
            out["preferred_toxicity"] = pref
            out["abs_error"] = toxicity_abs_error(out["toxicity"], pref)
        lps = continuation_logprobs(  # in the context they were generated in
            model, [r.prompt for r in rows], gen.tokens, batch_size=batch_size, chat=chat
        )
        nll = [float(-lp.mean()) if lp.numel() else math.nan for lp in lps]
        out["nll"] = nll
        out["perplexity"] = perplexity(nll)
        out["n_tokens"] = [int(t.numel()) for t in gen.tokens]
        out["distinct_2"] = distinct_n(texts, 2)
        out["empty"] = [not t.strip() for t in texts]
        out["degenerate"] = degenerate(texts)
        if ground_truth is not None and "users" in ground_truth:
            out["utility"] = ground_truth_utility(texts, [r.user_id for r in rows], ground_truth)
        return out

    return measure
