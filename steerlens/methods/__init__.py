"""Steering-vector construction methods (each imported on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from steerlens.core._lazy import lazy_namespace

_PERSONAL = "steerlens.methods.personal"
_STYLE = "steerlens.methods.stylevector"
_NAMES = {
    "BiPOConfig": "steerlens.methods.bipo",
    "bipo": "steerlens.methods.bipo",
    "mean_difference": "steerlens.methods.caa",
    "choose_threshold": "steerlens.methods.condition",
    "fit_condition": "steerlens.methods.condition",
    "BradleyTerry": _PERSONAL,
    "PairActivations": _PERSONAL,
    "bradley_terry": _PERSONAL,
    "dislike_weighted": _PERSONAL,
    "pair_activations": _PERSONAL,
    "population": _PERSONAL,
    "shrinkage_weight": _PERSONAL,
    "sae_vector": "steerlens.methods.sae",
    "context_vector": _STYLE,
    "generic_responses": _STYLE,
    "style_vector": _STYLE,
}

__getattr__, __dir__ = lazy_namespace(__name__, _NAMES, globals())

if TYPE_CHECKING:
    from steerlens.methods.bipo import BiPOConfig, bipo
    from steerlens.methods.caa import mean_difference
    from steerlens.methods.condition import choose_threshold, fit_condition
    from steerlens.methods.personal import (
        BradleyTerry,
        PairActivations,
        bradley_terry,
        dislike_weighted,
        pair_activations,
        population,
        shrinkage_weight,
    )
    from steerlens.methods.sae import sae_vector
    from steerlens.methods.stylevector import context_vector, generic_responses, style_vector

# the public names (each in _NAMES; a test checks the two agree)
__all__ = [
    "BiPOConfig",
    "BradleyTerry",
    "PairActivations",
    "bipo",
    "bradley_terry",
    "choose_threshold",
    "context_vector",
    "dislike_weighted",
    "fit_condition",
    "generic_responses",
    "mean_difference",
    "pair_activations",
    "population",
    "sae_vector",
    "shrinkage_weight",
    "style_vector",
]
