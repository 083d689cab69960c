"""Position gates: which positions of a sequence a steering hook steers.

* ``"all"``: every position;
* ``"prefill"``: the prompt positions only;
* ``FirstK(k)``: the prompt plus the first ``k`` generated tokens (``FirstK(0) == "prefill"``);
* ``"generated"``: generated tokens only (the first generated token is therefore unsteered:
  it is predicted from the prompt's positions).

A gate decides *where in the sequence* to steer; a ``Condition``
(``steerlens.core.conditions``) decides *whether a row* is steered, and composes with one:
``Condition(...) & FirstK(4)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = ["FirstK", "Gate", "GateSpec", "parse_gate"]


@dataclass(frozen=True)
class FirstK:
    """Gate: steer the prompt and the first ``k`` generated tokens."""

    k: int

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 0:
            raise ValueError(f"FirstK needs a non-negative int, got {self.k!r}")


GateSpec: TypeAlias = Literal["all", "prefill", "generated"] | FirstK


@dataclass(frozen=True)
class Gate:
    """A normalised gate: positions ``p`` with ``start <= p - prompt_len < stop`` are steered.

    Offsets are relative to the prompt length: the prompt is ``[-inf, 0)``.
    """

    start: float
    stop: float

    @classmethod
    def parse(cls, spec: GateSpec | Gate) -> Gate:
        if isinstance(spec, Gate):
            return spec
        if isinstance(spec, FirstK):
            return cls(float("-inf"), float(spec.k))
        table = {
            "all": cls(float("-inf"), float("inf")),
            "prefill": cls(float("-inf"), 0.0),
            "generated": cls(0.0, float("inf")),
        }
        if not isinstance(spec, str) or spec not in table:
            raise ValueError(
                f"gate must be 'all', 'prefill', 'generated' or FirstK(k), got {spec!r}"
            )
        return table[spec]

    @property
    def is_all(self) -> bool:
        return self.start == float("-inf") and self.stop == float("inf")


def parse_gate(text: str) -> GateSpec:
    """A gate from its name: ``all``, ``prefill``, ``generated`` or ``first:K``."""
    if not isinstance(text, str):
        raise ValueError(f"a gate name must be a string, got {text!r}")
    if text.startswith("first:"):
        k = text.split(":", 1)[1]
        if not k.isdigit():
            raise ValueError(f"bad gate {text!r}: use first:K with a non-negative integer K")
        return FirstK(int(k))
    if text not in ("all", "prefill", "generated"):
        raise ValueError(f"gate must be 'all', 'prefill', 'generated' or 'first:K', got {text!r}")
    return text  # type: ignore[return-value]
