"""One registry of the vector methods built from a pair-activation table.

Each method has one name, one label (tables and figures) and one set of defaults
(``MethodOptions``), read by every entry point: ``steerlens vectors``, sweep configs, the
demo, the studies, tables and figures. Adding a method is one function plus one line in
``METHODS`` (CONTRIBUTING.md shows it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from steerlens.methods.options import MethodOptions

# The fit functions import their methods on first use: the registry's names, labels and
# defaults are read by `steerlens --help` without importing torch.
if TYPE_CHECKING:
    from steerlens.core.vectors import SteeringVector
    from steerlens.methods.personal import PairActivations

__all__ = [
    "METHODS",
    "Fitted",
    "Method",
    "MethodOptions",
    "build_vectors",
    "get_method",
    "method_label",
]


@dataclass(frozen=True)
class Fitted:
    """A method fitted on a pair table: ``vector(user)`` gives a user's vector (the same
    vector for every user where the method is not per-user); ``state`` holds the fitted model
    where there is one (the ``BradleyTerry`` basis and coordinates)."""

    vector: Callable[[str], SteeringVector]
    state: Any = None


@dataclass(frozen=True)
class Method:
    """A vector method: its one name, its label in tables and figures, whether it gives one
    vector per user, and how it is fitted on a pair table."""

    name: str
    label: str
    per_user: bool
    fit: Callable[[PairActivations, MethodOptions], Fitted]
    aliases: tuple[str, ...] = ()


def _population(pa: PairActivations, opts: MethodOptions) -> Fitted:
    from steerlens.methods.personal import population

    vec = population(pa)
    return Fitted(lambda user: vec, vec)


def _dislike_weighted(pa: PairActivations, opts: MethodOptions) -> Fitted:
    from steerlens.methods.personal import dislike_weighted

    return Fitted(lambda user: dislike_weighted(pa, user, shrink=opts.shrink))


def _bradley_terry(pa: PairActivations, opts: MethodOptions) -> Fitted:
    from steerlens.methods.personal import bradley_terry

    bt = bradley_terry(pa, opts.rank, C=opts.C)
    return Fitted(lambda user: bt.user_vector(user, shrink=opts.shrink), bt)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("population", "population", False, _population),
        Method(
            "dislike-weighted",
            "personalized (dislike-weighted)",
            True,
            _dislike_weighted,
            aliases=("dislike",),
        ),
        Method(
            "bradley-terry", "personalized (Bradley-Terry)", True, _bradley_terry, aliases=("bt",)
        ),
    )
}


def get_method(name: str) -> Method:
    """The method called ``name`` (or one of its aliases); a ``ValueError`` lists the names."""
    for method in METHODS.values():
        if name == method.name or name in method.aliases:
            return method
    raise ValueError(f"unknown vector method {name!r}; use one of {', '.join(METHODS)}")


def method_label(name: str) -> str:
    """The label of a method in tables and figures."""
    return get_method(name).label


def build_vectors(
    pa: PairActivations,
    methods: Sequence[str],
    users: Sequence[str],
    options: MethodOptions | None = None,
) -> dict[str, SteeringVector | dict[str, SteeringVector]]:
    """Each method's vector (or per-user vectors for ``users``) from one pair table."""
    opts = options or MethodOptions()
    out: dict[str, SteeringVector | dict[str, SteeringVector]] = {}
    for name in methods:
        method = get_method(name)
        fitted = method.fit(pa, opts)
        out[method.name] = (
            {u: fitted.vector(u) for u in users} if method.per_user else fitted.vector("")
        )
    return out
