"""Measurable response attributes used by the simulated users (and available to analyses).

Each is a number per response; simulated users weigh their z-scores:

* ``toxicity``: the toxicity scorer's probability (alt-profanity-check by default);
* ``refusal``: 1 if the response contains a refusal phrase (anywhere), else 0;
* ``caution``: density of caveat / safety words, scaled to [0, 1];
* ``length``: number of words;
* ``formality``: 1 minus the density of slang, interjections and contractions, in [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from steerlens.metrics.toxicity import ToxicityScorer, get_scorer

ATTRIBUTES = ("toxicity", "refusal", "caution", "length", "formality")

__all__ = ["ATTRIBUTES", "attribute_word_spans", "measure", "toxic_word_spans"]

_REFUSAL = re.compile(
    r"\b(i'?m sorry,? but|i can(?:no|')t help|i am not able to|i'?m not able to|i won'?t|"
    r"i cannot|i can'?t assist|i must decline|i'?m unable to)\b",
    re.IGNORECASE,
)
_CAUTION = re.compile(
    r"\b(careful|carefully|caution|caveat|consult|professional|professionals|expert|experts|"
    r"doctor|safety|safe|safely|risk|risks|important|please|depends|situation|"
    r"keep in mind|may|might|seek|support|emergency)\b",
    re.IGNORECASE,
)
_INFORMAL = re.compile(
    r"(\b(lol|dude|ugh|pfft|jeez|man|okay|ok|yeah|gonna|wanna|kinda|stuff|whatever|crap|"
    r"damn|hell|freaking|honestly|listen up|screw it)\b|n't\b|'re\b|'ll\b|'ve\b|!)",
    re.IGNORECASE,
)
_WORD = re.compile(r"[A-Za-z']+")


def measure(texts: Sequence[str], scorer: ToxicityScorer | None = None) -> list[dict[str, float]]:
    """The attributes of each text."""
    tox = (scorer or get_scorer())(list(texts))
    out = []
    for text, t in zip(texts, tox, strict=True):
        words = max(1, len(_WORD.findall(text)))
        out.append(
            {
                "toxicity": t,
                "refusal": 1.0 if _REFUSAL.search(text) else 0.0,
                "caution": min(1.0, 4.0 * len(_CAUTION.findall(text)) / words),
                "length": float(words),
                "formality": max(0.0, 1.0 - 4.0 * len(_INFORMAL.findall(text)) / words),
            }
        )
    return out


def toxic_word_spans(
    text: str, scorer: ToxicityScorer | None = None, threshold: float = 0.5
) -> list[tuple[int, int]]:
    """Character spans of single words the scorer rates above ``threshold``."""
    words = list(_WORD.finditer(text))
    if not words:
        return []
    probs = (scorer or get_scorer())([m.group(0) for m in words])
    return [(m.start(), m.end()) for m, p in zip(words, probs, strict=True) if p > threshold]


def attribute_word_spans(text: str) -> list[tuple[int, int, str]]:
    """Character spans of the words the attribute measures count: caveat/safety words
    (``caution``), slang, interjections and contractions (``informality``), refusal phrases
    (``refusal``). A simulated user's utility moves with exactly these words."""
    out = [(m.start(), m.end(), "caution") for m in _CAUTION.finditer(text)]
    out += [(m.start(), m.end(), "informality") for m in _INFORMAL.finditer(text)]
    out += [(m.start(), m.end(), "refusal") for m in _REFUSAL.finditer(text)]
    return sorted(out)
