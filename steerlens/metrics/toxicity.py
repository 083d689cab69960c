"""Toxicity scorers behind one interface: ``scorer(texts) -> list[float]`` in [0, 1].

``alt-profanity-check`` ships its model and works offline (default). Detoxify is used when
installed with its weights (``get_scorer("detoxify")``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["DetoxifyScorer", "ProfanityCheckScorer", "ToxicityScorer", "get_scorer"]


class ToxicityScorer(Protocol):
    name: str

    def __call__(self, texts: Sequence[str]) -> list[float]: ...


class ProfanityCheckScorer:
    """Probability of offensive language from ``alt-profanity-check`` (a linear SVM on words)."""

    name = "profanity-check"

    def __init__(self) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn version notes on the pickled model
            from profanity_check import predict_prob

        self._predict = predict_prob

    def __call__(self, texts: Sequence[str]) -> list[float]:
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not one string")
        if not texts:
            return []
        return [float(p) for p in self._predict(list(texts))]


class DetoxifyScorer:
    """Detoxify's ``toxicity`` head (needs the package and its downloaded weights)."""

    name = "detoxify"

    def __init__(self, variant: str = "original") -> None:
        from detoxify import Detoxify

        self._model = Detoxify(variant)

    def __call__(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return [float(x) for x in self._model.predict(list(texts))["toxicity"]]


_CACHE: dict[str, ToxicityScorer] = {}


def get_scorer(name: str = "profanity-check") -> ToxicityScorer:
    """A (cached) scorer by name: ``"profanity-check"`` or ``"detoxify"``."""
    if name not in _CACHE:
        if name == "profanity-check":
            _CACHE[name] = ProfanityCheckScorer()
        elif name == "detoxify":
            _CACHE[name] = DetoxifyScorer()
        else:
            raise ValueError(
                f"unknown toxicity scorer {name!r}; use 'profanity-check' or 'detoxify'"
            )
    return _CACHE[name]
