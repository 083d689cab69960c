"""Preference descriptions from the preference-driven tokens (SteerX, reconstructed).

Two modes:

* ``"spans"`` (model-free): the selected tokens grouped into spans, deduplicated
  (case-insensitive) and ranked by their summed causal effect, written as one line — for
  models too small to summarise well;
* ``"model"``: the model itself writes the description from that evidence, greedy and
  deterministic, with the documented prompt ``DESCRIBE_PROMPT`` and the reply forced to start
  with "The user prefers".

Both return the evidence they used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from steerlens.core.models import HookedModel
from steerlens.run.generation import generate
from steerlens.steerx.effects import Measure, TokenEffects

__all__ = ["DESCRIBE_PROMPT", "Description", "describe", "evidence_spans"]

DESCRIBE_PROMPT = (
    "Below are phrases from a user's past conversations with an assistant. Each phrase "
    "shaped which answers the user liked.\n{evidence}\n\nIn one or two sentences, describe "
    "how this user wants an assistant to answer: tone, caution, directness, length."
)
PREFIX = "The user prefers"


@dataclass
class Description:
    text: str
    mode: str
    evidence: list[str] = field(default_factory=list)
    prompt: str | None = None


def evidence_spans(
    effects: Sequence[TokenEffects],
    *,
    threshold: float = 0.05,
    measure: Measure = "effect",
    max_spans: int = 12,
) -> list[str]:
    """The selected tokens of every target as text spans (adjacent tokens merged),
    deduplicated case-insensitively and ranked by their summed effect (largest first)."""
    score: dict[str, float] = {}
    shown: dict[str, str] = {}
    for eff in effects:
        values = (eff.effect if measure == "effect" else eff.log_ratio).tolist()
        keep = eff.select(threshold=threshold, measure=measure)
        for a, b in eff.spans(keep):
            text = eff.text[a:b].strip()
            if not text:
                continue
            total = sum(
                v for v, (s, e) in zip(values, eff.offsets, strict=True) if s >= a and e <= b
            )
            key = text.lower()
            score[key] = score.get(key, 0.0) + total
            shown.setdefault(key, text)
    ranked = sorted(score, key=lambda k: -score[k])[:max_spans]
    return [shown[k] for k in ranked]


def describe(
    model: HookedModel,
    effects: Sequence[TokenEffects],
    *,
    mode: Literal["spans", "model"] = "spans",
    threshold: float = 0.05,
    measure: Measure = "effect",
    max_spans: int = 12,
    max_new_tokens: int = 48,
) -> Description:
    """A short description of the user's preferences from their preference-driven tokens."""
    if mode not in ("spans", "model"):
        raise ValueError(f"mode must be 'spans' or 'model', got {mode!r}")
    evidence = evidence_spans(effects, threshold=threshold, measure=measure, max_spans=max_spans)
    if mode == "spans":
        text = (
            "The user's own texts stress: " + "; ".join(f'"{e}"' for e in evidence) + "."
            if evidence
            else "No preference-driven tokens were found."
        )
        return Description(text, "spans", evidence)
    prompt = DESCRIBE_PROMPT.format(evidence="\n".join(f"- {e}" for e in evidence) or "- (none)")
    (reply,) = generate(
        model,
        [prompt],
        max_new_tokens=max_new_tokens,
        response_prefix=PREFIX,
        progress_bar=False,
    )
    return Description(f"{PREFIX}{reply}".strip(), "model", evidence, prompt)
