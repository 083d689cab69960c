"""What a sweep measures on each generation (toxicity error, perplexity, degeneration,
ground-truth utility)."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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

MEASURE_VERSION = 2  # 2: utility z-scores clipped to ±Z_BOUND
"""The version of ``standard_measures``' code: bump it whenever a change there (or in the
functions it calls) changes the numbers of a row, so sweeps recompute their parts."""


def _digest(value: Any) -> str:
    """A stable digest of a JSON-like value (keys sorted; other objects by their ``repr``)."""
    try:
        text = json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):  # e.g. keys of mixed types
        text = repr(value)
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:16]


def _qualname(obj: Any) -> str:
    """``module.qualname`` of a function or class, else of the object's class."""
    target = obj if hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}.{target.__qualname__}"


def _scorer_name(scorer: ToxicityScorer | None) -> str:
    if scorer is None:  # what ``get_scorer()`` gives: its default name
        return f"default:{inspect.signature(get_scorer).parameters['name'].default}"
    return f"{_qualname(scorer)}:{getattr(scorer, 'name', '')}"


# the scoring functions whose numbers a standard row holds (renaming or moving one changes
# the fingerprint; a change inside one needs a MEASURE_VERSION bump)
_FUNCTIONS = (
    toxicity_abs_error,
    continuation_logprobs,
    perplexity,
    distinct_n,
    degenerate,
    ground_truth_utility,
)


@dataclass(eq=False)
class StandardMeasures:
    """The standard measures as a callable (``Measure``) with a ``fingerprint``: see
    ``standard_measures``."""

    ground_truth: Mapping[str, Any] | None = None
    scorer: ToxicityScorer | None = None
    batch_size: int = 16
    chat: bool | None = None

    @property
    def fingerprint(self) -> str:
        """What defines the rows' numbers: the code's version and the names of its scoring
        functions, the toxicity scorer, ``chat`` and a digest of the ground truth.
        ``batch_size`` is left out: it only batches the scoring passes (the numbers are the
        same up to float rounding), so a sweep resumed with another one reuses its parts."""
        return json.dumps(
            {
                "measure": _qualname(standard_measures),
                "version": MEASURE_VERSION,
                "functions": [_qualname(f) for f in _FUNCTIONS],
                "scorer": _scorer_name(self.scorer),
                "chat": self.chat,
                "ground_truth": None if self.ground_truth is None else _digest(self.ground_truth),
            },
            sort_keys=True,
        )

    def __call__(
        self, model: HookedModel, rows: list[SweepPrompt], gen: Generation
    ) -> dict[str, list[Any]]:
        sc = self.scorer or get_scorer()
        texts = gen.texts
        out: dict[str, list[Any]] = {"toxicity": sc(texts)}
        if all(r.preferred is not None for r in rows):
            pref = sc([r.preferred or "" for r in rows])
            out["preferred_toxicity"] = pref
            out["abs_error"] = toxicity_abs_error(out["toxicity"], pref)
        lps = continuation_logprobs(  # in the context they were generated in
            model,
            [r.prompt for r in rows],
            gen.tokens,
            batch_size=self.batch_size,
            chat=self.chat,
        )
        nll = [float(-lp.mean()) if lp.numel() else math.nan for lp in lps]
        out["nll"] = nll
        out["perplexity"] = perplexity(nll)
        out["n_tokens"] = [int(t.numel()) for t in gen.tokens]
        out["distinct_2"] = distinct_n(texts, 2)
        out["empty"] = [not t.strip() for t in texts]
        out["degenerate"] = degenerate(texts)
        gt = self.ground_truth
        if gt is not None and "users" in gt:
            out["utility"] = ground_truth_utility(texts, [r.user_id for r in rows], gt)
        return out


def standard_measures(
    ground_truth: Mapping[str, Any] | None = None,
    scorer: ToxicityScorer | None = None,
    *,
    batch_size: int = 16,
    chat: bool | None = None,
) -> StandardMeasures:
    """Toxicity and its absolute error against the preferred response, perplexity of the
    generated ids in their context under the unsteered model, distinct-2, empty/degenerate
    flags, and (simulated sets) the user's ground-truth utility.

    The returned measure carries a ``fingerprint`` (``StandardMeasures.fingerprint``) that
    sweeps put in their parts' names: another ground truth, scorer, ``chat`` or code version
    (``MEASURE_VERSION``) recomputes the rows instead of reading stale ones."""
    return StandardMeasures(ground_truth, scorer, batch_size, chat)


def measure_fingerprint(measure: Measure) -> str:
    """What a sweep's part names record of its measure.

    A measure with a ``fingerprint`` attribute (a string, or a method returning one) gives it;
    ``standard_measures`` does. Any other callable is named by its ``module.qualname`` (a
    ``functools.partial`` by its function's name and its arguments' ``repr``). That name is
    all that is seen of a plain function: a change to the code inside it (or to what it reads
    from outside) is NOT detected, and its old parts are reused. Give such a measure a
    ``fingerprint`` (e.g. ``fn.fingerprint = "mine v2"``) and change it with its code."""
    fp = getattr(measure, "fingerprint", None)
    if callable(fp):
        fp = fp()
    if fp is not None:
        return f"{_qualname(measure)}:{fp}"
    if isinstance(measure, functools.partial):
        inner = measure_fingerprint(measure.func)
        return f"partial({inner}, {measure.args!r}, {sorted(measure.keywords.items())!r})"
    return _qualname(measure)
