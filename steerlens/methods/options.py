"""The one set of defaults of the pair-table methods (``MethodOptions``): read by the methods'
own signatures, the registry, the CLI, sweep configs, the demo and the analyses."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MethodOptions"]


@dataclass(frozen=True)
class MethodOptions:
    """The one set of defaults of the pair-table methods.

    ``rank`` and ``C``: the Bradley-Terry basis size and inverse regularisation; ``shrink``: a
    user with ``n`` pairs keeps ``n / (n + shrink)`` of their own vector and takes the rest from
    the population vector (0 turns shrinkage off).
    """

    rank: int = 8
    C: float = 1.0
    shrink: float = 5.0

    def __post_init__(self) -> None:
        if self.rank < 1 or self.C <= 0 or self.shrink < 0:
            raise ValueError(
                f"rank >= 1, C > 0 and shrink >= 0 are needed, got rank={self.rank}, "
                f"C={self.C}, shrink={self.shrink}"
            )
