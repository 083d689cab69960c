"""One registry of every vector method the toolkit builds.

* ``METHODS``: the methods fitted on a pair-activation table (population, dislike-weighted,
  Bradley-Terry), each with one name, one label (tables and figures) and one set of
  defaults (``MethodOptions``);
* ``BACKBONES``: the response-contrast backbones SteerX builds on (``mean``,
  ``mean-context``, ``bipo``, ``sae``; fit functions in ``steerlens.methods.backbones``),
  each with its name, label, default layers, what its SteerX vector pools and what it needs
  installed.

Every entry point reads them: ``steerlens vectors`` and ``steerlens steerx``, sweep configs,
the demo, the studies, tables and figures. Adding a method is one function plus one line
here (CONTRIBUTING.md shows it).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from steerlens.methods.options import MethodOptions

# The fit functions import their methods on first use: the registry's names, labels and
# defaults are read by `steerlens --help` without importing torch.
if TYPE_CHECKING:
    from steerlens.core.vectors import SteeringVector
    from steerlens.methods.backbones import BackboneInputs
    from steerlens.methods.personal import PairActivations

__all__ = [
    "BACKBONES",
    "METHODS",
    "Backbone",
    "BackboneName",
    "Fitted",
    "Method",
    "MethodOptions",
    "available_backbones",
    "build_vectors",
    "get_backbone",
    "get_method",
    "method_label",
    "method_names",
]

logger = logging.getLogger(__name__)


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


def method_names(names: Sequence[str], *, also: str = "") -> list[str]:
    """``names`` as the registry's names (aliases such as ``"bt"`` resolved), each once; a
    ``ValueError`` names the unknown ones and the choices (``also``: what else the caller
    accepts, e.g. "or vector_files")."""
    bad = [n for n in names if not any(n == m.name or n in m.aliases for m in METHODS.values())]
    if bad:
        raise ValueError(
            f"unknown methods {bad}; use {list(METHODS)} (or their aliases){' ' + also if also else ''}"
        )
    return list(dict.fromkeys(get_method(n).name for n in names))


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


BackboneName = Literal["mean", "mean-context", "bipo", "sae"]
"""The SteerX backbones' names (the keys of ``BACKBONES``; a test checks the two agree)."""


@dataclass(frozen=True)
class Backbone:
    """A response-contrast backbone SteerX builds on.

    ``pools``: which targets its SteerX vector sees: ``"selected"`` those with a generic
    side and a preference-driven token, ``"weighted"`` every one with a generic side
    (token-weighted), ``"context"`` every target (the description in context needs no
    generic side). ``layers``: ``"all"`` steers on the study's layers, ``"middle"`` on the
    middle one. ``fit(inputs, fallback)`` returns the all-history and the SteerX vector.
    ``extra``: the optional dependency its default set-up needs (``steerlens[extra]``)."""

    name: str
    label: str
    pools: Literal["selected", "weighted", "context"]
    layers: Literal["all", "middle"]
    fit: Callable[[BackboneInputs, bool], tuple[SteeringVector, SteeringVector]]
    extra: str | None = None


def _backbone_fit(name: str) -> Callable[[BackboneInputs, bool], Any]:
    """``steerlens.methods.backbones.<name>``, imported on first use."""

    def fit(inputs: BackboneInputs, fallback: bool) -> Any:
        module = importlib.import_module("steerlens.methods.backbones")
        return getattr(module, name)(inputs, fallback)

    return fit


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(
            "mean", "mean difference (StyleVector)", "selected", "all", _backbone_fit("fit_mean")
        ),
        Backbone(
            "mean-context",
            "mean difference, description in context",
            "context",
            "all",
            _backbone_fit("fit_mean_context"),
        ),
        Backbone("bipo", "BiPO", "weighted", "middle", _backbone_fit("fit_bipo")),
        Backbone("sae", "SAE features", "selected", "middle", _backbone_fit("fit_sae"), "sae"),
    )
}


def get_backbone(name: str) -> Backbone:
    """The backbone called ``name``; a ``ValueError`` lists the names."""
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {tuple(BACKBONES)}, got {name!r}")
    return BACKBONES[name]


def available_backbones() -> list[str]:
    """The backbones a study runs by default: every one whose extra is usable (``sae`` needs
    sae-lens, ``steerlens[sae]``, to train its SAE; left out with a notice)."""
    from steerlens.methods.sae_train import sae_lens_available

    usable = {"sae": sae_lens_available}
    out = []
    for b in BACKBONES.values():
        if b.extra is not None and not usable[b.extra]():
            logger.info(
                "the %s backbone is left out: it needs pip install 'steerlens[%s]'", b.name, b.extra
            )
            continue
        out.append(b.name)
    return out
